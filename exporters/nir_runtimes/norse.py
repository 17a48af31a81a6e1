r"""Norse 1.1 (``norse.torch.from_nir``), one sample at a time.

What the flavour works around (docs/interop.md): Norse maps ``SumPool2d`` but not ``AvgPool2d``
(``KeyError: 'avgpool1'``); its LIF, ``v += dt/tau (v_leak - v + I)``, ignores ``r`` (it logs a
warning and goes on), so ``r`` is folded into the threshold; its default ``dt`` is 1e-3, not the
plain file's 1e-4, so ``tau`` is written for 1e-3. Like snnTorch it builds ``Flatten(start_dim=0)``
literally, so samples go in unbatched.
"""

from __future__ import annotations

from typing import Any

import nir
import numpy as np
import torch

from . import Recorded, missing, transforms

BATCHED = False
DT = 1e-3  # norse.torch.from_nir's default dt


def flavour(graph: nir.NIRGraph) -> nir.NIRGraph:
    """SumPool2d for AvgPool2d, ``r`` folded into ``v_threshold``, ``tau`` for ``dt = 1e-3``."""
    return transforms.neurons(transforms.sum_pools(graph), DT, fold_r=True)


def run(graph: nir.NIRGraph, settings: dict[str, Any], steps: torch.Tensor) -> Recorded:
    """``from_nir(graph)`` as shipped (its default dt is the flavour's), state carried per sample."""
    try:
        import norse.torch as norse
    except ImportError as err:
        raise missing("norse", err) from err
    net = norse.from_nir(graph).eval()
    lifs = [n for n, node in graph.nodes.items() if isinstance(node, nir.LIF)]
    spikes: dict[str, list[torch.Tensor]] = {n: [] for n in lifs}
    for n in lifs:
        net.get_submodule(n).register_forward_hook(lambda m, a, out, n=n: spikes[n].append(out[0].detach()))
    T, B = steps.shape[:2]
    outputs = []
    with torch.no_grad():
        for b in range(B):
            state = None
            for t in range(T):
                out, state = net(steps[t, b], state)
                outputs.append(out)
    def time_major(s: list[torch.Tensor]) -> np.ndarray:
        return torch.stack(s).unflatten(0, (B, T)).transpose(0, 1).numpy().astype(np.float32)

    return Recorded(outputs=time_major(outputs), spikes={n: time_major(s) for n, s in spikes.items()})
