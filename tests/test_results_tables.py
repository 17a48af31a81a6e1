"""The tables of docs/results.md that bench/render_results.py renders match the JSON they come from."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_rendered_tables_match_their_json():
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "render_results.py"), "--check"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
