"""The marked tables of docs/ match the JSON in bench/results/ that bench/render_results.py renders them
from: an edited number, a table whose markers were deleted or a JSON without its source fails."""

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("render_results", ROOT / "bench" / "render_results.py")
render_results = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(render_results)

TEXTS = {doc: (ROOT / doc).read_text() for doc in render_results.DOCS}
MARKED = [(doc, m) for doc, text in TEXTS.items() for m in render_results.MARKED.finditer(text)]


def test_rendered_tables_match_their_json():
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "render_results.py"), "--check"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("doc, marked", MARKED, ids=[m.group(3) for _, m in MARKED])
def test_an_edited_number_is_rendered_back(doc, marked):
    """One digit changed in the table's last row: the doc no longer equals its rendering, and rendering
    restores the JSON's number (every marked table is rendered, none passed through)."""
    text = TEXTS[doc]
    last = marked.group(4).rsplit("\n", 1)[-1]
    digit = re.search(r"\d", last)
    assert digit, f"{marked.group(3)}: its last row has no number"
    at = marked.end(4) - len(last) + digit.start()
    edited = text[:at] + str((int(text[at]) + 1) % 10) + text[at + 1 :]
    assert render_results.render(edited, doc) == text


def test_deleted_markers_are_missed():
    name = MARKED[0][1].group(3)
    texts = {doc: re.sub(rf"<!-- (end )?table {name}\b[^\n]*-->", "", text) for doc, text in TEXTS.items()}
    assert render_results.missing(texts) == [name]
    assert render_results.missing(TEXTS) == []


def test_every_table_says_where_its_numbers_come_from():
    """A ``generic`` table's JSON names its doc, its source (runs or a transcription) and its commands."""
    marked = {m.group(3) for _, m in MARKED}
    for name in marked - set(render_results.RENDERERS):
        data = json.loads((render_results.RESULTS / f"{name}.json").read_text())
        assert data["doc"] in render_results.DOCS, name
        assert data["source"] and data["command"], name
        assert isinstance(data.get("transcribed"), bool), name
