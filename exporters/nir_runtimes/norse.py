r"""Norse 1.1 (``norse.torch.from_nir``), one sample at a time.

What the flavour works around (docs/interop.md): Norse maps ``SumPool2d`` but not ``AvgPool2d``
(``KeyError: 'avgpool1'``); its LIF, ``v += dt/tau (v_leak - v + I)``, ignores ``r`` (it logs a
warning and goes on), so ``r`` is folded into the threshold; its default ``dt`` is 1e-3, not the
plain file's 1e-4, so ``tau`` is written for 1e-3. Like snnTorch it builds ``Flatten(start_dim=0)``
literally (``nn.Flatten(0, -1)``), so the flavour counts it from the end (``start_dim=-3``) and
the whole batch runs at once.
"""

from __future__ import annotations

from typing import Any

import nir
import torch

from . import Recorded, missing, record_stateful, transforms

BATCHED = True
LITERAL_FLATTEN = True
DT = 1e-3  # norse.torch.from_nir's default dt


def flavour(graph: nir.NIRGraph) -> nir.NIRGraph:
    """SumPool2d for AvgPool2d, ``r`` folded into ``v_threshold``, ``tau`` for ``dt = 1e-3``, Flatten from the end."""
    return transforms.batch_flatten(transforms.neurons(transforms.sum_pools(graph), DT, fold_r=True))


def run(graph: nir.NIRGraph, settings: dict[str, Any], steps: torch.Tensor) -> Recorded:
    """``from_nir(graph)`` as shipped (its default dt is the flavour's), the whole batch per step, state carried."""
    try:
        import norse.torch as norse
    except ImportError as err:
        raise missing("norse", err) from err
    return record_stateful(norse.from_nir(graph).eval(), graph, steps)
