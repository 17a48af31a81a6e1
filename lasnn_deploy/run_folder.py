"""The run folder ``train`` writes: its file names, the seed of each stage, and the reader of a finished run.

``training.run.Run`` writes every file of the folder; ``RunFolder`` is what the other commands
(``tradeoff``, ``demo``) read back from it, so a file name or the way the method is recorded is
written in one place. Layout (docs/semantics.md, 'Files the commands write')::

    RUN/config.json           the training options (TrainConfig), the method among them
    RUN/teacher.safetensors   stage 1, for the methods with a teacher
    RUN/ann.safetensors       stage 2, the intermediate ANN
    RUN/converted.safetensors stage 3, the threshold-balanced SNN (a student file)
    RUN/student.safetensors   the result (a student file)
    RUN/progress.json         finished stages, for --resume; RUN/metrics.json, the run's figures
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UserError
from .student.files import STUDENT_FILE

TEACHER_FILE, ANN_FILE, CONVERTED_FILE = "teacher.safetensors", "ann.safetensors", "converted.safetensors"
CONFIG_FILE, PROGRESS_FILE, METRICS_FILE = "config.json", "progress.json", "metrics.json"
STAGE_SEEDS = {"teacher": 1, "ann": 2, "conversion": 3, "finetune": 4, "validation": 5}


def stage_seed(seed: int, stage: str) -> int:
    """The seed of one stage of a run trained with ``--seed seed``: each stage draws its own stream."""
    return seed * 1000 + STAGE_SEEDS[stage]


@dataclass(frozen=True)
class RunFolder:
    """A run folder to read: the folder itself, given it or a file in it (``student.safetensors``)."""

    folder: Path

    @classmethod
    def of(cls, path: str | os.PathLike) -> RunFolder:
        path = Path(path)
        return cls(path if path.is_dir() else path.parent)

    @property
    def student(self) -> Path:
        return self.folder / STUDENT_FILE

    @property
    def converted(self) -> Path | None:
        """The converted SNN before fine-tuning, when the run kept it."""
        path = self.folder / CONVERTED_FILE
        return path if path.is_file() else None

    @property
    def metrics_file(self) -> Path:
        return self.folder / METRICS_FILE

    def metrics(self) -> dict[str, Any]:
        """The run's figures (``metrics.json``); one clear error for an unfinished or foreign folder."""
        try:
            return json.loads(self.metrics_file.read_text())
        except (OSError, ValueError) as err:
            raise UserError(
                f"{self.folder} has no readable {METRICS_FILE} ({err}); run `lasnn-deploy train` to the end"
            ) from err

    def config(self) -> dict[str, Any]:
        """The training options (``config.json``); empty for a folder without one (an imported student)."""
        try:
            config = json.loads((self.folder / CONFIG_FILE).read_text())
        except (OSError, ValueError):
            return {}
        return config if isinstance(config, dict) else {}

    def method(self) -> str:
        """The training method recorded in ``config.json`` (at its top level or in a section); ``student``
        when the folder does not say (an imported or hand-made student)."""
        config = self.config()
        nested = (v.get("method") for v in config.values() if isinstance(v, dict) and "method" in v)
        return str(config.get("method") or next(nested, None) or "student")
