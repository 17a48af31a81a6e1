"""``lasnn-deploy import``: a NIR graph, ours or another library's (``nir_read`` reads it), written
into a student run folder that ``export``, ``validate`` and ``energy`` take."""

from __future__ import annotations

import os
from pathlib import Path

import nir

from .errors import UserError
from .neurons import Encoding
from .nir_read import student_from_any_nir
from .student import save_student


def import_nir(
    source: str | os.PathLike | nir.NIRGraph,
    out: str | os.PathLike,
    library: str | None = None,
    dt: float | None = None,
    timesteps: int = 8,
    encoding: Encoding | str = Encoding.DIRECT,
    input_shape: tuple[int, ...] | None = None,
) -> Path:
    """Read a NIR file (or graph) into a student and write the run folder ``out``; returns its student file.

    Everything is checked before anything is written, and the file is written atomically.
    """
    student = student_from_any_nir(source, library, dt, timesteps, encoding, input_shape)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a run folder")
    return save_student(student, out)
