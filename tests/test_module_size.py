"""No module of the tool over 500 lines (docs/architecture.md, 'Style and lint'): a module that grows
past it is split along a seam (the run folder, the stages, the grammar ...), not cut anywhere.

The package, ``exporters/``, ``hw_targets/`` and the benches count; the tests do not.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("lasnn_deploy", "exporters", "hw_targets", "bench")
LIMIT = 500


def test_no_module_over_500_lines():
    long = {
        str(path.relative_to(ROOT)): count
        for folder in FOLDERS
        for path in sorted((ROOT / folder).rglob("*.py"))
        if "__pycache__" not in path.parts and (count := len(path.read_text().splitlines())) > LIMIT
    }
    assert not long, f"modules over {LIMIT} lines, split each along a seam: {long}"
