"""``SpikingStudent``: the PyTorch module built from a ``StudentConfig``, holding the weights, the
shared leak and the per-layer thresholds, and the checks every consumer runs on a student and its data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..inputs import model_input
from ..neurons import lif_multistep
from .config import StudentConfig, check_timesteps
from .layers import Conv, Dropout, LayerSpec, Linear, ResidualAdd, Shortcut


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
        self._lif_index = {layer: k for k, layer in enumerate(config.spiking_layers)}
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
        static = given.spikes is None
        h, T = (given.images, T) if static else (given.spikes, given.spikes.shape[0])
        trace = Trace(logits=torch.empty(0), input_spikes=None if static else h)
        sources, saved = self.config.shortcut_sources, {}
        for i, (spec, module) in enumerate(zip(self.config.layers, self.body, strict=True)):
            if isinstance(spec, Dropout):
                h = self._dropout(h, spec.p, static)
                continue
            if exact:
                h = h.double()
            if isinstance(spec, Shortcut):  # source and current are both [T, B, ...]: a LIF lies behind each
                h = module(h.flatten(0, 1), saved[spec.source].flatten(0, 1), exact).unflatten(0, (T, -1))
            elif static:
                h = self._synapses(spec, module, h, exact)
            else:
                h = self._synapses(spec, module, h.flatten(0, 1), exact).unflatten(0, (T, -1))
            k = self._lif_index.get(i)
            if k is not None:
                if static:
                    h, static = h.unsqueeze(0).expand(T, *h.shape), False
                h = h.to(self.leak.dtype)
                if currents:
                    trace.currents.append(h)
                h = lif_multistep(h, self.leak, self.thresholds[k], self.config.reset)
                if record:
                    trace.spikes.append(h)
            if i in sources:
                saved[i] = h
        trace.outputs = None if static else h.to(self.leak.dtype)
        trace.logits = (h if static else h.mean(0)).to(self.leak.dtype)
        return trace

    @staticmethod
    def _synapses(spec: LayerSpec, module: nn.Module, h: torch.Tensor, exact: bool) -> torch.Tensor:
        """One layer's synaptic operation plus its bias ``W*s + b``; in float64 with float64 weights when ``exact``."""
        if not exact or not isinstance(spec, (Conv, Linear)):
            return module(h)
        weight = module.weight.double()
        bias = None if module.bias is None else module.bias.double()
        if isinstance(spec, Conv):
            return F.conv2d(h, weight, bias, stride=spec.stride, padding=spec.padding)
        return F.linear(h, weight, bias)

    def _dropout(self, h: torch.Tensor, p: float, static: bool) -> torch.Tensor:
        if not self.training or p == 0:
            return h
        mask_shape = h.shape if static else h.shape[1:]
        mask = F.dropout(torch.ones(mask_shape, device=h.device, dtype=h.dtype), p, True)
        return h * mask

    def forward_ann(self, x: torch.Tensor, record: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Intermediate ANN: same weights, ReLU after every spiking layer. Returns logits, activations."""
        acts, sources, saved = [], self.config.shortcut_sources, {}
        for i, (spec, module) in enumerate(zip(self.config.layers, self.body, strict=True)):
            if isinstance(spec, Dropout):
                x = F.dropout(x, spec.p, self.training)
                continue
            x = module(x, saved[spec.source]) if isinstance(spec, Shortcut) else module(x)
            if i in self._lif_index:
                x = F.relu(x)
                if record:
                    acts.append(x)
            if i in sources:
                saved[i] = x
        return x, acts

    # -- parameters --------------------------------------------------------------------------
    @torch.no_grad()
    def clamp_parameters_(self, min_threshold: float = 1e-3) -> None:
        """Keep the leak in (0, 1] and thresholds positive after an optimiser step."""
        self.leak.clamp_(min_threshold, 1.0)
        self.thresholds.clamp_(min=min_threshold)

    def weighted_modules(self) -> list[nn.Module]:
        """Every module with a weight, in layer order: Conv, Linear and shortcut projections."""
        weighted = [m.proj if isinstance(m, ResidualAdd) else m for m in self.body]
        return [m for m in weighted if isinstance(m, (nn.Conv2d, nn.Linear))]

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
