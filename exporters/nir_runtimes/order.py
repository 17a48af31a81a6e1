"""The plain NIR file in snnTorch one image at a time, and the PyTorch references in the order each
runtime computes its layers (one image at a time, or each step's whole batch).

A float32 kernel's rounding depends on the shape it runs on, and one last-bit difference at a
threshold tie flips a spike (docs/semantics.md, "NIR"): the references wrap the student's synaptic
layers so that their sums run on the same shapes as the runtime's.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from copy import deepcopy
from pathlib import Path
from typing import Any

import nir
import torch

from ...errors import UserError
from ...inputs import ModelInput
from ...neurons import _lif_forward
from ...nir_read import DT, EXPORT_HINT, lif_layers, read_graph
from ...student import AvgPool, Conv, Dropout, Flatten, Linear, Shortcut, SpikingStudent, table_entry
from ..target import RunResult


def as_tensor(x: Any) -> torch.Tensor | None:
    """Images or spikes given as numpy arrays or tensors -> float32 CPU tensors (snnTorch runs on CPU)."""
    return None if x is None else torch.as_tensor(x, dtype=torch.float32, device="cpu")


def float32(x: ModelInput) -> ModelInput:
    """A checked input as float32 CPU tensors (snnTorch and the references run in float32 on the CPU)."""
    return ModelInput(images=as_tensor(x.images), spikes=as_tensor(x.spikes))


def snntorch_module(graph: nir.NIRGraph) -> torch.nn.Module:
    """snnTorch 1.0's importer (``import_from_nir``) on ``graph``, its progress prints silenced."""
    try:
        from snntorch.import_nir import import_from_nir
    except ImportError as err:
        raise UserError(
            "running a NIR graph needs snnTorch 1.0 (`snntorch==1.0.0`); install it into this environment"
        ) from err
    with contextlib.redirect_stdout(io.StringIO()):
        return import_from_nir(graph)


def run_unbatched(path: Path, x: ModelInput) -> RunResult:
    """Run the file in snnTorch's NIR importer: one sample at a time, ``T`` steps, state reset between.

    Samples go in unbatched (``[C, H, W]``) because the importer builds NIR's batch-free
    ``Flatten(start_dim=0)`` literally, which would flatten a batch axis too. Spikes are read with
    forward hooks on the imported ``snn.Leaky`` modules. A LIF fed by a shortcut is named after
    the shortcut node (``shortcut<i>``, as the student names that layer); the importer's graph
    executor adds the LIF's two inputs before the neuron.
    """
    graph, settings = read_graph(path)
    if settings["dt"] != DT:
        raise UserError(f"{path} uses dt = {settings['dt']}, but snnTorch's importer assumes dt = {DT}; {EXPORT_HINT}")
    steps = float32(x).steps(settings["timesteps"])
    layers = lif_layers(graph, path)
    lif_names, layer_names = list(layers), list(layers.values())
    net = snntorch_module(graph).eval()
    from snntorch.utils import reset as reset_state  # importable once snntorch_module succeeded

    recorded: dict[str, list[torch.Tensor]] = {n: [] for n in lif_names}
    for n in lif_names:
        net.get_submodule(n).register_forward_hook(lambda m, i, out, n=n: recorded[n].append(out.detach()))
    T, B = steps.shape[:2]
    outputs = []  # per sample [T, K]
    with torch.no_grad():
        for b in range(B):
            reset_state(net)
            outputs.append(torch.stack([net(steps[t, b])[0] for t in range(T)]))
    logits = torch.stack(outputs, 1).mean(0)  # over [T, B, K], as the student averages (same float32 sums)
    spikes = [torch.stack(recorded[n]).unflatten(0, (B, T)).transpose(0, 1).numpy() for n in lif_names]
    return RunResult(logits=logits.numpy(), spikes=spikes, layer_names=layer_names)


class _Unbatched(torch.nn.Module):
    """``module`` on one image at a time, without a batch axis, as snnTorch's importer calls it.

    PyTorch's float32 CPU kernels pick their algorithm (and so their summation order) by input
    shape: a conv on a batch of ``T * B`` images and one on a single ``[C, H, W]`` image round
    most outputs differently in the last bits, and ``nn.Linear`` on one ``[F]`` vector is a
    matrix-vector product. Called per image, the reference's currents are the runtime's bit for bit.
    """

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module = module

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.module(x) for x in h])


Wrap = Callable[[torch.nn.Module], torch.nn.Module]


def _wrap_layer(module: torch.nn.Module, wrap: Wrap) -> torch.nn.Module:
    return wrap(module)


def _wrap_projection(module: torch.nn.Module, wrap: Wrap) -> torch.nn.Module:
    """A shortcut's 1x1 projection, if any; the residual add is a sum of two terms, order-free."""
    if isinstance(module.proj, torch.nn.Module):
        module.proj = wrap(module.proj)
    return module


def _keep(module: torch.nn.Module, wrap: Wrap) -> torch.nn.Module:
    """No sums to order: a reshape or the identity."""
    return module


# layer-spec type -> its module with the synaptic sums wrapped (runtime_order)
_SYNAPTIC: dict[type, Callable[[torch.nn.Module, Wrap], torch.nn.Module]] = {
    Conv: _wrap_layer,
    Linear: _wrap_layer,
    AvgPool: _wrap_layer,
    Shortcut: _wrap_projection,
    Flatten: _keep,
    Dropout: _keep,
}


def runtime_order(student: SpikingStudent, wrap: Wrap = _Unbatched) -> SpikingStudent:
    """A CPU copy of ``student`` whose synaptic layers run image by image, as in :func:`run`.

    Conv, Linear, AvgPool and shortcut projections are wrapped in ``wrap`` (:class:`_Unbatched`, or
    the NIR runtimes' per-step batches); the LIF recurrence is element-wise and the residual add a sum
    of two terms, so neither depends on the batch. Same weights, same float32 arithmetic: only the
    order of each kernel's sums changes.
    """
    copy = deepcopy(student).cpu().eval()
    for i, layer in enumerate(copy.config.layers):
        copy.body[i] = table_entry(_SYNAPTIC, type(layer), "the NIR reference's order")(copy.body[i], wrap)
    return copy


def lif_layer_names(student: SpikingStudent) -> list[str]:
    """The references' names for the LIF layers: the layer each follows, as ``nir_read.lif_layers`` names
    a file's LIF nodes (the exporter writes each layer as the node of that name)."""
    return [student.config.layer_name(i) for i in student.config.spiking_layers]


def plain_reference(student: SpikingStudent, x: ModelInput) -> RunResult:
    """What the NIR graph promises: the float32 student on the same input, in snnTorch's order.

    The student (eval mode, ``run(exact=False)``) computed as :func:`runtime_order` does, one image
    and one step at a time: a float32 kernel's rounding depends on the batch it runs on, and one
    last-bit difference at a threshold tie flips a spike (docs/semantics.md, "NIR").
    """
    x = float32(x)
    trace = runtime_order(student).run(x.images, input_spikes=x.spikes, record=True)
    return RunResult(
        logits=trace.logits.numpy(), spikes=[s.numpy() for s in trace.spikes], layer_names=lif_layer_names(student)
    )


class _PerStep(torch.nn.Module):
    """``module`` on one step's batch at a time, as a batched runtime calls it step by step.

    The student runs a layer on all ``T * B`` images at once; PyTorch's float32 kernels choose their
    summation order by shape, so the reference calls it on chunks of ``B``, as the runtime does.
    """

    def __init__(self, module: torch.nn.Module, batch: int):
        super().__init__()
        self.module, self.batch = module, batch

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.module(x) for x in h.split(self.batch)])


def _batched_order(student: SpikingStudent, batch: int) -> SpikingStudent:
    return runtime_order(student, lambda module: _PerStep(module, batch))


def ordered_reference(student: SpikingStudent, given: ModelInput, in_batches: bool = False) -> RunResult:
    """The float32 student on the same input, in the order the runtime computes its layers (``in_batches``:
    each step's whole batch, see :func:`batched`; else image by image), with the potentials before
    reset of every LIF layer (for the first-divergence report)."""
    cfg = student.config
    given = float32(given)
    x, spikes = given.images, given.spikes
    batch = given.batch
    ordered = _batched_order(student, batch) if in_batches else runtime_order(student)
    currents: dict[int, torch.Tensor] = {}
    hooks = [
        ordered.body[i].register_forward_hook(lambda m, a, out, i=i: currents.__setitem__(i, out))
        for i in cfg.spiking_layers
    ]
    try:
        with torch.no_grad():
            trace = ordered.run(x, input_spikes=spikes, record=True)
    finally:
        for hook in hooks:
            hook.remove()
    T = cfg.timesteps if spikes is None else spikes.shape[0]
    potentials = []
    for k, i in enumerate(cfg.spiking_layers):
        current = currents[i]
        # [T * B, ...], or [B, ...] for a layer the student runs once under direct encoding
        current = current.unflatten(0, (T, -1)) if current.shape[0] == T * batch else current.expand(T, *current.shape)
        _, v = _lif_forward(current.float(), student.leak.detach(), student.thresholds[k].detach(), True, True)
        potentials.append(torch.stack(v).numpy())
    return RunResult(
        logits=trace.logits.numpy(),
        spikes=[s.numpy() for s in trace.spikes],
        layer_names=lif_layer_names(student),
        potentials=potentials,
    )
