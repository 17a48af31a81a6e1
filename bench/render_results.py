"""Render the tables of measured numbers in docs/ from the JSON behind them, so every figure has a source.

    python bench/render_results.py           # rewrite the marked tables in docs/*.md
    python bench/render_results.py --check   # exit 1 when a table differs from its JSON (the tests run this)

A rendered table sits between ``<!-- table NAME: ... -->`` and ``<!-- end table NAME -->`` (indented
like the table, e.g. inside a list item) and is rendered from ``bench/results/NAME.json``. Tables
from a bench's own JSON (the quick preset, attention cost, inference time) have their renderer in
``RENDERERS``; every other table's JSON holds its ``columns`` and ``rows`` (``generic``), with
``source`` saying where the numbers come from (run folders, or a transcription of the hand-written
table when the runs were not kept) and ``command`` what measured them. Only the standard library:
the check runs without torch.
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


RENDERERS: dict[str, Callable[[dict], str]] = {
    "quick_preset": quick_preset,
    "attention_cost": attention_cost,
    "inference_time": inference_time,
}


def render(text: str, doc: str) -> str:
    """``text`` (the doc ``doc``) with every marked table re-rendered from its JSON."""

    def one(m: re.Match) -> str:
        indent, name = m.group(1), m.group(3)
        source = RESULTS / f"{name}.json"
        if not source.exists():
            raise SystemExit(f"{doc}: table {name!r} has no bench/results/{name}.json")
        data = json.loads(source.read_text())
        if isinstance(data, dict) and data.get("doc", doc) != doc:
            raise SystemExit(f"{doc}: table {name!r} belongs to {data['doc']}")
        table = RENDERERS.get(name, generic)(data)
        body = "\n".join(indent + line for line in table.split("\n"))
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
