"""SpikingJelly 2.0 (``spikingjelly.activation_based.nir_exchange.import_from_nir``), batched.

It reads the plain file as it is: ``AvgPool2d``, ``Flatten`` shifted past the batch axis, and a LIF
with ``r = tau/dt`` as its ``LIFNode(tau=tau/dt, decay_input=False)``, ``v += (v_reset - v)/tau + x``,
at the file's ``dt`` (its default is the same 1e-4).
"""

from __future__ import annotations

from typing import Any

import nir
import torch

from . import Recorded, missing, record_stateful

BATCHED = True


def flavour(graph: nir.NIRGraph) -> nir.NIRGraph:
    """The plain graph: SpikingJelly needs nothing else."""
    return graph


def run(graph: nir.NIRGraph, settings: dict[str, Any], steps: torch.Tensor) -> Recorded:
    """The imported GraphModule step by step on the whole batch, its explicit state carried along."""
    try:
        from loguru import logger
        from spikingjelly.activation_based.nir_exchange import import_from_nir
    except ImportError as err:
        raise missing("spikingjelly", err) from err
    logger.disable("spikingjelly")  # one info line per import
    return record_stateful(import_from_nir(graph, dt=settings["dt"]).eval(), graph, steps)
