"""snnTorch 1.0 (``snntorch.import_nir.import_from_nir``) reads the plain file as it is.

Its importer hard-codes ``dt = 1e-4`` (the plain file's), maps ``AvgPool2d``, and builds NIR's
batch-free ``Flatten(start_dim=0)`` literally, so samples go in one at a time:
``exporters.nir.run`` is the loop (see docs/interop.md, "Running it in snnTorch").
"""

from __future__ import annotations

import nir

BATCHED = False


def flavour(graph: nir.NIRGraph) -> nir.NIRGraph:
    """The plain graph: snnTorch needs nothing else."""
    return graph
