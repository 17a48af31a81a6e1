"""Small SNNs built in snnTorch, SpikingJelly, Sinabs and Norse, written by each library's own NIR
exporter and simulated by the library itself: the ground truth of the NIR-import tests.

Each library's neuron is configured as NIR's LIF/IF describes it (reset to 0, one spike per step):
snnTorch ``Leaky(reset_mechanism="zero")``, SpikingJelly ``LIFNode``/``IFNode`` with ``v_reset=0``,
Sinabs ``IAFSqueeze``/``LIFSqueeze`` with ``SingleSpike`` and ``MembraneReset`` (defaults fire
several spikes per step and subtract), Norse ``LIFBoxCell``. Inputs are [1, 16, 16] digits images.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import nir
import numpy as np
import torch
from torch import nn

SHAPE = (1, 16, 16)
LIBRARIES = ("snntorch", "spikingjelly", "sinabs", "norse")


@dataclass
class Foreign:
    """A library's network, the NIR graph its exporter wrote, and how to simulate it."""

    net: nn.Module
    graph: nir.NIRGraph
    neurons: list[nn.Module]  # spiking modules in order, hooked for spikes


def _init(net: nn.Module, seed: int, gain: float) -> None:
    torch.manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)
                m.weight.mul_(gain)
                if m.bias is not None:
                    m.bias.zero_()


def build(library: str, kind: str, seed: int = 0) -> Foreign:
    """``kind`` "conv": conv-LIF-pool-flatten-linear; "dense": flatten-linear-LIF-linear-LIF (spike readout)."""
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    return globals()[f"_{library}"](kind, seed)


def _snntorch(kind: str, seed: int) -> Foreign:
    import snntorch as snn
    from snntorch.export_nir import export_to_nir

    def leaky(shape, beta=0.9, theta=0.5):  # tensor beta/threshold: the exporter's type inference needs shapes
        return snn.Leaky(
            beta=torch.full(shape, beta), threshold=torch.full(shape, theta), init_hidden=True, reset_mechanism="zero"
        )

    if kind in ("conv", "int"):
        net = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1, bias=False),
            leaky((4, 16, 16)),
            nn.AvgPool2d(2),
            nn.Flatten(),
            nn.Linear(256, 10, bias=False),
        )
        if kind == "int":  # Loihi-representable: see representable()
            net[1] = leaky((4, 16, 16), beta=0.5, theta=40 / 256)
    else:
        net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(256, 32, bias=False),
            leaky((32,)),
            nn.Linear(32, 10, bias=False),
            leaky((10,), theta=0.3),
        )
    _init(net, seed, 1.0)
    if kind == "int":
        representable(net[0], net[4], seed)
    graph = export_to_nir(net, torch.rand(1, *SHAPE), ignore_dims=[0])
    return Foreign(net, graph, [m for m in net if isinstance(m, snn.Leaky)])


@torch.no_grad()
def representable(conv: nn.Conv2d, linear: nn.Linear, seed: int) -> None:
    """Weights that netx stores exactly: the conv's n / 256 and the linear's 4 n / 256 (n in [-30, 30]),
    whose fold with the 2x2 average pool is n / 256; each layer's first weight is 254 / 256 (times 4),
    which pins the Lava export's scale to 256. With leak 0.5 and thresholds m / 256, float32 sums are
    exact and the integer network computes the same spikes as the float one."""
    gen = torch.Generator().manual_seed(seed)
    for module, area in ((conv, 1), (linear, 4)):
        n = torch.randint(-30, 31, module.weight.shape, generator=gen).float()
        n.view(-1)[0] = 254
        module.weight.copy_(n * area / 256)


def _spikingjelly(kind: str, seed: int) -> Foreign:
    from spikingjelly.activation_based import layer, neuron
    from spikingjelly.activation_based.nir_exchange import export_to_nir

    if kind == "conv":
        net = nn.Sequential(
            layer.Conv2d(1, 4, 3, padding=1, bias=False),
            neuron.LIFNode(tau=2.0, v_threshold=0.5),
            layer.AvgPool2d(2),
            layer.Flatten(),
            layer.Linear(256, 10, bias=False),
        )
    else:
        net = nn.Sequential(
            layer.Flatten(),
            layer.Linear(256, 32, bias=False),
            neuron.IFNode(v_threshold=1.0),
            layer.Linear(32, 10, bias=False),
            neuron.IFNode(v_threshold=0.5),
        )
    _init(net, seed, 1.0)
    graph = export_to_nir(net, torch.rand(1, *SHAPE))
    return Foreign(net, graph, [m for m in net if isinstance(m, neuron.BaseNode)])


def _sinabs(kind: str, seed: int) -> Foreign:
    import sinabs
    import sinabs.layers as sl
    from sinabs.activation import MembraneReset, SingleSpike

    one = dict(spike_fn=SingleSpike, reset_fn=MembraneReset())
    if kind == "conv":
        net = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1, bias=False),
            sl.IAFSqueeze(batch_size=1, spike_threshold=1.0, **one),
            sl.SumPool2d(2),
            nn.Flatten(),
            nn.Linear(256, 10, bias=False),
        )
    else:
        net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(256, 32, bias=False),
            sl.LIFSqueeze(tau_mem=torch.full((32,), 4.0), batch_size=1, spike_threshold=torch.full((32,), 0.1), **one),
            nn.Linear(32, 10, bias=False),
            sl.LIFSqueeze(tau_mem=torch.full((10,), 4.0), batch_size=1, spike_threshold=torch.full((10,), 0.05), **one),
        )
    _init(net, seed, 1.0)
    graph = sinabs.to_nir(net, torch.rand(1, *SHAPE))
    sinabs.reset_states(net)
    return Foreign(net, graph, [m for m in net if isinstance(m, sl.StatefulLayer)])


def _norse(kind: str, seed: int) -> Foreign:
    import norse.torch as norse
    from norse.torch.utils.export_nir import to_nir

    p = norse.LIFBoxParameters(tau_mem_inv=torch.tensor(200.0), v_th=torch.tensor(0.2))  # dt 1e-3: leak 0.8
    if kind == "conv":  # Norse's exporter maps no pool or flatten: the readout is a conv over the whole map
        net = norse.SequentialState(nn.Conv2d(1, 4, 3, padding=1), norse.LIFBoxCell(p), nn.Conv2d(4, 10, 16))
    else:
        net = norse.SequentialState(
            nn.Linear(256, 32),
            norse.LIFBoxCell(p),
            nn.Linear(32, 10),
            norse.LIFBoxCell(norse.LIFBoxParameters(tau_mem_inv=torch.tensor(200.0), v_th=torch.tensor(0.05))),
        )
    _init(net, seed, 1.0)
    graph = to_nir(net, torch.rand(1, *SHAPE) if kind == "conv" else torch.rand(1, 256))
    return Foreign(net, graph, [m for m in net if isinstance(m, norse.LIFBoxCell)])


def write(graph: nir.NIRGraph, path) -> None:
    """``nir.write``; Sinabs' ``to_nir`` leaves Conv2d ``input_shape`` and some types undefined, which
    ``nir.write`` cannot store, so its graphs get nir's own ``infer_types()`` first."""
    undefined = [
        n
        for n in graph.nodes.values()
        if getattr(n, "input_shape", 0) is None or any(v is None for v in (n.input_type or {}).values())
    ]
    if undefined:
        graph.infer_types()
    nir.write(path, graph)


def simulate(library: str, f: Foreign, steps: torch.Tensor) -> tuple[np.ndarray, list[np.ndarray]]:
    """The library's own run of ``f.net`` on the per-step input ``steps`` ``[T, B, C, H, W]``.

    Returns logits ``[B, K]`` (the output summed over the steps / T) and spikes ``[T, B, ...]`` per neuron layer.
    """
    spikes: list[list[torch.Tensor]] = [[] for _ in f.neurons]

    def record(k: int):
        return lambda m, i, o: spikes[k].append((o[0] if isinstance(o, tuple) else o).detach())

    hooks = [m.register_forward_hook(record(k)) for k, m in enumerate(f.neurons)]
    outputs = []
    with torch.no_grad():
        if library == "sinabs":  # Squeeze layers take [B * T, ...] with batch_size 1: one sample at a time
            import sinabs

            per_sample = []
            for b in range(steps.shape[1]):
                sinabs.reset_states(f.net)
                per_sample.append(f.net(steps[:, b]))
            outputs = list(torch.stack(per_sample, 1))  # per step [B, K]
            spikes = [list(torch.stack(layer, 1)) for layer in spikes]  # each sample's [T, ...] -> per step [B, ...]
        elif library == "norse":
            state = None
            for x in steps:
                out, state = f.net(x if isinstance(f.net[0], nn.Conv2d) else x.flatten(1), state)
                outputs.append(out.flatten(1))
        else:
            if library == "spikingjelly":
                from spikingjelly.activation_based import functional

                functional.reset_net(f.net)
            else:
                from snntorch import utils

                utils.reset(f.net)
            for x in steps:
                out = f.net(x)
                outputs.append(out[0] if isinstance(out, tuple) else out)
    for h in hooks:
        h.remove()
    logits = torch.stack(outputs).mean(0)
    return logits.numpy(), [torch.stack(layer).numpy() for layer in spikes]
