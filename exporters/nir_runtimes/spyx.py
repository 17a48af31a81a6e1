r"""Spyx 1.0 (``spyx.nir.from_nir``, JAX), batched, in its own environment and process.

What the flavour works around (docs/interop.md): Spyx drops ``AvgPool2d`` without a word, runs
channels-last and flattens in (H, W, C) order without permuting the next ``Linear``, so every
layer is written dense on flat (C, H, W) vectors; it converts ``tau`` at ``dt = 1`` with
``beta = 1 - dt/tau`` and ignores ``r``, so ``tau = 1/(1 - lam)``, ``r = tau`` at ``dt = 1``.
What no file can change: its LIF fires from the potential carried into a step (one step late per
layer) and resets by subtracting the threshold. The runner lines up the latency, as SANA-FE's does:
it runs ``T + L`` steps (zero input after ``T``) and reads LIF layer ``k``'s spikes ``k + 1`` steps
later and the output ``L`` steps later; the subtractive reset remains.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import nir
import numpy as np
import torch

from ...errors import UserError
from ...nir_read import lif_layers
from . import Recorded, transforms

BATCHED = True
RUNNER = Path(__file__).with_name("spyx_runner.py")
TIMEOUT_S = 1800


def flavour(graph: nir.NIRGraph) -> nir.NIRGraph:
    """Dense layers on flat vectors, ``tau`` and ``r`` for ``dt = 1``."""
    return transforms.neurons(transforms.dense(graph), 1.0)


def python() -> Path:
    """Spyx's interpreter: ``$LASNN_SPYX_PYTHON``, else ``.venv-spyx`` at the repository root."""
    path = Path(os.environ.get("LASNN_SPYX_PYTHON") or Path(__file__).resolve().parents[2] / ".venv-spyx/bin/python")
    if not path.is_file():
        raise UserError(
            f"the spyx runtime is not installed (no {path}); run `make spyx` in the repository, "
            "or point LASNN_SPYX_PYTHON at a Python with spyx==1.0.0 and nir"
        )
    return path


def run(graph: nir.NIRGraph, settings: dict[str, Any], steps: torch.Tensor) -> Recorded:
    """Spyx on ``[T + L, B, N]`` in a subprocess; spikes and outputs shifted back by their latency."""
    T, B = steps.shape[:2]
    lifs = list(lif_layers(graph, "the NIR graph"))
    padded = torch.cat([steps.reshape(T, B, -1), steps.new_zeros(len(lifs), B, int(np.prod(steps.shape[2:])))])
    with tempfile.TemporaryDirectory(prefix="lasnn-spyx-") as tmp:
        graph_path, in_path, out_path = (Path(tmp) / name for name in ("graph.nir", "in.npz", "out.npz"))
        nir.write(graph_path, graph)
        np.savez(in_path, steps=padded.numpy())
        done = subprocess.run(
            [str(python()), "-I", str(RUNNER), str(graph_path), str(in_path), str(out_path)],
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise UserError(f"Spyx could not run the graph ({last}); export it with --nir-for spyx")
        with np.load(out_path) as out:
            outputs = out["outputs"][len(lifs) :]
            spikes = {n: out[f"spikes/{n}"][k + 1 : k + 1 + T] for k, n in enumerate(lifs)}
    return Recorded(outputs=outputs, spikes=spikes)
