"""The export-target type: what every target offers, and the checks they all share, run once.

A target is a file format, the runtime that runs such a file, and the PyTorch reference the file
must reproduce (like ``onnx.reference``'s ``OpRun``: the base class checks once and calls each
target's own step). The public methods run the shared checks and call the target's steps:

- ``check(student)``: finite parameters and a leak in (0, 1] (``check_parameters``), then
  ``_check``: raise ``UserError`` naming the layer when the target cannot express the student.
- ``export(student, path)``: the path ends in one of ``suffixes`` and is not a folder, then
  ``check``, then ``_export`` writes one self-contained file atomically.
- ``run(path, images, input_spikes)``: ``_run`` runs the file in the target's own runtime
  (onnxruntime, a NIR importer, the Lava simulator) on images ``[B, C, H, W]`` (direct encoding)
  or input spikes ``[T, B, C, H, W]`` (Poisson).
- ``run_stream(path, inputs)``: ``run`` on each ``ModelInput`` in turn, yielding each result; a
  runtime that keeps its state across batches overrides it (Lava: one long simulator run).
- ``reference(student, images, input_spikes)``: ``_reference``, what the target promises to
  reproduce, computed in PyTorch without gradients (the float student, or its Loihi-quantised mode).

Target-specific settings are declared in ``options`` (name -> default), given to the constructor
and read by the target's steps from ``self.settings``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from ..errors import UserError
from ..inputs import ModelInput


@dataclass
class RunResult:
    """Logits ``[B, K]``, spikes ``[T, B, ...]`` per LIF layer (named) and, where the runtime exposes
    them, the potentials before reset, same shapes."""

    logits: np.ndarray
    spikes: list[np.ndarray] | None = None
    layer_names: list[str] = field(default_factory=list)
    potentials: list[np.ndarray] | None = None


class Target:
    """Base class of the export targets; a subclass sets ``name``, ``suffixes`` and the four steps."""

    name: ClassVar[str]
    suffixes: ClassVar[tuple[str, ...]]  # file suffixes this target writes and reads; the first is the default
    options: ClassVar[dict[str, Any]] = {}  # target-specific option -> default
    chunk: ClassVar[int] = 64  # samples per batch when validate streams a data set: sets its peak memory

    def __init__(self, **options: Any):
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            known = ", ".join(self.options) or "none"
            raise UserError(f"the {self.name} target has no option {', '.join(unknown)} (its options: {known})")
        self.settings = {**self.options, **options}

    @classmethod
    def for_file(cls, path: str | Path, **options: Any) -> Target:
        """The target that runs the file at ``path`` (a target may read options from the file itself)."""
        return cls(**options)

    def check(self, student: Any) -> None:
        from ..student import check_parameters

        check_parameters(student)
        self._check(student)

    def export(self, student: Any, path: str | Path) -> Path:
        path = Path(path)
        if path.suffix.lower() not in self.suffixes:
            raise UserError(
                f"the {self.name} export must end in {' or '.join(self.suffixes)}, got {path}; "
                f"pass --out NAME{self.suffixes[0]} (validate tells the target by the suffix)"
            )
        if path.is_dir():
            raise UserError(f"--out {path} is a folder; give a file name ending in {self.suffixes[0]}")
        self.check(student)
        return self._export(student, path)

    def run(self, path: str | Path, images: Any = None, input_spikes: Any = None) -> RunResult:
        return self._run(Path(path), images, input_spikes)

    def run_stream(self, path: str | Path, inputs: Iterable[ModelInput]) -> Iterator[RunResult]:
        for given in inputs:
            yield self.run(path, given.images, given.spikes)

    def reference(self, student: Any, images: Any = None, input_spikes: Any = None) -> RunResult:
        with torch.no_grad():
            return self._reference(student, images, input_spikes)

    # -- each target's own steps -----------------------------------------------------------------
    def _check(self, student: Any) -> None:
        raise NotImplementedError

    def _export(self, student: Any, path: Path) -> Path:
        raise NotImplementedError

    def _run(self, path: Path, images: Any, input_spikes: Any) -> RunResult:
        raise NotImplementedError

    def _reference(self, student: Any, images: Any, input_spikes: Any) -> RunResult:
        raise NotImplementedError
