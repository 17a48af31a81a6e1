"""Export targets (installed as ``lasnn_deploy.exporters``; see docs/architecture.md).

Each target module (``onnx``, ``nir``, ``lava``) is one reading of the student description and
offers the same four functions, so that ``export`` and ``validate`` treat every target alike:

- ``check(student) -> None``: raise ``UserError`` naming the layer and the reason when the target
  cannot express the student. Called before any file is written.
- ``export(student, path) -> Path``: write one self-contained file atomically.
- ``run(path, images, input_spikes) -> RunResult``: run the file in the target's own runtime
  (onnxruntime, a NIR importer, the Lava simulator) on images ``[B, C, H, W]`` (direct encoding)
  or input spikes ``[T, B, C, H, W]`` (Poisson).
- ``reference(student, images, input_spikes) -> RunResult``: what the target promises to
  reproduce, computed in PyTorch (the float student, or its Loihi-quantised mode for Lava).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import numpy as np

from ..errors import UserError

TARGETS = {"onnx": ".onnx", "nir": ".nir", "lava": ".h5"}
LAVA_SUFFIXES = (".h5", ".hdf5", ".net")  # lava-dl's own examples name netx files *.net


@dataclass
class RunResult:
    """Logits ``[B, K]``, spikes ``[T, B, ...]`` per LIF layer (named) and, where the runtime exposes
    them, the potentials before reset, same shapes."""

    logits: np.ndarray
    spikes: list[np.ndarray] | None = None
    layer_names: list[str] = field(default_factory=list)
    potentials: list[np.ndarray] | None = None


def target_module(target: str) -> ModuleType:
    """The module implementing ``target``; one clear error for an unknown name."""
    if target not in TARGETS:
        raise UserError(f"unknown export target {target!r}: choose one of {', '.join(TARGETS)}")
    return importlib.import_module(f"{__name__}.{target}")


def target_of_file(path: str | Path) -> str:
    """Guess the target from a file's suffix (``.onnx``, ``.nir``, ``.h5``)."""
    suffix = Path(path).suffix.lower()
    for target, ext in TARGETS.items():
        if suffix == ext or (target == "lava" and suffix in LAVA_SUFFIXES):
            return target
    raise UserError(f"cannot tell the target of {path}: expected a file ending in .onnx, .nir, .h5 or .net")


def export(student, target: str, path: str | Path) -> Path:
    """Check that ``target`` can express ``student``, then write the file atomically.

    The file must end in the target's suffix: ``validate`` tells the target from it.
    """
    from ..student import check_parameters

    module = target_module(target)
    path = Path(path)
    suffixes = LAVA_SUFFIXES if target == "lava" else (TARGETS[target],)
    if path.suffix.lower() not in suffixes:
        raise UserError(f"the {target} export must end in {' or '.join(suffixes)}, got {path}; "
                        f"pass --out NAME{TARGETS[target]} (validate tells the target by the suffix)")
    if path.is_dir():
        raise UserError(f"--out {path} is a folder; give a file name ending in {TARGETS[target]}")
    check_parameters(student)
    module.check(student)
    return module.export(student, path)
