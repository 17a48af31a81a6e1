"""NeuroBench 2.3's metrics of a student, computed by NeuroBench itself, beside our own counts (docs/energy.md).

NeuroBench finds neurons by module type (snnTorch's ``SpikingNeuron``) and synapses by module type
(``Linear``, ``Conv*``), counts a layer's operations as ACs only when every input value of the batch
is in {-1, 0, 1}, and takes batch-major input ``[B, T, ...]`` one step at a time. Our LIF is a
function and our pools sit between layers, so NeuroBench run on the student itself would see no
neuron and count everything after a pool as MACs. It runs instead on a ``Replica``: the deployed
graph (pools folded into the next layer, so every synaptic input stays a spike) as ``nn.Conv2d`` /
``nn.Linear`` modules, and each LIF population as an ``snn.Leaky`` with reset to zero, which is our
recurrence bit for bit (``u = lam * (1 - s[t-1]) * v[t-1] + i[t]``, spike when ``v > theta``).

The replica computes its currents in float64 and rounds them once to float32, as the student's
``exact`` run does; every batch, its spikes and output currents are compared with the student's
exact run before NeuroBench's metrics read them, and a difference is an error. The metrics are
NeuroBench's own classes, called directly rather than through ``Benchmark.run`` (which prints
"Error running workload metric" and stores 0.0 on any exception): an error propagates, and a
replica NeuroBench cannot see (no neuron or synapse hooks) is refused before it reports a 0.0.

Our own counts come from ``counting.py`` on the same exact run. NeuroBench's conventions differ from
ours in stated ways (``CONVENTIONS``); each metric carries NeuroBench's value, ours, ours under
NeuroBench's conventions (computed by our code, not NeuroBench's), and whether that equals NeuroBench's.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

import numpy as np
import snntorch as snn
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ..inputs import batches, loaded, sample_count
from ..modes import eval_mode
from ..neurons import lif_potentials
from ..student import DeployedLayer, DeployedShortcut, SpikingStudent, deployed_layers
from .counting import conv_fan_in, count_events, synapse_count

CONVENTIONS = {
    "first_layer_x_T": "NeuroBench feeds the analog image at every step: the first layer's MACs count T times "
    "(ours: once per sample, computed by the host)",
    "zero_inputs": "NeuroBench counts an effective MAC only for a non-zero input value (a zero pixel costs nothing); "
    "ours counts every real connection of the dense first layer",
    "zero_weights": "NeuroBench counts no operation on a zero weight (ours: every real synapse, zero or not, "
    "an identity shortcut's one synapse per spike aside)",
    "dense_every_weight": "Dense counts every weight of every connection layer at every step, a zero weight "
    "(e.g. an identity shortcut's off-diagonal) included (ours: real synapses, once)",
    "deployed_graph": "NeuroBench sees the deployed graph: a pool folded into the next layer makes its kernel "
    "k^2 times larger, an identity shortcut is a C x C 1x1 conv; leak and thresholds are snnTorch buffers, "
    "not parameters (ours: the student's tensors)",
    "neuron_buffers": "Footprint adds each snnTorch Leaky's buffers (beta, threshold, graded_spikes_factor, "
    "reset_mechanism_val; the one leak is shared) and, after a run, its membrane state (B x neurons x 4 bytes); "
    "measured here before any run",
    "binary_input": "an input whose values are all in {-1, 0, 1} (spikes, or a binary image batch) counts as ACs",
    "changed_potential": "MembraneUpdates counts a neuron-step only when the potential before reset changes "
    "(v[t] != v[t-1]), every neuron at the first step (ours: neurons x T); the output integrator is no "
    "snnTorch neuron and is not counted",
    "spiking_layers": "ActivationSparsity reads the LIF layers only (the output integrator never spikes): "
    "1 - our firing rate",
    "rounded": "NeuroBench rounds ConnectionSparsity to 4 decimals",
}


class NeuroBenchError(RuntimeError):
    """NeuroBench disagrees with the student or with our counts, or cannot see the replica: a bug, never a 0.0."""


def neuron(leak: torch.Tensor, theta: torch.Tensor) -> nn.Module:
    """One LIF population as NeuroBench sees neurons: snnTorch's Leaky, reset to zero, a strict threshold.

    With its default delayed reset, Leaky keeps the potential before reset ``v[t-1]`` and zeroes it at
    the next step where ``v[t-1] > theta`` (``reset = heaviside(v - theta)``, heaviside ``x > 0``), then
    ``v[t] = beta * u + i[t]``: our ``u = v - v s``, ``v = lam * u + i`` in the same order, bit for bit.
    """
    return snn.Leaky(beta=leak, threshold=theta, reset_mechanism="zero", surrogate_disable=True)


class Replica(nn.Module):
    """The deployed graph as modules NeuroBench recognises, run one time step per call.

    ``forward(x)`` takes one step's input ``[B, ...]`` (the image under direct encoding, spikes
    otherwise) and returns ``(output current [B, K], None)``, the form ``SNNTorchModel`` unpacks;
    the spikes of the step are kept in ``self.spikes`` (one list per LIF population) for the check.
    """

    def __init__(self, student: SpikingStudent):
        super().__init__()
        if student.config.reset != "hard":
            raise ValueError("the NeuroBench replica reproduces the hard reset only")
        self.layers = deployed_layers(student)
        self.synapses = nn.ModuleList(_connection(layer) for layer in self.layers)
        self.shortcuts = nn.ModuleDict(
            {str(j): _shortcut(layer.shortcut) for j, layer in enumerate(self.layers) if layer.shortcut is not None}
        )
        self.dtype = student.leak.dtype  # the neurons' precision (float32, or float64 for a float64 student)
        leak = student.leak.detach().cpu().clone()
        self.neurons = nn.ModuleList(
            neuron(leak, student.thresholds[layer.lif].detach().cpu().clone())
            for layer in self.layers
            if layer.lif is not None
        )
        self.spikes: list[list[torch.Tensor]] = [[] for _ in self.neurons]

    def reset(self) -> None:
        """Zero every membrane and forget the recorded spikes (``SNNTorchModel`` calls this before each batch)."""
        for population in self.neurons:
            population.reset_mem()  # type: ignore[operator]  # snnTorch's method, typed as a tensor attribute
        self.spikes = [[] for _ in self.neurons]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        out: dict[int, torch.Tensor] = {}
        k, current = 0, x
        for j, (layer, synapse) in enumerate(zip(self.layers, self.synapses, strict=True)):
            h = x if j == 0 else out[j - 1]
            if not layer.convolutional:
                h = h.flatten(1)
            current = synapse(h.double())
            if layer.shortcut is not None:
                current = current + self.shortcuts[str(j)](out[layer.shortcut.producer].double())
            current = current.to(self.dtype)
            if layer.lif is not None:
                spikes, _ = self.neurons[k](current)
                self.spikes[k].append(spikes)
                out[j], k = spikes, k + 1
        return current, None


def _connection(layer: DeployedLayer) -> nn.Module:
    """A deployed layer as a float64 torch Conv2d or Linear with its (folded) weights and bias."""
    weight = torch.from_numpy(layer.weight)
    bias = layer.bias is not None
    module: nn.Conv2d | nn.Linear
    if layer.convolutional:
        module = nn.Conv2d(
            weight.shape[1],
            weight.shape[0],
            weight.shape[-1],
            layer.stride,
            layer.padding,
            bias=bias,
            dtype=torch.float64,
        )
    else:
        module = nn.Linear(weight.shape[1], weight.shape[0], bias=bias, dtype=torch.float64)
    with torch.no_grad():
        module.weight.copy_(weight)
        if bias and module.bias is not None:
            module.bias.copy_(torch.from_numpy(layer.bias))
    return module


def _shortcut(shortcut: DeployedShortcut) -> nn.Conv2d:
    """A residual input as a float64 Conv2d (an identity is its identity matrix, a folded pool its kernel)."""
    weight = torch.from_numpy(shortcut.weight)
    module = nn.Conv2d(
        weight.shape[1], weight.shape[0], weight.shape[-1], shortcut.stride, bias=False, dtype=torch.float64
    )
    with torch.no_grad():
        module.weight.copy_(weight)
    return module


def _nonzero_reach(weight: np.ndarray, in_shape: tuple[int, ...], stride: int, padding: int) -> np.ndarray:
    """Synapses with a non-zero weight each input neuron reaches, shaped like the input (padding taps excluded).

    The gradient of the summed output of the conv (or linear) with binarised weights: exact integers in float64.
    """
    binary = torch.from_numpy((weight != 0).astype(np.float64))
    with torch.enable_grad():
        x = torch.zeros((1, *in_shape), dtype=torch.float64, requires_grad=True)
        y = F.conv2d(x, binary, stride=stride, padding=padding) if binary.dim() == 4 else F.linear(x, binary)
        (grad,) = torch.autograd.grad(y.sum(), x)
    return grad[0].numpy()


def _dense_ops(weight: np.ndarray, in_shape: tuple[int, ...], stride: int, padding: int) -> int:
    """Every weight times every real input it reads (NeuroBench's all-ones count of one step)."""
    if weight.ndim == 2:
        return int(weight.size)
    out_h = (in_shape[1] + 2 * padding - weight.shape[-1]) // stride + 1
    out_w = (in_shape[2] + 2 * padding - weight.shape[-1]) // stride + 1
    channels, height, width = in_shape
    shape_in = (channels, height, width)
    return int(conv_fan_in(shape_in, (weight.shape[0], out_h, out_w), weight.shape[-1], stride, padding).sum())


@dataclass
class _Ours:
    """Our totals over all samples under NeuroBench's conventions (our plain counts come from ``count_events``)."""

    effective_acs: float = 0.0
    effective_macs: float = 0.0
    membrane_updates: float = 0.0


def _check_spikes(replica: Replica, trace: Any, batch: int) -> None:
    """The replica's spikes and output currents of this batch must equal the student's exact run."""
    for k, recorded in enumerate(replica.spikes):
        theirs = torch.stack(recorded)
        if not torch.equal(theirs, trace.spikes[k].to(theirs.dtype)):
            differ = int((theirs != trace.spikes[k]).sum())
            raise NeuroBenchError(
                f"the NeuroBench replica's LIF layer {k} differs from the student in {differ} spikes (batch at "
                f"sample {batch}): it would report another network"
            )


def _check_visible(model: Any, replica: Replica) -> None:
    """NeuroBench must hook every neuron and connection layer of the replica, or it reports 0.0 for what it misses."""
    neurons, connections = len(replica.neurons), len(replica.synapses) + len(replica.shortcuts)
    if len(model.activation_hooks) != neurons or len(model.connection_hooks) != connections:
        raise NeuroBenchError(
            f"NeuroBench sees {len(model.activation_hooks)} of {neurons} neuron layers and "
            f"{len(model.connection_hooks)} of {connections} connection layers of the replica: "
            "it would report 0.0 for the rest"
        )


def _entry(neurobench: float, ours: float, adjusted: float | None, conventions: list[str], tol: float = 0.0) -> dict:
    entry: dict[str, Any] = {"neurobench": float(neurobench), "ours": float(ours)}
    if adjusted is not None:
        entry["ours_neurobench_conventions"] = float(adjusted)
        entry["equal"] = bool(abs(float(neurobench) - float(adjusted)) <= tol * max(1.0, abs(float(adjusted))))
    entry["conventions"] = [CONVENTIONS[c] for c in conventions]
    return entry


@dataclass
class _Totals:
    """Our plain counts summed over all samples (integers, exact in float64), batch by batch."""

    spikes: float = 0.0  # of the LIF layers
    synops: float = 0.0
    macs: float = 0.0


@torch.no_grad()
def neurobench_metrics(
    student: SpikingStudent,
    images: torch.Tensor | Dataset,
    *,
    seed: int = 0,
    batch_size: int = 64,
) -> dict[str, Any]:
    """NeuroBench's Footprint, ConnectionSparsity, ParameterCount, ActivationSparsity, SynapticOperations and
    MembraneUpdates of ``student`` on ``images`` (per sample), each beside our own count.

    Inputs are the energy report's (``model_input`` with ``seed``, sample ``i`` drawn with ``seed + i``):
    a tensor ``[N, C, H, W]`` or a ``Dataset`` loaded one batch at a time (``inputs.loaded``).
    Raises ``NeuroBenchError`` when the replica's spikes differ from the student's, when NeuroBench
    cannot see a neuron or connection layer, or when a metric that must equal ours (Effective_ACs,
    Effective_MACs, Dense, ActivationSparsity, MembraneUpdates, ConnectionSparsity, ParameterCount)
    does not under the stated conventions.
    """
    from neurobench.metrics.static import ConnectionSparsity, Footprint, ParameterCount
    from neurobench.metrics.workload import ActivationSparsity, MembraneUpdates, SynapticOperations
    from neurobench.models import SNNTorchModel

    replica = Replica(student)
    layers = replica.layers
    T = student.config.timesteps
    # static metrics on the replica at the student's precision (the float64 synapses are for exact currents only)
    at_precision = SNNTorchModel(copy.deepcopy(replica).to(replica.dtype))
    static = {metric.__name__: metric()(at_precision) for metric in (Footprint, ConnectionSparsity, ParameterCount)}
    neuron_bytes = sum(b.numel() * b.element_size() for b in replica.neurons.buffers())  # before a run: no state
    model = SNNTorchModel(replica)
    model.register_hooks()
    _check_visible(model, replica)
    sparsity, synops, updates = ActivationSparsity(), SynapticOperations(), MembraneUpdates()
    synops.reset()
    updates.reset()
    activation_sparsity, n = 0.0, sample_count(images)
    ours, totals = _Ours(), _Totals()
    nonzero_reach = [_nonzero_reach(layer.weight, layer.in_shape, layer.stride, layer.padding) for layer in layers]
    shortcut_reach = {
        j: _nonzero_reach(layer.shortcut.weight, layer.shortcut.in_shape, layer.shortcut.stride, 0)
        for j, layer in enumerate(layers)
        if layer.shortcut is not None
    }
    try:
        with eval_mode(student):
            for part in batches(student.config.encoding, T, loaded(images, None, batch_size), seed=seed):
                x, given, start = part.images, part.input, part.start
                trace = student.run(
                    given.images, input_spikes=given.spikes, timesteps=T, record=True, exact=True, currents=True
                )
                counts = count_events(layers, trace, T)
                totals.spikes += sum(float(c.spikes.sum()) for c in counts if c.spiking)
                totals.synops += sum(float(c.synops.sum()) for c in counts)
                totals.macs += sum(float(c.macs.sum()) for c in counts)
                _add_ours(ours, student, layers, trace, given.images, nonzero_reach, shortcut_reach)
                if given.spikes is None:
                    assert given.images is not None  # direct encoding: the images themselves
                    data = given.images.unsqueeze(1).expand(len(x), T, *given.images.shape[1:])
                else:
                    data = given.spikes.transpose(0, 1)
                preds = model(data)  # [B, T, K]
                _check_spikes(replica, trace, start)
                if trace.outputs is None or not torch.equal(preds.transpose(0, 1), trace.outputs):
                    raise NeuroBenchError(
                        f"the NeuroBench replica's output currents differ from the student's (batch at {start})"
                    )
                batch = (data, torch.zeros(len(x)))
                activation_sparsity += sparsity(model, preds, batch) * len(x) / n
                synaptic = synops(model, preds, batch)
                membrane = updates(model, preds, batch)
                model.reset_hooks()
    finally:
        model.cleanup_hooks()
    neurons = [int(np.prod(l.out_shape)) for l in layers]
    neuron_steps = sum(k * T for k, l in zip(neurons, layers, strict=True) if l.lif is not None) * n
    our_sparsity = 1.0 - totals.spikes / neuron_steps
    our_synops = totals.synops / n
    our_macs = totals.macs / n
    dense_per_step = sum(_dense_ops(l.weight, l.in_shape, l.stride, l.padding) for l in layers) + sum(
        _dense_ops(l.shortcut.weight, l.shortcut.in_shape, l.shortcut.stride, 0)
        for l in layers
        if l.shortcut is not None
    )
    real_synapses = sum(synapse_count(l) for l in layers)
    weights = [l.weight for l in layers] + [l.shortcut.weight for l in layers if l.shortcut is not None]
    zeros = sum(int((torch.from_numpy(w).to(replica.dtype) == 0).sum()) for w in weights)  # at the student's precision
    deployed_parameters = sum(w.size for w in weights) + sum(l.bias.size for l in layers if l.bias is not None)
    student_parameters = sum(p.numel() for p in student.parameters())
    student_bytes = sum(t.numel() * t.element_size() for t in student.state_dict().values())
    our_updates = sum(neurons) * T
    metrics = {
        "Footprint": _entry(
            static["Footprint"],
            student_bytes,
            deployed_parameters * student.leak.element_size() + neuron_bytes,
            ["deployed_graph", "neuron_buffers"],
        ),
        "ConnectionSparsity": _entry(
            static["ConnectionSparsity"],
            zeros / sum(w.size for w in weights),
            round(zeros / sum(w.size for w in weights), 4),
            ["deployed_graph", "rounded"],
        ),
        "ParameterCount": _entry(static["ParameterCount"], student_parameters, deployed_parameters, ["deployed_graph"]),
        "ActivationSparsity": _entry(activation_sparsity, our_sparsity, our_sparsity, ["spiking_layers"], tol=1e-9),
        "SynapticOperations": {
            "Effective_MACs": _entry(
                synaptic["Effective_MACs"],
                our_macs,
                ours.effective_macs / n,
                ["first_layer_x_T", "zero_inputs", "zero_weights"],
            ),
            "Effective_ACs": _entry(synaptic["Effective_ACs"], our_synops, ours.effective_acs / n, ["zero_weights"]),
            "Dense": _entry(
                synaptic["Dense"], real_synapses, dense_per_step * T, ["first_layer_x_T", "dense_every_weight"]
            ),
        },
        "MembraneUpdates": _entry(membrane, our_updates, ours.membrane_updates / n, ["changed_potential"], tol=1e-9),
    }
    _require_equal(metrics)
    return {
        "neurobench_version": version("neurobench"),
        "samples": n,
        "timesteps": T,
        "encoding": student.config.encoding,
        "replica": "the deployed graph (pools folded) as float64 torch Conv2d/Linear and snnTorch Leaky "
        "(reset_mechanism='zero'), checked spike for spike against the student's exact run",
        "metrics": metrics,
    }


def _events(spikes: torch.Tensor, reach: torch.Tensor) -> float:
    """Synaptic events of spikes ``[T, B, ...]``, each input neuron reaching ``reach`` synapses."""
    return float((spikes.double().sum(0).flatten(1) @ reach).sum())


def _require_equal(metrics: dict[str, Any]) -> None:
    """Every metric with our count under NeuroBench's conventions must equal NeuroBench's."""
    flat = {**metrics, **{f"SynapticOperations.{k}": v for k, v in metrics["SynapticOperations"].items()}}
    for name, entry in flat.items():
        if entry.get("equal") is False:
            raise NeuroBenchError(
                f"NeuroBench's {name} is {entry['neurobench']!r}, ours under its conventions "
                f"{entry['ours_neurobench_conventions']!r}: a counting bug on one side"
            )


def _add_ours(
    ours: _Ours,
    student: SpikingStudent,
    layers: list[DeployedLayer],
    trace: Any,
    images: torch.Tensor | None,
    nonzero_reach: list[np.ndarray],
    shortcut_reach: dict[int, np.ndarray],
) -> None:
    """Our counts of one batch under NeuroBench's conventions: events on non-zero weights only, the first
    layer's effective operations at every step under direct encoding, and neuron-steps whose potential changed."""
    T = student.config.timesteps
    for j, layer in enumerate(layers):
        reach = torch.from_numpy(nonzero_reach[j].reshape(-1))
        if j == 0 and trace.input_spikes is None:  # direct: the image at every step, a zero pixel no operation
            assert images is not None  # direct encoding runs on the images
            pixels = images.double().flatten(1)
            ops = T * float(((pixels != 0).double() @ reach).sum())
            if bool(((pixels == 0) | (pixels == 1) | (pixels == -1)).all()):
                ours.effective_acs += ops  # NeuroBench takes an input all in {-1, 0, 1} for spikes
            else:
                ours.effective_macs += ops
        else:
            source = trace.input_spikes if j == 0 else trace.spikes[layers[j - 1].lif]
            ours.effective_acs += _events(source, reach)
        if layer.shortcut is not None:
            source = trace.spikes[layers[layer.shortcut.producer].lif]
            ours.effective_acs += _events(source, torch.from_numpy(shortcut_reach[j].reshape(-1)))
    hard = student.config.reset == "hard"
    for k, current in enumerate(trace.currents):
        v = lif_potentials(current, student.leak.detach(), student.thresholds[k].detach(), "hard" if hard else "soft")
        ours.membrane_updates += float(v[0].numel()) + float((v[1:] != v[:-1]).sum())


def neurobench_section(
    student: SpikingStudent, images: torch.Tensor | Dataset, *, seed: int = 0, batch_size: int = 64
) -> dict:
    """The energy report's ``neurobench`` entry: the metrics, or why they are not given (a soft-reset student:
    snnTorch's subtractive reset is not our recurrence when the leak is below 1)."""
    if student.config.reset != "hard":
        return {"skipped": "NeuroBench's snnTorch neurons reproduce our hard reset only; this student resets softly"}
    return neurobench_metrics(student, images, seed=seed, batch_size=batch_size)


def _value(value: float) -> str:
    """A count with its thousands separated, a fraction to 12 significant digits (enough to see a difference)."""
    return f"{value:,.12g}" if value != int(value) else f"{int(value):,}"


def neurobench_markdown(section: dict) -> str:
    """The NeuroBench table of ``energy.md``: NeuroBench's value, ours, ours under its conventions, and why they differ."""
    lines = ["", "## NeuroBench metrics", ""]
    if "skipped" in section:
        return "\n".join([*lines, f"Not computed: {section['skipped']}.", ""])
    lines += [
        f"Computed by NeuroBench {section['neurobench_version']} on {section['samples']} samples (per sample), on "
        f"{section['replica']}. 'Ours (NeuroBench's conventions)' is our own count under the convention that "
        "explains the difference. Footprint is in bytes.",
        "",
        "| metric | NeuroBench | ours | ours (NeuroBench's conventions) | equal | conventions |",
        "|---|---|---|---|---|---|",
    ]
    metrics = section["metrics"]
    rows = [(k, v) for k, v in metrics.items() if k != "SynapticOperations"]
    rows[3:3] = [(f"SynapticOperations.{k}", v) for k, v in metrics["SynapticOperations"].items()]
    for name, entry in rows:
        adjusted = entry.get("ours_neurobench_conventions")
        lines.append(
            f"| {name} | {_value(entry['neurobench'])} | {_value(entry['ours'])} | "
            f"{'' if adjusted is None else _value(adjusted)} | {'yes' if entry.get('equal') else 'no'} | "
            f"{'; '.join(entry['conventions'])} |"
        )
    return "\n".join([*lines, ""])
