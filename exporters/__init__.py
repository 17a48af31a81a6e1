"""Export targets (installed as ``lasnn_deploy.exporters``; see docs/architecture.md).

Each target is a ``Target`` subclass (``target.py``) in its own module, registered below by name.
Adding a target is one module plus one line in ``TARGETS``. ``export``, ``validate``, the CLI and
the demo treat every target alike through ``get_target`` and ``target_of_file``; a target is used
through its methods (``OnnxTarget().run(path, x)``), there are no module-level shortcuts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import UserError
from .lava import LavaTarget
from .nir import NirTarget
from .onnx import OnnxTarget
from .target import RunResult, Target

TARGETS: dict[str, type[Target]] = {"onnx": OnnxTarget, "nir": NirTarget, "lava": LavaTarget}

__all__ = ["TARGETS", "RunResult", "Target", "export", "get_target", "target_of_file"]


def get_target(name: str, **options: Any) -> Target:
    """The target called ``name`` with ``options``; one clear error for an unknown name."""
    if name not in TARGETS:
        raise UserError(f"unknown export target {name!r}: choose one of {', '.join(TARGETS)}")
    return TARGETS[name](**options)


def target_of_file(path: str | Path) -> str:
    """The target whose suffixes include the file's (``.onnx``, ``.nir``, ``.h5``...)."""
    suffix = Path(path).suffix.lower()
    for name, target in TARGETS.items():
        if suffix in target.suffixes:
            return name
    known = ", ".join(s for target in TARGETS.values() for s in target.suffixes)
    raise UserError(f"cannot tell the target of {path}: expected a file ending in one of {known}")


def export(student: Any, target: str, path: str | Path, **options: Any) -> Path:
    """Check that ``target`` can express ``student``, then write the file atomically.

    The file must end in one of the target's suffixes: ``validate`` tells the target from it.
    """
    return get_target(target, **options).export(student, path)
