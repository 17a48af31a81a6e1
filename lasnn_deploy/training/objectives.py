"""What each stage minimises, as modules whose ``forward(x, y, seed)`` returns ``(loss, logits)``.

One module per stage holds everything that is trained (so one optimiser, one checkpoint and, later,
one DistributedDataParallel wrapper cover it); a frozen teacher is held outside the module tree,
so it is neither trained nor saved with the student.

Fine-tuning methods (all start from the converted student and use CE of the integrated output):

- ``hybrid`` (Rathi et al. 2020): CE only.
- ``kd`` (Hinton et al. 2015): ``(1 - w) CE + w * tau^2 KL`` with one temperature ``tau``.
- ``hetero-kd`` (Lee et al. 2021): the same with teacher temperature 4 and student temperature 1
  by default, so that the student reaches the teacher's soft distribution with 4x smaller logits,
  i.e. fewer output-driving spikes (see ``losses``).
- ``lasnn``: ``CE + beta/2 * sum_j L_AT,j`` at three levels: the first, middle and last spiking
  conv layers of the student (spikes averaged over time) against the teacher's low, mid and high
  feature maps, paired by rank; a student with fewer than three conv layers uses all it has,
  paired with the teacher's low and high (or only its low) maps.
- ``lasnn-grad``: the same levels, student SAMs against the teacher's input-gradient map.
- ``tssd`` (Zuo et al.): one run of ``T' > T`` steps (default ``2T``); its first ``T`` steps give
  the student's output ``z_T`` (exactly what a ``T``-step inference run computes), all ``T'`` steps
  the temporal teacher's ``z_T'``. Loss ``CE(z_T) + CE(z_T') + w tau^2 KL(p_T' || p_T) + w tau^2
  KL(p_T || p_h)``, targets detached, ``tau = 1`` by default. The teacher's CE keeps the ``T'``
  output worth learning from (without it, it fell below the student; docs/results.md). One weak
  classifier ``h`` (global average pooling of the middle attention level's spikes over the first
  ``T`` steps, then a Linear) at the intermediate stage, as in the paper, learns from the final
  output, and its gradient also reaches the layers below it (three heads, at low, mid and high,
  gave 0.46 points less on the CIFAR subset, standard error 0.34; docs/results.md). The head
  lives beside the student, never in it, and starts at zero, so it learns from the output before
  its gradient shapes the layers.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..student import Conv, Shortcut, SpikingStudent
from . import losses


def spread(n: int, k: int) -> list[int]:
    """Up to ``k`` indices spread evenly over ``range(n)``: first, middle, last."""
    return sorted({int(i) for i in np.round(np.linspace(0, n - 1, k))}) if n else []


def attention_levels(student: SpikingStudent) -> list[int]:
    """Indices (into the spiking layers) of the student's low, mid and high conv spike maps.

    In a residual student the output of a block (its ``Shortcut``'s LIF) is a conv map like any other.
    """
    cfg = student.config
    convs = [k for k, i in enumerate(cfg.spiking_layers) if isinstance(cfg.layers[i], (Conv, Shortcut))]
    if not convs:
        raise UserError(f"the {cfg.arch} student has no spiking conv layer to distil attention into; use kd or hybrid")
    return [convs[i] for i in spread(len(convs), 3)]


def teacher_levels(count: int) -> list[int]:
    """Which of the teacher's [low, mid, high] maps pair with ``count`` student levels."""
    return spread(3, count)


class TeacherStep(nn.Module):
    """Stage 1: the teacher ANN under CE."""

    def __init__(self, teacher: nn.Module):
        super().__init__()
        self.model = teacher

    def forward(self, x: torch.Tensor, y: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(x)[0]
        return F.cross_entropy(logits, y), logits


class FineTune(nn.Module):
    """Stage 4: the student SNN (and, for tssd, its weak classifiers) under a method's loss."""

    def __init__(self, student: SpikingStudent, method: str, config, teacher: nn.Module | None = None):
        super().__init__()
        self.student = student
        self.method = method
        self.cfg = config
        self._teacher = [teacher]  # a list keeps the frozen teacher out of parameters and state_dict
        if method in ("lasnn", "lasnn-grad"):
            self.levels = attention_levels(student)
        if method == "tssd":
            levels = attention_levels(student)
            self.head_level = levels[len(levels) // 2]  # the intermediate stage (the middle of low, mid, high)
            channels = student.config.shapes()[student.config.spiking_layers[self.head_level]][0]
            self.head = nn.Linear(channels, student.config.num_classes)
            nn.init.zeros_(self.head.weight)  # a random head would push random gradients into a converted student
            nn.init.zeros_(self.head.bias)
        if method in ("kd", "hetero-kd", "lasnn", "lasnn-grad") and teacher is None:
            raise ValueError(f"method {method} needs a teacher")

    @property
    def teacher(self) -> nn.Module | None:
        return self._teacher[0]

    def forward(self, x: torch.Tensor, y: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        if self.method == "tssd":
            return self._self_distillation(x, y, seed)
        trace = self.student.run(x, seed=seed, record=self.method in ("lasnn", "lasnn-grad"))
        logits = trace.logits
        ce = F.cross_entropy(logits, y)
        if self.method == "hybrid":
            return ce, logits
        if self.method in ("kd", "hetero-kd"):
            with torch.no_grad():
                teacher_logits = self.teacher(x)[0]
            tau_s, tau_t = (
                (cfg.temperature, cfg.temperature) if self.method == "kd" else (cfg.student_temperature, cfg.teacher_temperature)
            )
            kd = losses.kd_loss(logits, teacher_logits, tau_s, tau_t)
            return (1 - cfg.kd_weight) * ce + cfg.kd_weight * kd, logits
        if self.method == "lasnn":
            with torch.no_grad():
                feats = self.teacher(x)[1]
            student_maps = [losses.attention_map(trace.spikes[k].mean(0)) for k in self.levels]
            teacher_maps = [losses.attention_map(feats[j]) for j in teacher_levels(len(self.levels))]
            return ce + losses.attention_loss(student_maps, teacher_maps, cfg.beta), logits
        if self.method == "lasnn-grad":
            teacher_map = losses.input_gradient_map(self.teacher, x, y)
            student_maps = [losses.spike_activation_map(trace.spikes[k], cfg.sam_gamma) for k in self.levels]
            return ce + losses.attention_loss(student_maps, [teacher_map] * len(student_maps), cfg.beta), logits
        raise UserError(f"method {self.method!r} has no fine-tuning stage")

    def _self_distillation(self, x: torch.Tensor, y: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """TSSD from one run of ``T'`` steps: its first ``T`` steps are the student, all ``T'`` the teacher.

        The network is causal and the input of step ``t`` does not depend on the run's length, so
        the first ``T`` steps compute exactly what a ``T``-step run (inference) computes. The
        teacher's output also learns from the labels: a ``T'`` output left to drift while only the
        ``T``-step output is trained gets worse than the student (CIFAR subset, measured: 0.46 at
        ``T' = 16`` against 0.58 at ``T = 8``) and would teach it wrong.
        """
        cfg, T = self.cfg, self.student.config.timesteps
        trace = self.student.run(x, timesteps=cfg.tssd_timesteps or 2 * T, seed=seed, record=True)
        logits, teacher = trace.outputs[:T].mean(0), trace.logits
        tau, w = cfg.tssd_temperature, cfg.kd_weight
        temporal = losses.kd_loss(logits, teacher.detach(), tau, tau)
        weak = self.head(trace.spikes[self.head_level][:T].mean(0).mean((2, 3)))
        spatial = losses.kd_loss(weak, logits.detach(), tau, tau)
        ce = F.cross_entropy(logits, y) + F.cross_entropy(teacher, y)
        return ce + w * (temporal + spatial), logits
