"""Render the tables of measured numbers in docs/ from the JSON behind them, so every figure has a source.

    python bench/render_results.py           # rewrite the marked tables in docs/*.md
    python bench/render_results.py --check   # exit 1 when a table differs from its JSON (the tests run this)

A rendered table sits between ``<!-- table NAME: ... -->`` and ``<!-- end table NAME -->`` (indented
like the table, e.g. inside a list item). A table rendered from a bench's own JSON has its renderer
and JSON files in ``RENDERERS``; any other is rendered by ``generic`` from ``bench/results/NAME.json``,
which holds its ``columns`` and ``rows``, ``source`` (run folders, or a transcription of the
hand-written table when the runs were not kept: ``transcribed``) and ``command`` (what measured
them). Only the standard library: the check runs without torch.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import deep_students  # noqa: E402  (renders the Issue 27 table of docs/results.md)

RESULTS = ROOT / "bench" / "results"
DOCS = ("docs/results.md", "docs/performance.md", "docs/energy.md", "docs/interop.md")
MARKED = re.compile(r"^( *)(<!-- table (\S+?):[^\n]*-->\n)(.*?)(\n\1<!-- end table \3 -->)$", re.S | re.M)


def _line(cells: list[str]) -> str:
    """One Markdown table row; an empty cell is written ``| |``."""
    return "|" + "|".join(f" {c} " if c else " " for c in cells) + "|"


def _acc(correct: int, total: int) -> str:
    return f"{correct / total:.4f}"


def quick_preset(data: dict) -> str:
    """The quick-preset table: accuracies from test-set correct counts; the student in bold when it is
    within 1 point of its ANN (the issue's target), the gap always in bold."""
    lines = [
        "| data (train / validation / test images) | teacher | ANN | converted | LaSNN student | student - ANN "
        "| first pass | percentile | rounds (best) | spikes / sample |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in data["rows"]:
        c, n = r["test_correct"], r["test"]
        gap = 100 * (c["student"] - c["ann"]) / n
        student = _acc(c["student"], n)
        cells = [
            f"{r['data']} ({r['train']:,} / {r['validation']:,} / {n:,})",
            _acc(c["teacher"], n),
            _acc(c["ann"], n),
            _acc(c["converted"], n),
            f"**{student}**" if gap >= -1 else student,
            f"**{gap:.2f}**",
            f"{r['first_pass_student_minus_ann']:.2f}",
            str(r["percentile"]),
            f"{r['rounds']} ({r['best_round']})",
            f"{r['spikes_per_sample']:,}",
        ]
        lines.append(_line(cells))
    return "\n".join(lines)


ATTENTION_METHODS = {
    "hybrid": "hybrid (CE only)",
    "kd": "kd",
    "hetero-kd": "hetero-kd",
    "lasnn": "lasnn (activation attention)",
    "lasnn-grad": "lasnn-grad (gradient attention, SAM)",
    "tssd": "tssd (one run of T' = 16 steps with gradient, three weak classifiers)",
}


def attention_cost(data: dict) -> str:
    """Paper claim 3's step cost (``bench/attention_cost.py``): median CPU time per step and peak growth
    of live tensor bytes, each also as a multiple of hybrid's."""
    cpu, peak = data["step_cpu_seconds_median"], data["peak_memory_bytes"]
    lines = ["| method | CPU ms / step | x hybrid | peak MiB / step | x hybrid |", "| --- | --- | --- | --- | --- |"]
    for method, label in ATTENTION_METHODS.items():
        lines.append(
            _line(
                [
                    label,
                    f"{1000 * cpu[method]:.0f}",
                    f"{cpu[method] / cpu['hybrid']:.2f}",
                    f"{peak[method] / 2**20:.0f}",
                    f"{peak[method] / peak['hybrid']:.2f}",
                ]
            )
        )
    return "\n".join(lines)


INFERENCE_VARIANTS = {
    ("batch1", "pytorch_eager"): "PyTorch eager float32 (`student.run`)",
    ("batch1", "pytorch_exact"): "PyTorch exact mode (`run(exact=True)`)",
    ("batch1", "onnxruntime"): "onnxruntime, exported graph",
    ("batch64", "pytorch_eager"): "PyTorch eager float32",
    ("batch64", "pytorch_exact"): "PyTorch exact mode",
    ("batch64", "onnxruntime"): "onnxruntime, exported graph",
}


def inference_time(data: dict) -> str:
    """Inference time per sample (``bench/inference_time.py``): the best round, and its multiple of
    PyTorch eager at the same batch size."""
    lines = ["| batch | variant | ms / sample | x PyTorch eager |", "| ---: | --- | ---: | ---: |"]
    for (batch, variant), label in INFERENCE_VARIANTS.items():
        best = data["results"][batch]["seconds_per_sample_best"]
        ratio = best[variant] / best["pytorch_eager"]
        lines.append(_line([batch.removeprefix("batch"), label, f"{1000 * best[variant]:.2f}", f"{ratio:.2f}"]))
    return "\n".join(lines)


def nir_import(data: dict) -> str:
    """Foreign NIR graphs imported (``bench/nir_import.py``): output / spike agreement with each library's
    own run for the imported student, its ONNX and its Lava export, and the largest logit errors."""
    keys = ("student", "onnx", "lava", "lava_validate")
    lines = [
        "| library | net | leak | student | ONNX | Lava | Lava vs its validate reference "
        "| max logit error (student, ONNX, Lava) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in data["rows"]:
        cells = [f"{r[k]['output_agreement']:.4f} / {r[k]['spike_agreement']:.4f}" for k in keys]
        errors = ", ".join(f"{r[k]['max_abs_logit_error']:.2g}" for k in keys[:3])
        lines.append(_line([r["library"], r["net"], f"{r['leak']:.4g}", *cells, errors]))
    return "\n".join(lines)


def lava_throughput(data: dict) -> str:
    """Lava validation time (``bench/lava_throughput.py``): one simulator run per sample (the baseline
    commit) against one long run, at two sample counts, and the time each extra sample adds."""
    small, large = (str(n) for n in data["samples"])
    labels = {
        "baseline": f"baseline ({data['baseline']}, one `net.run` per sample)",
        "current": "current (one long run)",
    }
    lines = [f"| runner | {small} samples | {large} samples | per extra sample |", "| --- | ---: | ---: | ---: |"]
    for runner, label in labels.items():
        seconds = data["seconds"][runner]
        extra = data["seconds_per_extra_sample"][runner]
        lines.append(_line([label, f"{seconds[small]:.1f} s", f"{seconds[large]:.1f} s", f"{extra:.2f} s"]))
    return "\n".join(lines)


def train_throughput(data: dict) -> str:
    """One training step (``bench/train_throughput.py``): median wall and CPU time and peak memory of each
    variant at each T, each with ours divided by it."""
    lines = [
        "| T | variant | step (wall) | ours / it | step (CPU) | ours / it | peak memory | ours / it |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for t, run in data["training"].items():
        wall, cpu, peak = run["step_seconds_median"], run["step_cpu_seconds_median"], run["peak_memory_bytes"]
        for variant in ("ours", "snntorch", "ann"):
            lines.append(
                _line(
                    [
                        t,
                        variant,
                        f"{1000 * wall[variant]:.0f} ms",
                        f"{wall['ours'] / wall[variant]:.2f}",
                        f"{1000 * cpu[variant]:.0f} ms",
                        f"{cpu['ours'] / cpu[variant]:.2f}",
                        f"{peak[variant] / 2**20:.0f} MiB",
                        f"{peak['ours'] / peak[variant]:.2f}",
                    ]
                )
            )
    return "\n".join(lines)


THROUGHPUT_TARGETS = (
    ("time ours / snnTorch, T = 8 <= 1.0", "ours_vs_snntorch_t8", 1.0),
    ("time ours / snnTorch, T = 16 <= 1.0", "ours_vs_snntorch_t16", 1.0),
    ("time ours / ANN, T = 8 <= 1.15", "ours_vs_ann_t8", 1.15),
    ("peak memory ours / snnTorch, T = 16 <= 0.8", "mem_ours_vs_snntorch_t16", 0.8),
    ("(not a target) time ours / ANN, T = 16", "ours_vs_ann_t16", None),
    ("(not a target) peak memory ours / ANN, T = 16", "mem_ours_vs_ann_t16", None),
)


def train_throughput_targets(half: dict, full: dict) -> str:
    """The issue's speed and memory targets against the half- and full-width runs: wall-time ratios with
    the CPU-time ones beside them; met when every measured ratio is within the target."""
    lines = ["| target | measured (half width) | measured (full width) | met |", "| --- | --- | --- | --- |"]
    for label, key, target in THROUGHPUT_TARGETS:
        cells, ratios = [label], []
        for run in (half, full):
            wall, cpu = run["ratios"][key], run["cpu_time_ratios"][key]
            same = key.startswith("mem_") or target is None
            cells.append(f"{wall:.2f}" if same else f"{wall:.2f} (CPU time {cpu:.2f})")
            ratios += [wall, cpu]
        cells.append("" if target is None else "yes" if max(ratios) <= target else "no")
        lines.append(_line(cells))
    return "\n".join(lines)


def _cell(cell: Any, column: dict) -> str:
    """A cell of a ``generic`` table: text as written, a number in its column's format (or its own)."""
    if isinstance(cell, str):
        return cell
    if not isinstance(cell, dict):
        cell = {"value": cell}
    text = format(cell["value"], cell.get("format", column.get("format", ""))) + cell.get(
        "suffix", column.get("suffix", "")
    )
    return f"**{text}**" if cell.get("bold") else text


def generic(data: dict) -> str:
    """A table whose JSON lists its ``columns`` (head, ``align``, number ``format`` and ``suffix``) and
    ``rows``: a cell is text, a number, or ``{"value", "format", "suffix", "bold"}``."""
    columns = data["columns"]
    lines = [
        _line([c["head"] for c in columns]),
        _line(["---:" if c.get("align") == "right" else "---" for c in columns]),
    ]
    for row in data["rows"]:
        if len(row) != len(columns):
            raise ValueError(f"{data['table']}: a row has {len(row)} cells for {len(columns)} columns: {row}")
        lines.append(_line([_cell(cell, column) for cell, column in zip(row, columns, strict=True)]))
    return "\n".join(lines)


RENDERERS: dict[str, tuple[tuple[str, ...], Callable[..., str]]] = {
    "issue27": (("issue27",), deep_students.render),
    "quick_preset": (("quick_preset",), quick_preset),
    "attention_cost": (("attention_cost",), attention_cost),
    "inference_time": (("inference_time",), inference_time),
    "nir_import": (("nir_import",), nir_import),
    "lava_throughput": (("lava_throughput",), lava_throughput),
    "train_throughput": (("train_throughput",), train_throughput),
    "train_throughput_targets": (("train_throughput", "train_throughput_width1"), train_throughput_targets),
}


def render(text: str, doc: str) -> str:
    """``text`` (the doc ``doc``) with every marked table re-rendered from its JSON."""

    def one(m: re.Match) -> str:
        indent, name = m.group(1), m.group(3)
        sources, table = RENDERERS.get(name, ((name,), generic))
        data = []
        for source in sources:
            path = RESULTS / f"{source}.json"
            if not path.exists():
                raise SystemExit(f"{doc}: table {name!r} has no bench/results/{source}.json")
            data.append(json.loads(path.read_text()))
            if isinstance(data[-1], dict) and data[-1].get("doc", doc) != doc:
                raise SystemExit(f"{doc}: table {name!r} belongs to {data[-1]['doc']}")
        body = "\n".join(indent + line for line in table(*data).split("\n"))
        return indent + m.group(2) + body + m.group(5)

    return MARKED.sub(one, text)


def missing(texts: dict[str, str]) -> list[str]:
    """Tables whose JSON names a doc (``doc``) that has no markers for them, and renderers whose table
    is marked in no doc: a deleted marker would otherwise leave its table unchecked."""
    marked = {m.group(3) for text in texts.values() for m in MARKED.finditer(text)}
    named = set(RENDERERS)
    for path in RESULTS.glob("*.json"):
        data = json.loads(path.read_text())
        if isinstance(data, dict) and data.get("doc") in texts:
            named.add(path.stem)
    return sorted(named - marked)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when a table is out of date")
    args = parser.parse_args(argv)
    texts = {doc: (ROOT / doc).read_text() for doc in DOCS}
    lost = missing(texts)
    if lost:
        print(f"no markers in docs/ for the tables {', '.join(lost)}", file=sys.stderr)
        return 1
    if not args.check:
        from lasnn_deploy.atomic import write_text  # the package imports torch: only when writing

    stale = []
    for doc, text in texts.items():
        rendered = render(text, doc)
        if rendered == text:
            continue
        before, after = MARKED.finditer(text), MARKED.finditer(rendered)
        stale += [f"{doc} {a.group(3)}" for a, b in zip(before, after, strict=True) if a.group(4) != b.group(4)]
        if not args.check:
            write_text(ROOT / doc, rendered)
    if args.check and stale:
        print(
            f"tables that differ from their JSON in bench/results/: {', '.join(stale)} "
            "(python bench/render_results.py rewrites them)",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
