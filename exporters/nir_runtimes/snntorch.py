"""snnTorch 1.0 (``snntorch.import_nir.import_from_nir``) reads the plain file as it is.

Its importer hard-codes ``dt = 1e-4`` (the plain file's) and maps ``AvgPool2d``, but builds NIR's
batch-free ``Flatten(start_dim=0)`` literally (``nn.Flatten(0, -1)``), so a batch axis would be
flattened too: the plain file runs one sample at a time (``order.run_unbatched``). The flavour only
counts the Flatten's dimensions from the end (``start_dim=-3``, the same node for NIR's batch-free
types), which ``nn.Flatten`` then applies past the batch axis: the whole batch runs at once.
"""

from __future__ import annotations

from typing import Any

import nir
import numpy as np
import torch

from ...nir_read import lif_layers
from . import Recorded, transforms
from .order import snntorch_module

BATCHED = True
LITERAL_FLATTEN = True


def flavour(graph: nir.NIRGraph) -> nir.NIRGraph:
    """Flatten counted from the end, so batches run."""
    return transforms.batch_flatten(graph)


def run(graph: nir.NIRGraph, settings: dict[str, Any], steps: torch.Tensor) -> Recorded:
    """The imported graph step by step on the whole batch, state reset once; spikes by forward hooks."""
    from snntorch.utils import reset as reset_state

    net = snntorch_module(graph).eval()
    lifs = list(lif_layers(graph, "the NIR graph"))
    spikes: dict[str, list[torch.Tensor]] = {n: [] for n in lifs}
    for n in lifs:
        net.get_submodule(n).register_forward_hook(lambda m, a, out, n=n: spikes[n].append(out.detach()))
    reset_state(net)
    with torch.no_grad():
        outputs = [net(x)[0] for x in steps]
    return Recorded(
        outputs=torch.stack(outputs).numpy(),
        spikes={n: torch.stack(s).numpy().astype(np.float32) for n, s in spikes.items()},
    )
