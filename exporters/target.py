"""The export-target type: what every target offers, and the checks they all share, run once.

A target is a file format, the runtime that runs such a file, and the PyTorch reference the file
must reproduce (like ``onnx.reference``'s ``OpRun``: the base class checks once and calls each
target's own step). The public methods run the shared checks and call the target's steps:

- ``check(student)``: finite parameters and a leak in (0, 1] (``check_parameters``), then
  ``_check``: raise ``UserError`` naming the layer when the target cannot express the student.
- ``export(student, path)``: the path ends in one of ``suffixes`` and is not a folder, then
  ``check``, then ``_export`` writes one self-contained file atomically.
- ``run(path, x)``: the ``ModelInput`` ``x`` (``inputs.model_input``) is checked against what the
  file was exported for (``_input_spec``: encoding, T, image shape), then ``_run`` runs the file in
  the target's own runtime (onnxruntime, a NIR importer, the Lava simulator) on it.
- ``run_stream(path, inputs)``: ``run`` on each ``ModelInput`` in turn, yielding each result; a
  runtime that keeps its state across batches overrides it (Lava: one long simulator run).
- ``reference(student, x)``: ``x`` checked against the student's config, then ``_reference``, what
  the target promises to reproduce, computed in PyTorch without gradients (the float student, or
  its Loihi-quantised mode).
- ``trace_layout(path)``: the file's time step and the name of its node per LIF layer, for the golden
  trace ``validate --trace`` writes (by default: steps, the layers' own names).

The steps get a checked input: images (direct encoding only) or spikes, as tensors.

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
from ..inputs import InputSpec, ModelInput


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
    quick_samples: ClassVar[int] = 360  # samples a quick check (the demo) validates; fewer for a slow runtime
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

    def run(self, path: str | Path, x: ModelInput) -> RunResult:
        path = Path(path)
        return self._run(path, self._input_spec(path).check(x, path))

    def run_stream(self, path: str | Path, inputs: Iterable[ModelInput]) -> Iterator[RunResult]:
        """``run`` on each input in turn; a runtime that keeps its state across batches overrides it."""
        for given in inputs:
            yield self.run(path, given)

    def reference(self, student: Any, x: ModelInput) -> RunResult:
        checked = InputSpec.of(student.config).check(x, f"the {student.config.arch} student")
        with torch.no_grad():
            return self._reference(student, checked)

    def trace_layout(self, path: str | Path) -> tuple[float, dict[str, str]]:
        """The file's time step (1: in steps) and, per reference layer, the name of its node in the file."""
        return 1.0, {}

    # -- each target's own steps -----------------------------------------------------------------
    def _check(self, student: Any) -> None:
        raise NotImplementedError

    def _export(self, student: Any, path: Path) -> Path:
        raise NotImplementedError

    def _input_spec(self, path: Path) -> InputSpec:
        """What the file at ``path`` was exported for, from its metadata (``UserError`` for a foreign file)."""
        raise NotImplementedError

    def _run(self, path: Path, x: ModelInput) -> RunResult:
        raise NotImplementedError

    def _reference(self, student: Any, x: ModelInput) -> RunResult:
        raise NotImplementedError
