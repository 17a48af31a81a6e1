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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..student import Conv, Dropout, Linear, Shortcut, SpikingStudent

INTERMEDIATES = ("plain", "bn", "qcfs")
CLIP_INIT = 4.0  # the starting clip; Bu et al. start from 8 on CIFAR with batch norm, our smaller nets fire less


def qcfs(z: torch.Tensor, clip: torch.Tensor, levels: int) -> torch.Tensor:
    """``clip / L * clamp(floor(z L / clip + 1/2), 0, L)``; the floor's gradient is the identity's."""
    q = z * levels / clip + 0.5
    q = q + (torch.floor(q) - q).detach()
    return torch.clamp(q, 0, levels) * clip / levels


def _norm(spec: Conv | Linear | Shortcut) -> nn.Module:
    if isinstance(spec, Linear):
        return nn.BatchNorm1d(spec.out_features)
    return nn.BatchNorm2d(spec.out_channels)


class IntermediateAnn(nn.Module):
    """``forward(x) -> logits``: the student's layers as an ANN of the given kind (module docstring)."""

    def __init__(self, student: SpikingStudent, kind: str = "plain", levels: int | None = None):
        super().__init__()
        cfg = student.config
        self.student, self.kind, self.levels = student, kind, levels
        self.norms = nn.ModuleDict()
        if kind != "plain":
            last = max(i for i, l in enumerate(cfg.layers) if isinstance(l, (Conv, Linear)))
            for i, spec in enumerate(cfg.layers):
                if isinstance(spec, (Conv, Linear)) and i != last or isinstance(spec, Shortcut) and spec.projects:
                    self.norms[str(i)] = _norm(spec)
        lifs = len(cfg.spiking_layers)
        self.clips = nn.Parameter(torch.full((lifs,), CLIP_INIT)) if kind == "qcfs" else None
        self._lif_index = {layer: k for k, layer in enumerate(cfg.spiking_layers)}

    def trained_parameters(self) -> list[nn.Parameter]:
        """The weights, biases, batch-norm affines and clips (not the SNN's leak and thresholds)."""
        params = [p for m in self.student.weighted_modules() for p in m.parameters()]
        return params + list(self.norms.parameters()) + ([self.clips] if self.clips is not None else [])

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, seed: int = 0):
        cfg, body = self.student.config, self.student.body
        sources, saved = cfg.shortcut_sources, {}
        for i, (spec, module) in enumerate(zip(cfg.layers, body, strict=True)):
            if isinstance(spec, Dropout):
                x = F.dropout(x, spec.p, self.training)
                continue
            if isinstance(spec, Shortcut):
                source = saved[spec.source]
                x = x + (source if module.proj is None else self._normed(i, module.proj(source)))
            else:
                x = self._normed(i, module(x))
            k = self._lif_index.get(i)
            if k is not None:
                x = F.relu(x) if self.clips is None else qcfs(x, self.clips[k], self.levels)
            if i in sources:
                saved[i] = x
        if y is None:
            return x
        return F.cross_entropy(x, y), x

    def _normed(self, i: int, x: torch.Tensor) -> torch.Tensor:
        norm = self.norms[str(i)] if str(i) in self.norms else None
        return x if norm is None else norm(x)

    @torch.no_grad()
    def clamp_parameters_(self) -> None:
        """Keep every clip positive after an optimiser step."""
        if self.clips is not None:
            self.clips.clamp_(min=1e-3)


@torch.no_grad()
def fold_batch_norm(ann: IntermediateAnn, student: SpikingStudent) -> None:
    """Write ``ann``'s weights, with every batch norm folded in (eval statistics), into ``student``.

    ``student`` must be built with a bias on every layer that has a batch norm (``bias=True``); with
    no batch norm the weights are copied as they are. Afterwards ``student.forward_ann`` computes
    what ``ann`` computes in eval mode, ReLU for ReLU (up to rounding).
    """
    student.load_state_dict(ann.student.state_dict())
    cfg = student.config
    for i in sorted(int(k) for k in ann.norms):  # a block's conv before its shortcut's projection
        norm = ann.norms[str(i)]
        scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
        shift = norm.bias - norm.running_mean * scale
        if isinstance(cfg.layers[i], Shortcut):
            proj = student.body[i].proj
            proj.weight.mul_(scale.view(-1, 1, 1, 1))
            student.body[i - 1].bias.add_(shift)  # the block's conv: both currents meet before the LIF
            continue
        module = student.body[i]
        module.weight.mul_(scale.view(-1, *[1] * (module.weight.dim() - 1)))
        module.bias.mul_(scale).add_(shift)
