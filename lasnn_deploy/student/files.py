"""The student file: weights and description in one safetensors file, loaded without executing code."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..atomic import atomic_path
from ..errors import UserError
from .config import StudentConfig
from .module import SpikingStudent

FORMAT = "lasnn-deploy-student/1"
STUDENT_FILE = "student.safetensors"


def resolve_student_path(path: str | os.PathLike) -> Path:
    """A run folder or a student file -> the student file; one clear error if neither."""
    path = Path(path)
    if path.is_dir():
        path = path / STUDENT_FILE
    if not path.is_file():
        raise UserError(
            f"no student at {path}: pass a run folder from `lasnn-deploy train --out` or its {STUDENT_FILE}"
        )
    return path


def save_student(student: SpikingStudent, path: str | os.PathLike) -> Path:
    """Write weights and description as one safetensors file (atomic; loads without code)."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        path = path / STUDENT_FILE
    tensors = {k: v.detach().cpu().contiguous() for k, v in student.state_dict().items()}
    meta = {"format": FORMAT, "config": json.dumps(student.config.to_dict())}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


def load_student(path: str | os.PathLike) -> SpikingStudent:
    """Load a student from a run folder, a ``.safetensors`` file or a ``.nir`` file; never executes code."""
    from safetensors import SafetensorError, safe_open

    if Path(path).suffix.lower() == ".nir":  # read in memory, as `lasnn-deploy import` would write it
        from ..nir_read import load_nir_student

        return load_nir_student(path)
    path = resolve_student_path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise UserError(
            f"{path} is not a readable student file ({err}); re-create it with `lasnn-deploy train`"
        ) from err
    if meta.get("format") != FORMAT:
        raise UserError(f"{path} is not a lasnn-deploy student (format {meta.get('format')!r}, expected {FORMAT!r})")
    try:
        config = StudentConfig.from_dict(json.loads(meta["config"]))
    except (KeyError, TypeError, json.JSONDecodeError) as err:
        raise UserError(f"{path} has a malformed student description ({err})") from err
    _check_tensor_shapes(config, tensors, path)  # before building: a description may ask for any size
    student = SpikingStudent(config)
    student.load_state_dict(tensors)
    return student.eval()


def parameter_shapes(config: StudentConfig) -> dict[str, tuple[int, ...]]:
    """Name and shape of every tensor of a ``SpikingStudent`` built from ``config``."""
    shapes = {
        f"body.{i}.{name}": shape
        for i, layer in enumerate(config.layers)
        for name, shape in layer.parameter_shapes().items()
    }
    return {**shapes, "leak": (), "thresholds": (len(config.spiking_layers),)}


def _check_tensor_shapes(config: StudentConfig, tensors: dict[str, torch.Tensor], path: Path) -> None:
    expected = parameter_shapes(config)
    for name in sorted(set(expected) | set(tensors)):
        if name not in tensors:
            raise UserError(f"{path}: tensor {name!r} is missing; the file does not match its description")
        if name not in expected:
            raise UserError(f"{path}: unexpected tensor {name!r}; the file does not match its description")
        if tuple(tensors[name].shape) != expected[name] or not tensors[name].is_floating_point():
            raise UserError(
                f"{path}: tensor {name!r} is {tensors[name].dtype} {list(tensors[name].shape)}, "
                f"the description needs a float tensor {list(expected[name])}"
            )
