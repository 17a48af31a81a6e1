r"""Sinabs 3.1 (``sinabs.from_nir``), the whole batch and all steps in one call.

What the flavour works around (docs/interop.md): Sinabs maps neither ``AvgPool2d`` nor
``Linear`` (only ``Affine``); its LIF check ``any(node.v_leak) != 0`` raises on a conv-shaped
(3-D) LIF with nir >= 1.0.5, so every layer is written dense on flat vectors; it reads ``tau``
as a number of steps (``v = exp(-1/tau) v + I``, ``r`` ignored), so ``tau = -1/ln(lam)`` at
``dt = 1`` with the matching ``r``. What no file can change: its LIF built by ``from_nir`` fires
``floor(v/theta)`` spikes per step (``MultiSpike``) and resets by subtracting them, where the
student fires at most once and resets to 0; so it agrees only as far as those two rules do.
"""

from __future__ import annotations

from typing import Any

import nir
import numpy as np
import torch

from ...nir_read import lif_layers
from . import Recorded, missing, transforms

BATCHED = True


def flavour(graph: nir.NIRGraph) -> nir.NIRGraph:
    """Dense layers on flat vectors, Affine for Linear, ``tau`` in steps."""
    return transforms.affine(transforms.neurons(transforms.dense(graph), 1.0, steps=True))


def run(graph: nir.NIRGraph, settings: dict[str, Any], steps: torch.Tensor) -> Recorded:
    """``from_nir(graph, batch_size=B)`` on ``[B * T, N]`` (Sinabs' squeezed batch-major layout)."""
    try:
        import sinabs
    except ImportError as err:
        raise missing("sinabs", err) from err
    T, B = steps.shape[:2]
    net = sinabs.from_nir(graph, batch_size=B).eval()
    lifs = list(lif_layers(graph, "the NIR graph"))
    spikes: dict[str, torch.Tensor] = {}
    for n in lifs:
        net.get_submodule(n).register_forward_hook(lambda m, a, out, n=n: spikes.__setitem__(n, out.detach()))
    x = steps.reshape(T, B, -1).transpose(0, 1).reshape(B * T, -1)
    with torch.no_grad():
        out = net(x)
        out = out[0] if isinstance(out, tuple) else out

    def time_major(a: torch.Tensor) -> np.ndarray:
        return a.reshape(B, T, -1).transpose(0, 1).numpy().astype(np.float32)

    return Recorded(outputs=time_major(out), spikes={n: time_major(s) for n, s in spikes.items()})
