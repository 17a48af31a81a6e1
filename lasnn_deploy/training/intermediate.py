"""The intermediate ANN as it trains: the student's weights, batch norm, and a ReLU or a QCFS activation.

Three kinds (``--intermediate``):

- ``plain``: the LaSNN paper's student, ``a = ReLU(W a')``, no bias, no batch norm.
- ``bn``: ``a = ReLU(BN(W a' + b))`` with a batch norm after every Conv and hidden Linear (and after
  a residual block's projection shortcut). At conversion each is folded into its layer:
  ``W <- W * g / s``, ``b <- (b - mu) * g / s + beta`` with ``s = sqrt(var + eps)`` (eval-mode
  statistics), per output channel; a projection's shift joins the bias of the conv whose block it
  closes (the two currents are summed before the LIF). Batch norm is what lets the deep plain
  students (vgg16, resnet12) train at all at this scale.
- ``qcfs``: ``bn`` with the clip-floor-shift activation of Bu et al. (ICLR 2022) in place of ReLU:
  ``a = lam / L * clip(floor(z L / lam + 1/2), 0, L)``, one learned clip ``lam`` per LIF layer and
  ``L`` levels; the floor passes the gradient straight through. The clip is the layer's largest
  activation, so it gives the threshold at conversion (``conversion.clip_thresholds``) with no
  percentile to choose, and the ANN already speaks in ``L`` rate levels, which ``T`` near ``L``
  spike counts reproduce. The shift ``1/2`` is the SNN's half-threshold starting charge; this
  student starts at ``u = 0``, so conversion gives it as ``theta / (2T)`` added to the bias every step
  (the same charge after ``T`` steps).
- ``rate``: ``bn`` with the hard-reset neuron's exact rate as the activation: a neuron with threshold
  ``lam`` fed the constant current ``z > 0`` from ``u = 0`` fires first when ``k z > lam``, at
  ``k = floor(lam / z) + 1``, resets to zero and repeats, so it fires ``floor(T / k)`` times in ``T``
  steps and ``a = lam / T * floor(T / (floor(lam / z) + 1))`` (0 for ``z <= 0``). QCFS's levels above
  ``lam / 2`` all become ``T / 2`` spikes under a hard reset; this activation is what the hard-reset
  neuron really computes, so the ANN learns around it. The gradient is that of ``clamp(z, 0, lam)``
  (straight through). A network started on it is easily dead (every unit below ``lam``), so the first
  ``warmup_steps`` optimiser steps train with QCFS (``L = T``) and the same clips; evaluation always
  uses the rate. The clips give the thresholds as for ``qcfs``, with no shift (the neuron starts at 0).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from ..student import (
    AvgPool,
    Conv,
    Dropout,
    Flatten,
    LayerStep,
    Linear,
    Shortcut,
    SpikingStudent,
    ann_layer,
    flow,
    table_entry,
)

INTERMEDIATES = ("plain", "bn", "qcfs", "rate")
CLIPPED = ("qcfs", "rate")  # kinds whose learned clips give the thresholds
CLIP_INIT = 4.0  # the starting clip; Bu et al. start from 8 on CIFAR with batch norm, our smaller nets fire less


def qcfs(z: torch.Tensor, clip: torch.Tensor, levels: int) -> torch.Tensor:
    """``clip / L * clamp(floor(z L / clip + 1/2), 0, L)``; the floor's gradient is the identity's."""
    q = z * levels / clip + 0.5
    q = q + (torch.floor(q) - q).detach()
    return torch.clamp(q, 0, levels) * clip / levels


def hard_reset_rate(z: torch.Tensor, clip: torch.Tensor, timesteps: int) -> torch.Tensor:
    """``clip / T * floor(T / (floor(clip / z) + 1))`` for ``z > 0``, else 0; gradient of ``clamp(z, 0, clip)``.

    The spike count of an integrate-and-fire neuron with threshold ``clip``, hard reset to 0 and the
    constant input ``z`` over ``timesteps`` steps, times ``clip / T`` (module docstring, ``rate``).
    """
    positive = z > 0
    steps_to_fire = torch.floor(clip / torch.where(positive, z, torch.ones_like(z))) + 1
    exact = torch.where(positive, torch.floor(timesteps / steps_to_fire), torch.zeros_like(z)) * clip / timesteps
    smooth = torch.minimum(F.relu(z), clip)
    return smooth + (exact - smooth).detach()


def _conv_norm(spec: Conv) -> nn.Module | None:
    return nn.BatchNorm2d(spec.out_channels)


def _linear_norm(spec: Linear) -> nn.Module | None:
    return nn.BatchNorm1d(spec.out_features)


def _shortcut_norm(spec: Shortcut) -> nn.Module | None:
    """A projection's current is normed like a conv's; an identity shortcut adds the spikes as they are."""
    return nn.BatchNorm2d(spec.out_channels) if spec.projects else None


def _no_norm(spec: AvgPool | Flatten | Dropout) -> nn.Module | None:
    return None


# layer-spec type -> the batch norm of its current (None: the layer has none)
_NORMS: dict[type, Callable[[Any], nn.Module | None]] = {
    Conv: _conv_norm,
    Linear: _linear_norm,
    Shortcut: _shortcut_norm,
    AvgPool: _no_norm,
    Flatten: _no_norm,
    Dropout: _no_norm,
}


class IntermediateAnn(nn.Module):
    """``forward(x) -> logits``: the student's layers as an ANN of the given kind (module docstring)."""

    steps: torch.Tensor  # the buffer of optimiser steps taken; kind "rate" only

    def __init__(self, student: SpikingStudent, kind: str = "plain", levels: int | None = None, warmup_steps: int = 0):
        super().__init__()
        cfg = student.config
        self.student, self.kind, self.levels = student, kind, levels or cfg.timesteps
        self.warmup_steps = warmup_steps
        self.norms = nn.ModuleDict()
        if kind != "plain":
            last = max(i for i, l in enumerate(cfg.layers) if l.has_synapses)  # the output layer: no norm
            for i, spec in enumerate(cfg.layers[:last]):
                norm = table_entry(_NORMS, type(spec), "the batch-normed intermediate ANN")(spec)
                if norm is not None:
                    self.norms[str(i)] = norm
        lifs = len(cfg.spiking_layers)
        self.clips = nn.Parameter(torch.full((lifs,), CLIP_INIT)) if kind in CLIPPED else None
        if kind == "rate":  # optimiser steps taken, in the state so that a resumed run warms up as it would have
            self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def trained_parameters(self) -> list[nn.Parameter]:
        """The weights, biases, batch-norm affines and clips (not the SNN's leak and thresholds)."""
        params = [p for m in self.student.weighted_modules() for p in m.parameters()]
        return params + list(self.norms.parameters()) + ([self.clips] if self.clips is not None else [])

    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None = None,
        seed: int = 0,
        record: dict[int, torch.Tensor] | None = None,
    ):
        """Logits (with ``y``: cross-entropy and logits); ``record`` receives each LIF layer's activation."""
        body = self.student.body

        def through(step: LayerStep, x: torch.Tensor, saved: Mapping[int, torch.Tensor]) -> torch.Tensor:
            return ann_layer(step, body[step.index], x, saved, self.training, self._normed)

        def fire(step: LayerStep, k: int, x: torch.Tensor) -> torch.Tensor:
            x = self._activation(x, k)
            if record is not None:
                record[k] = x.detach()
            return x

        x = flow(self.student.config.layer_steps, x, through, fire)
        if y is None:
            return x
        return F.cross_entropy(x, y), x

    def _activation(self, x: torch.Tensor, k: int) -> torch.Tensor:
        if self.clips is None:
            return F.relu(x)
        if self.kind == "rate" and not (self.training and int(self.steps) < self.warmup_steps):
            return hard_reset_rate(x, self.clips[k], self.student.config.timesteps)
        return qcfs(x, self.clips[k], self.levels)

    def _normed(self, i: int, x: torch.Tensor) -> torch.Tensor:
        norm = self.norms[str(i)] if str(i) in self.norms else None
        return x if norm is None else norm(x)

    @torch.no_grad()
    def clamp_parameters_(self) -> None:
        """Keep every clip positive after an optimiser step (and count the step for the warm-up)."""
        if self.clips is not None:
            self.clips.clamp_(min=1e-3)
        if self.kind == "rate":
            self.steps += 1


class AnnTeacher(nn.Module):
    """The intermediate ANN as the teacher (``--teacher ann``): its logits, and the activation of every
    LIF layer in order, which pairs with the student's spikes layer for layer (same shapes, and the
    rate the converted neuron is meant to fire). Frozen, in eval mode (the rate activation)."""

    def __init__(self, ann: IntermediateAnn):
        super().__init__()
        self.ann = ann
        self.eval().requires_grad_(False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        record: dict[int, torch.Tensor] = {}
        logits = self.ann(x, record=record)
        return logits, [record[k] for k in sorted(record)]


@torch.no_grad()
def fold_batch_norm(ann: IntermediateAnn, student: SpikingStudent) -> None:
    """Write ``ann``'s weights, with every batch norm folded in (eval statistics), into ``student``.

    ``student`` must be built with a bias on every layer that has a batch norm (``bias=True``); with
    no batch norm the weights are copied as they are. Afterwards ``student.forward_ann`` computes
    what ``ann`` computes in eval mode, ReLU for ReLU (up to rounding).
    """
    student.load_state_dict(ann.student.state_dict())
    for i in sorted(int(k) for k in ann.norms):  # a block's conv before its shortcut's projection
        scale, shift = _scale_shift(cast(nn.modules.batchnorm._BatchNorm, ann.norms[str(i)]))
        synapses = student.synapses(i)
        synapses.weight.mul_(scale.view(-1, *[1] * (synapses.weight.dim() - 1)))
        if student.config.layers[i].joins_previous:  # a projection: both currents meet before the block's LIF
            _bias(student, i - 1).add_(shift)
        else:
            _bias(student, i).mul_(scale).add_(shift)


def _scale_shift(norm: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """``g / s`` and ``beta - mu g / s`` of a batch norm's eval-mode affine map (``s = sqrt(var + eps)``)."""
    if norm.running_mean is None or norm.running_var is None:
        raise ValueError("a batch norm without running statistics cannot be folded")
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    return scale, norm.bias - norm.running_mean * scale


def _bias(student: SpikingStudent, index: int) -> torch.Tensor:
    bias = student.synapses(index).bias
    if bias is None:
        raise ValueError(f"layer {index} has a batch norm to fold but no bias; build the student with bias=True")
    return bias
