"""NIR runtimes that ``validate --runtime NAME`` runs a NIR file in, and the flavoured files
``export --target nir --nir-for NAME`` writes for them (docs/interop.md).

One small module per runtime, each with the same three names:

- ``flavour(graph) -> nir.NIRGraph``: the plain student graph rewritten (``transforms``) into an
  equivalent one the runtime's importer runs as it ships (the graph itself when it needs nothing).
- ``run(graph, settings, steps) -> Recorded``: the importer, as it ships, on the input of every step
  ``[T, B, C, H, W]``: the graph's output per step and the spikes of every LIF node.
- ``BATCHED``: whether the importer takes a batch, and ``LITERAL_FLATTEN``: whether it builds NIR's
  batch-free ``Flatten(start_dim=0)`` as ``nn.Flatten(0, -1)``, which flattens a batch axis too; then
  only a file whose Flatten counts from the end (``start_dim=-3``, the flavours') runs batched
  (:func:`batched`). Batched, the reference computes each step's layers on the whole batch, as the
  runtime does; else one image at a time (``order.runtime_order``).

The default ``export --target nir`` file stays plain NIR, run in snnTorch. A flavoured file records
its runtime in the metadata (``nir_for``), and ``validate`` refuses to run it in another.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import nir
import numpy as np
import torch

from ...errors import UserError
from ...inputs import ModelInput
from ...nir_read import lif_layers, read_graph
from ..target import RunResult
from . import transforms
from .order import float32, run_unbatched

RUNTIMES = {  # name: the extra that installs it
    "snntorch": "a core dependency (snntorch==1.0.0)",
    "spikingjelly": "lasnn-deploy[spikingjelly]",
    "norse": "lasnn-deploy[norse]",
    "sinabs": "lasnn-deploy[sinabs]",
    "spyx": "its own environment: `make spyx` builds .venv-spyx/",
}
DEFAULT = "snntorch"


@dataclass
class Recorded:
    """What a runtime gives back: the output per step ``[T, B, K]`` and spikes per LIF node ``[T, B, ...]``."""

    outputs: np.ndarray
    spikes: dict[str, np.ndarray]
    potentials: dict[str, np.ndarray] | None = None


def record_stateful(net: torch.nn.Module, graph: nir.NIRGraph, steps: torch.Tensor) -> Recorded:
    """Run an importer's ``net(x, state) -> (out, state)`` module over ``steps`` ``[T, B, ...]``, the whole batch
    per step with the state carried, recording each LIF node's spikes through a forward hook (Norse, SpikingJelly)."""
    lifs = list(lif_layers(graph, "the NIR graph"))
    spikes: dict[str, list[torch.Tensor]] = {n: [] for n in lifs}
    for n in lifs:
        net.get_submodule(n).register_forward_hook(lambda m, a, out, n=n: spikes[n].append(out[0].detach()))
    outputs, state = [], None
    with torch.no_grad():
        for x in steps:
            out, state = net(x, state)
            outputs.append(out)
    return Recorded(
        outputs=torch.stack(outputs).numpy(),
        spikes={n: torch.stack(s).numpy().astype(np.float32) for n, s in spikes.items()},
    )


def runtime_module(name: str) -> ModuleType:
    """The adapter module of runtime ``name``; one clear line for an unknown name."""
    if name not in RUNTIMES:
        raise UserError(f"unknown NIR runtime {name!r}: choose one of {', '.join(RUNTIMES)}")
    return importlib.import_module(f"{__name__}.{name}")


def missing(name: str, err: Exception) -> UserError:
    """The error for a runtime whose library is not installed."""
    return UserError(f"the {name} runtime is not installed ({err}); install {RUNTIMES[name]} (make install does)")


def flavour(graph: nir.NIRGraph, runtime: str) -> nir.NIRGraph:
    """The plain student graph in ``runtime``'s flavour, its metadata naming the runtime (``--nir-for``)."""
    flavoured = runtime_module(runtime).flavour(graph)
    flavoured.metadata["nir_for"] = runtime
    return flavoured


def runtime_of(graph: nir.NIRGraph, runtime: str | None, where: Any) -> str:
    """The runtime to run ``graph`` in: the one asked for, else the one it was written for, else snnTorch."""
    written_for = str(graph.metadata.get("nir_for", "")) or None
    chosen = runtime or written_for or DEFAULT
    runtime_module(chosen)
    if written_for and chosen != written_for:
        raise UserError(
            f"{where} was written for {written_for} (--nir-for {written_for}); validate it with "
            f"--runtime {written_for}, or export a file for {chosen} with --nir-for {chosen}"
        )
    return chosen


def batched(graph: nir.NIRGraph, runtime: str) -> bool:
    """Whether ``runtime`` runs ``graph`` on a whole batch at once (see the module docstring)."""
    module = runtime_module(runtime)
    literal = getattr(module, "LITERAL_FLATTEN", False)
    return module.BATCHED and not (
        literal and any(isinstance(node, nir.Flatten) and int(node.start_dim) >= 0 for node in graph.nodes.values())
    )


def run(path: str | Path, x: ModelInput, runtime: str | None = None) -> RunResult:
    """Run the NIR file in ``runtime``'s importer; logits are the mean of the output over the ``T`` steps."""
    path = Path(path)
    graph, settings = read_graph(path)
    runtime = runtime_of(graph, runtime, path)
    if runtime == "snntorch" and not batched(graph, runtime):
        return run_unbatched(path, x)  # the plain file, one image at a time
    steps = float32(x).steps(settings["timesteps"])
    layers = lif_layers(graph, path)
    try:
        recorded = runtime_module(runtime).run(graph, settings, steps)
    except UserError:
        raise
    except Exception as err:  # the importer as it ships: KeyError for an unmapped node, ValueError, ...
        hint = "" if graph.metadata.get("nir_for") == runtime else f"; export a file for it with --nir-for {runtime}"
        raise UserError(f"{runtime} cannot run {path} ({type(err).__name__}: {err}){hint}") from err
    logits = torch.as_tensor(recorded.outputs, dtype=torch.float32).reshape(*steps.shape[:2], -1).mean(0)
    shapes = transforms.layer_shapes(graph)  # a dense flavour's LIF layers are flat: the student's shapes back

    def shaped(a: np.ndarray, name: str) -> np.ndarray:
        return a.reshape(*a.shape[:2], *shapes[name]) if name in shapes else a

    found = [n for n in layers if n in recorded.spikes]
    return RunResult(
        logits=logits.numpy(),
        spikes=[shaped(recorded.spikes[n], n) for n in found],
        layer_names=[layers[n] for n in found],
        potentials=None if recorded.potentials is None else [shaped(recorded.potentials[n], n) for n in found],
    )
