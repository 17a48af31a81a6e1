"""Render the tables of docs/results.md from the JSON behind them, so every figure there has a source.

    python bench/render_results.py           # rewrite the tables in docs/results.md
    python bench/render_results.py --check   # exit 1 when a table differs from its JSON (the tests run this)

A rendered table sits between ``<!-- table NAME: ... -->`` and ``<!-- end table NAME -->`` in
docs/results.md; ``TABLES`` maps NAME to its JSON file (``bench/results/``) and the function that
renders it. Only the standard library: the check runs without torch.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS, DOC = ROOT / "bench" / "results", ROOT / "docs" / "results.md"


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
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


TABLES: dict[str, tuple[str, Callable[[dict], str]]] = {"quick_preset": ("quick_preset.json", quick_preset)}


def render(text: str) -> str:
    """``text`` with every marked table re-rendered from its JSON."""
    for name, (source, table) in TABLES.items():
        pattern = re.compile(rf"(<!-- table {name}:[^\n]*-->\n)(.*?)(\n<!-- end table {name} -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"docs/results.md has no table {name!r} between its markers")
        rendered = table(json.loads((RESULTS / source).read_text()))
        text = pattern.sub(lambda m, rendered=rendered: m.group(1) + rendered + m.group(3), text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when a table is out of date")
    args = parser.parse_args(argv)
    text = DOC.read_text()
    rendered = render(text)
    if args.check:
        if rendered != text:
            print(
                "docs/results.md differs from bench/results/*.json: run python bench/render_results.py", file=sys.stderr
            )
            return 1
        return 0
    DOC.write_text(rendered)
    return 0


if __name__ == "__main__":
    sys.exit(main())
