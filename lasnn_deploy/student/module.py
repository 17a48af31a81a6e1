"""``SpikingStudent``: the PyTorch module built from a ``StudentConfig``, holding the weights, the
shared leak and the per-layer thresholds, and the checks every consumer runs on a student and its data.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..inputs import model_input
from ..neurons import lif_multistep
from .config import StudentConfig, check_timesteps
from .layers import AvgPool, Conv, Dropout, Flatten, Linear, ResidualAdd, Shortcut, table_entry
from .walk import LayerStep, flow


@dataclass
class Trace:
    """What one run of the student produced: logits ``[B, K]`` and the spikes of every LIF layer."""

    logits: torch.Tensor
    spikes: list[torch.Tensor] = field(default_factory=list)  # each [T, B, ...]
    input_spikes: torch.Tensor | None = None  # [T, B, C, H, W]; None for direct encoding
    outputs: torch.Tensor | None = None  # [T, B, K]: the readout's input current per step; logits are their mean
    currents: list[torch.Tensor] = field(default_factory=list)  # each [T, B, ...]: LIF inputs (currents=True)


class SpikingStudent(nn.Module):
    """Student SNN (the float reference of docs/semantics.md) that also runs as its intermediate ANN.

    ``forward`` runs the SNN for ``T`` steps and returns logits ``u_out[T] / T``; ``forward_ann``
    runs the same weights with ReLU in place of every LIF layer (the intermediate ANN).
    """

    def __init__(self, config: StudentConfig, leak: float = 1.0, thresholds: list[float] | None = None):
        super().__init__()
        self.config = config
        self.body = nn.ModuleList(l.build() for l in config.layers)
        n = len(config.spiking_layers)
        self.leak = nn.Parameter(torch.tensor(float(leak)))
        self.thresholds = nn.Parameter(
            torch.tensor(thresholds if thresholds is not None else [1.0] * n, dtype=torch.float32)
        )
        for module in self.weighted_modules():
            # He init (fan-in, ReLU gain) as Rathi et al.: without batch norm or bias, PyTorch's default
            # shrinks the signal ~2.5x per layer (vgg16's ANN output std 6e-8, resnet12's ANN stuck at chance)
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    # -- running -----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, timesteps: int | None = None, seed: int = 0) -> torch.Tensor:
        return self.run(x, timesteps=timesteps, seed=seed).logits

    def run(
        self,
        x: torch.Tensor | None = None,
        *,
        input_spikes: torch.Tensor | None = None,
        timesteps: int | None = None,
        seed: int = 0,
        record: bool = False,
        exact: bool = False,
        currents: bool = False,
    ) -> Trace:
        """Run the SNN on images ``x`` (encoded per the config by ``inputs.model_input``) or on given ``input_spikes``.

        Under direct encoding the input is the same at every step, so the layers before the first
        LIF run once on ``[B, ...]`` and their result is repeated over time (exact, and T times
        cheaper). Afterwards every layer runs on ``[T * B, ...]`` at once.

        ``exact=True`` computes every synaptic current (conv, pool, linear) in float64 and rounds
        it once to the neuron's float32: the result no longer depends on the order in which a
        kernel adds its terms, so another runtime that does the same (the ONNX export) produces
        the same spikes bit for bit. Plain float32 kernels of two libraries disagree in the last
        bit, which flips a spike whenever ``u`` lies within a rounding step of ``theta``.

        ``currents=True`` also keeps every LIF layer's input current (what a membrane-update count reads).
        """
        T = check_timesteps(timesteps or self.config.timesteps)
        given = model_input(self.config.encoding, T, x, input_spikes, seed=seed)
        if given.spikes is None:
            start = _Signal(given.image(), static=True)
        else:
            start, T = _Signal(given.spikes, static=False), given.spikes.shape[0]
        trace = Trace(logits=torch.empty(0), input_spikes=given.spikes)

        def through(step: LayerStep, x: _Signal, saved: Mapping[int, _Signal]) -> _Signal:
            run_layer = table_entry(_RUN, type(step.spec), "SpikingStudent.run")
            return run_layer(step.spec, self.body[step.index], x, saved, exact, self.training)

        def fire(step: LayerStep, k: int, x: _Signal) -> _Signal:
            h = x.h.unsqueeze(0).expand(T, *x.h.shape) if x.static else x.h
            h = h.to(self.leak.dtype)
            if currents:
                trace.currents.append(h)
            h = lif_multistep(h, self.leak, self.thresholds[k], self.config.reset)
            if record:
                trace.spikes.append(h)
            return _Signal(h, static=False)

        out = flow(self.config.layer_steps, start, through, fire)
        trace.outputs = None if out.static else out.h.to(self.leak.dtype)
        trace.logits = (out.h if out.static else out.h.mean(0)).to(self.leak.dtype)
        return trace

    def forward_ann(self, x: torch.Tensor, record: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Intermediate ANN: same weights, ReLU after every spiking layer. Returns logits, activations."""
        acts: list[torch.Tensor] = []

        def through(step: LayerStep, x: torch.Tensor, saved: Mapping[int, torch.Tensor]) -> torch.Tensor:
            return ann_layer(step, self.body[step.index], x, saved, self.training)

        def fire(step: LayerStep, k: int, x: torch.Tensor) -> torch.Tensor:
            x = F.relu(x)
            if record:
                acts.append(x)
            return x

        return flow(self.config.layer_steps, x, through, fire), acts

    # -- parameters --------------------------------------------------------------------------
    @torch.no_grad()
    def clamp_parameters_(self, min_threshold: float = 1e-3) -> None:
        """Keep the leak in (0, 1] and thresholds positive after an optimiser step."""
        self.leak.clamp_(min_threshold, 1.0)
        self.thresholds.clamp_(min=min_threshold)

    def weighted_modules(self) -> list[nn.Conv2d | nn.Linear]:
        """Every module with a weight, in layer order: Conv, Linear and shortcut projections."""
        weighted = [m.proj if isinstance(m, ResidualAdd) else m for m in self.body]
        return [m for m in weighted if isinstance(m, (nn.Conv2d, nn.Linear))]

    def synapses(self, index: int) -> nn.Conv2d | nn.Linear:
        """The module holding layer ``index``'s weight: a Conv's or Linear's own, a projection shortcut's 1x1 conv."""
        layer = self.body[index]
        module = layer.proj if isinstance(layer, ResidualAdd) else layer
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            raise TypeError(f"layer {index} ({self.config.layers[index].type}) has no weight")
        return module

    def with_config(self, **changes: Any) -> SpikingStudent:
        """A copy that shares nothing, with run settings changed (e.g. ``timesteps``)."""
        other = SpikingStudent(self.config.replace(**changes))
        other.load_state_dict(self.state_dict())
        return other


def check_parameters(student: SpikingStudent) -> None:
    """Refuse a student whose weights, leak or thresholds are not finite, or whose leak is outside (0, 1].

    Such a student (a diverged training run, a hand-edited file) computes nothing meaningful,
    and every export or comparison of it would be noise.
    """
    for name, tensor in student.state_dict().items():
        if not torch.isfinite(tensor).all():
            raise UserError(f"the student's {name!r} contains NaN or inf (a diverged or damaged run); retrain it")
    leak = float(student.leak.detach())
    if not 0 < leak <= 1:
        raise UserError(f"the student's leak {leak} is outside (0, 1]; retrain it")


def check_images(config: StudentConfig, images: torch.Tensor, labels: torch.Tensor | None = None) -> None:
    """Refuse data of another shape or with more classes than the student was built for."""
    expected = [int(s) for s in config.input_shape]
    if images.dim() != 4 or list(images.shape[1:]) != expected or len(images) == 0:
        raise UserError(
            f"the student expects images [N, {', '.join(map(str, expected))}] but the data gives "
            f"{list(images.shape)}; use the data set the student was trained on"
        )
    if labels is not None and len(labels) and int(labels.max()) >= config.num_classes:
        raise UserError(
            f"the data has label {int(labels.max())} but the student has {config.num_classes} classes; "
            "use the data set the student was trained on"
        )


# -- the layers of a run, per layer-spec type ----------------------------------------------------
@dataclass(frozen=True)
class _Signal:
    """What passes between two layers of ``SpikingStudent.run``: ``h`` is ``[B, ...]`` while ``static``
    (direct encoding before the first LIF: the same at every step), else ``[T, B, ...]``."""

    h: torch.Tensor
    static: bool

    def per_image(self, fn: Callable[[torch.Tensor], torch.Tensor], exact: bool) -> _Signal:
        """``fn`` on every image (on ``[T * B, ...]`` with time folded into the batch), in float64 when ``exact``."""
        h = self.h.double() if exact else self.h
        if self.static:
            return _Signal(fn(h), True)
        return _Signal(fn(h.flatten(0, 1)).unflatten(0, (h.shape[0], -1)), False)


def _double(tensor: torch.Tensor | None) -> torch.Tensor | None:
    return None if tensor is None else tensor.double()


def _run_conv(
    spec: Conv, module: nn.Conv2d, x: _Signal, saved: Mapping[int, _Signal], exact: bool, training: bool
) -> _Signal:
    """``W * s + b``; with ``exact`` in float64 on float64 weights."""
    if not exact:
        return x.per_image(module, exact)
    weight, bias = module.weight.double(), _double(module.bias)
    return x.per_image(lambda h: F.conv2d(h, weight, bias, stride=spec.stride, padding=spec.padding), exact)


def _run_linear(
    spec: Linear, module: nn.Linear, x: _Signal, saved: Mapping[int, _Signal], exact: bool, training: bool
) -> _Signal:
    if not exact:
        return x.per_image(module, exact)
    weight, bias = module.weight.double(), _double(module.bias)
    return x.per_image(lambda h: F.linear(h, weight, bias), exact)


def _run_module(
    spec: AvgPool | Flatten, module: nn.Module, x: _Signal, saved: Mapping[int, _Signal], exact: bool, training: bool
) -> _Signal:
    """Pooling and flattening: the module itself (exact on a float64 input)."""
    return x.per_image(module, exact)


def _run_shortcut(
    spec: Shortcut, module: ResidualAdd, x: _Signal, saved: Mapping[int, _Signal], exact: bool, training: bool
) -> _Signal:
    """The block's current plus its source (both ``[T, B, ...]``: a LIF lies behind each)."""
    source = saved[spec.source].h.flatten(0, 1)
    return x.per_image(lambda h: module(h, source, exact), exact)


def _run_dropout(
    spec: Dropout, module: nn.Module, x: _Signal, saved: Mapping[int, _Signal], exact: bool, training: bool
) -> _Signal:
    """Training: one mask per sample, shared by every time step; else the identity."""
    if not training or spec.p == 0:
        return x
    mask_shape = x.h.shape if x.static else x.h.shape[1:]
    mask = F.dropout(torch.ones(mask_shape, device=x.h.device, dtype=x.h.dtype), spec.p, True)
    return _Signal(x.h * mask, x.static)


# layer-spec type -> its step of ``SpikingStudent.run``
_RUN: dict[type, Callable[[Any, Any, _Signal, Mapping[int, _Signal], bool, bool], _Signal]] = {
    Conv: _run_conv,
    Linear: _run_linear,
    AvgPool: _run_module,
    Flatten: _run_module,
    Shortcut: _run_shortcut,
    Dropout: _run_dropout,
}

AnnNorm = Callable[[int, torch.Tensor], torch.Tensor]


def _no_norm(index: int, x: torch.Tensor) -> torch.Tensor:
    return x


def ann_layer(
    step: LayerStep,
    module: nn.Module,
    x: torch.Tensor,
    saved: Mapping[int, torch.Tensor],
    training: bool,
    norm: AnnNorm = _no_norm,
) -> torch.Tensor:
    """One layer of the intermediate ANN on ``x``; ``norm(i, current)`` is the batch norm of layer ``i``'s
    current (``training.intermediate``; the identity for the plain ANN and where a layer has none)."""
    return table_entry(_ANN, type(step.spec), "the intermediate ANN")(
        step.spec, step.index, module, x, saved, training, norm
    )


def _ann_module(
    spec: Conv | Linear | AvgPool | Flatten,
    i: int,
    module: nn.Module,
    x: torch.Tensor,
    saved: Mapping[int, torch.Tensor],
    training: bool,
    norm: AnnNorm,
) -> torch.Tensor:
    return norm(i, module(x))


def _ann_shortcut(
    spec: Shortcut,
    i: int,
    module: ResidualAdd,
    x: torch.Tensor,
    saved: Mapping[int, torch.Tensor],
    training: bool,
    norm: AnnNorm,
) -> torch.Tensor:
    """The block's current plus its source, through the (normed) projection when it has one."""
    source = saved[spec.source]
    return x + (source if module.proj is None else norm(i, module.proj(source)))


def _ann_dropout(
    spec: Dropout,
    i: int,
    module: nn.Module,
    x: torch.Tensor,
    saved: Mapping[int, torch.Tensor],
    training: bool,
    norm: AnnNorm,
) -> torch.Tensor:
    return F.dropout(x, spec.p, training)


# layer-spec type -> its step of the intermediate ANN (``forward_ann``, ``training.intermediate``)
_ANN: dict[type, Callable[[Any, int, Any, torch.Tensor, Mapping[int, torch.Tensor], bool, AnnNorm], torch.Tensor]] = {
    Conv: _ann_module,
    Linear: _ann_module,
    AvgPool: _ann_module,
    Flatten: _ann_module,
    Shortcut: _ann_shortcut,
    Dropout: _ann_dropout,
}
