"""Training methods, one class each: what a method needs (a teacher, heads beside the student,
recorded spikes) and the loss it computes. Subclassing ``Method`` with a ``name`` registers it;
``config.METHODS`` and ``config.TEACHER_METHODS`` are read from the registry.

Fine-tuning methods (all start from the converted student and use CE of the integrated output, or
with ``--per-step-loss`` the mean of every step's CE, as in TET; ``label_loss``):

- ``conversion``: no fine-tuning; the converted student is the result.
- ``hybrid`` (Rathi et al. 2020): CE only.
- ``kd`` (Hinton et al. 2015): ``(1 - w) CE + w * tau^2 KL`` with one temperature ``tau``.
- ``hetero-kd`` (Lee et al. 2021): the same with teacher temperature 4 and student temperature 1
  by default, so that the student reaches the teacher's soft distribution with 4x smaller logits,
  i.e. fewer output-driving spikes (see ``losses``).
- ``lasnn``: ``CE + beta/2 * sum_j L_AT,j`` at three levels: the first, middle and last spiking
  conv layers of the student (spikes averaged over time) against the teacher's low, mid and high
  feature maps, paired by rank; a student with fewer than three conv layers uses all it has,
  paired with the teacher's low and high (or only its low) maps. With ``--teacher ann`` the teacher is
  the intermediate ANN itself and each level pairs with the same layer's ANN activation.
- ``lasnn-grad``: the same levels, student SAMs against the teacher's input-gradient map.
- ``tssd`` (Zuo et al.): one run of ``T' > T`` steps (default ``2T``); its first ``T`` steps give
  the student's output ``z_T`` (exactly what a ``T``-step inference run computes), all ``T'`` steps
  the temporal teacher's ``z_T'``. Loss ``CE(z_T) + CE(z_T') + w tau^2 KL(p_T' || p_T) + w tau^2
  KL(p_T || p_h)``, targets detached, ``tau = 1`` by default. The teacher's CE keeps the ``T'``
  output worth learning from (without it, it fell below the student; docs/results.md). One weak
  classifier ``h`` (global average pooling of the middle attention level's spikes over the first
  ``T`` steps, then a Linear) at the intermediate stage, as in the paper, learns from the final
  output, and its gradient also reaches the layers below it (three heads instead of one: see
  docs/results.md). The head lives beside the student, never in it, and starts at zero, so it
  learns from the output before its gradient shapes the layers.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..modes import eval_mode
from ..student import SpikingStudent, Trace
from . import losses
from .intermediate import AnnTeacher

Step = tuple[torch.Tensor, torch.Tensor]  # (loss, logits)


class FineTune(Protocol):
    """What a method reads of the module it trains in (``objectives.FineTune``, which imports this
    module): the student, the training config, the frozen teacher; ``attach`` adds its heads to it
    with ``add_module``, so that they are trained and checkpointed with the student."""

    student: SpikingStudent
    cfg: Any

    @property
    def teacher(self) -> nn.Module | None: ...

    def add_module(self, name: str, module: nn.Module | None) -> None: ...


def label_loss(ft: FineTune, trace: Trace, y: torch.Tensor) -> torch.Tensor:
    """CE of the student's output: of the mean over steps, or of every step with ``--per-step-loss`` (TET)."""
    if ft.cfg.per_step_loss and trace.outputs is not None:
        return losses.per_step_cross_entropy(trace.outputs, y)
    return F.cross_entropy(trace.logits, y)


def teacher_of(ft: FineTune) -> nn.Module:
    """The frozen teacher of a method that needs one (``objectives.FineTune`` refuses to start without it)."""
    teacher = ft.teacher
    if teacher is None:
        raise ValueError("this method needs a teacher")
    return teacher


def spread(n: int, k: int) -> list[int]:
    """Up to ``k`` indices spread evenly over ``range(n)``: first, middle, last."""
    return sorted({int(i) for i in np.round(np.linspace(0, n - 1, k))}) if n else []


def attention_levels(student: SpikingStudent) -> list[int]:
    """Indices (into the spiking layers) of the student's low, mid and high conv spike maps.

    In a residual student the output of a block (its ``Shortcut``'s LIF) is a conv map like any other.
    """
    cfg = student.config
    convs = [
        step.lif for step in cfg.layer_steps if step.lif is not None and len(step.out_shape) == 3
    ]  # [C, H, W] maps
    if not convs:
        raise UserError(f"the {cfg.arch} student has no spiking conv layer to distil attention into; use kd or hybrid")
    return [convs[i] for i in spread(len(convs), 3)]


def teacher_maps(teacher: nn.Module, feats: list[torch.Tensor], levels: list[int]) -> list[torch.Tensor]:
    """The teacher's feature maps paired with the student's attention ``levels``: the same LIF layers
    of the intermediate ANN (``--teacher ann``), or another teacher's low, mid and high maps by rank."""
    if isinstance(teacher, AnnTeacher):
        return [feats[k] for k in levels]
    return [feats[j] for j in spread(len(feats), len(levels))]


class Method:
    """A training method after conversion. A subclass with a ``name`` is registered in ``REGISTRY``.

    ``needs_teacher``: the pipeline trains (or loads) the teacher ANN for it. ``fine_tunes``: False
    for a method whose result is the converted student. ``attach`` adds what the method trains
    beside the student (heads) to the ``FineTune`` module, so one optimiser and one checkpoint cover
    them, and keeps what it reads (attention levels) on the method itself (one instance per
    ``FineTune``); ``loss`` computes ``(loss, logits)`` for a batch.
    """

    name: ClassVar[str]
    needs_teacher: ClassVar[bool] = False
    fine_tunes: ClassVar[bool] = True
    REGISTRY: ClassVar[dict[str, type[Method]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            Method.REGISTRY[cls.name] = cls

    def attach(self, ft: FineTune) -> None:
        """Nothing beside the student by default."""

    def prepare(self, ft: FineTune, x: torch.Tensor) -> dict[str, float]:
        """Adjust the converted student on training images ``x`` before fine-tuning; what was done."""
        return {}

    def loss(self, ft: FineTune, x: torch.Tensor, y: torch.Tensor, seed: int) -> Step:
        raise UserError(f"method {self.name!r} has no fine-tuning stage")


class Conversion(Method):
    name, fine_tunes = "conversion", False


class Hybrid(Method):
    name = "hybrid"

    def loss(self, ft: FineTune, x: torch.Tensor, y: torch.Tensor, seed: int) -> Step:
        trace = ft.student.run(x, seed=seed)
        return label_loss(ft, trace, y), trace.logits


class KD(Method):
    name, needs_teacher = "kd", True

    def temperatures(self, cfg: Any) -> tuple[float, float]:
        """(student, teacher) softmax temperatures."""
        return cfg.temperature, cfg.temperature

    @torch.no_grad()
    def prepare(self, ft: FineTune, x: torch.Tensor) -> dict[str, float]:
        """Scale the readout so that ``logits / T_student`` spread as ``teacher / T_teacher`` (docs/semantics.md).

        A converted student's logits are the readout's mean current, often several times narrower
        than the teacher's; the KD term then dwarfs cross-entropy and fine-tuning spends itself on
        the scale. Multiplying the readout's weights and bias by one positive number changes no
        spike and no prediction.
        """
        with eval_mode(ft.student):
            student_logits = ft.student.run(x, seed=0).logits
        teacher_logits = teacher_of(ft)(x)[0]
        spread = float(student_logits.std(1).mean())
        student_t, teacher_t = self.temperatures(ft.cfg)
        target = float(teacher_logits.std(1).mean()) * student_t / teacher_t
        scale = target / spread if spread > 0 else 1.0
        readout = ft.student.weighted_modules()[-1]
        assert isinstance(readout, (nn.Conv2d, nn.Linear))  # what weighted_modules holds
        readout.weight.mul_(scale)
        if readout.bias is not None:
            readout.bias.mul_(scale)
        return {"readout_scale": scale, "student_logit_std": spread}

    def loss(self, ft: FineTune, x: torch.Tensor, y: torch.Tensor, seed: int) -> Step:
        cfg = ft.cfg
        trace = ft.student.run(x, seed=seed)
        with torch.no_grad():
            teacher_logits = teacher_of(ft)(x)[0]
        kd = losses.kd_loss(trace.logits, teacher_logits, *self.temperatures(cfg))
        return (1 - cfg.kd_weight) * label_loss(ft, trace, y) + cfg.kd_weight * kd, trace.logits


class HeteroKD(KD):
    name = "hetero-kd"

    def temperatures(self, cfg: Any) -> tuple[float, float]:
        return cfg.student_temperature, cfg.teacher_temperature


class LaSNN(Method):
    name, needs_teacher = "lasnn", True
    levels: list[int]  # the student's spiking layers distilled into (attention_levels)

    def attach(self, ft: FineTune) -> None:
        self.levels = attention_levels(ft.student)

    def loss(self, ft: FineTune, x: torch.Tensor, y: torch.Tensor, seed: int) -> Step:
        trace = ft.student.run(x, seed=seed, record=True)
        with torch.no_grad():
            teacher = teacher_of(ft)
            feats = teacher(x)[1]
        student_maps = [losses.attention_map(trace.spikes[k].mean(0)) for k in self.levels]
        targets = [losses.attention_map(f) for f in teacher_maps(teacher, feats, self.levels)]
        ce = label_loss(ft, trace, y)
        return ce + losses.attention_loss(student_maps, targets, ft.cfg.beta), trace.logits


class LaSNNGrad(LaSNN):
    name = "lasnn-grad"

    def loss(self, ft: FineTune, x: torch.Tensor, y: torch.Tensor, seed: int) -> Step:
        trace = ft.student.run(x, seed=seed, record=True)
        teacher_map = losses.input_gradient_map(teacher_of(ft), x, y)
        student_maps = [losses.spike_activation_map(trace.spikes[k], ft.cfg.sam_gamma) for k in self.levels]
        ce = label_loss(ft, trace, y)
        return ce + losses.attention_loss(student_maps, [teacher_map] * len(student_maps), ft.cfg.beta), trace.logits


class TSSD(Method):
    name = "tssd"
    head_level: int  # the spiking layer the weak classifier reads
    head: nn.Linear  # the weak classifier, FineTune's ``head``

    def attach(self, ft: FineTune) -> None:
        levels = attention_levels(ft.student)
        self.head_level = levels[len(levels) // 2]  # the intermediate stage (the middle of low, mid, high)
        cfg = ft.student.config
        self.head = nn.Linear(cfg.shapes()[cfg.spiking_layers[self.head_level]][0], cfg.num_classes)
        nn.init.zeros_(self.head.weight)  # a random head would push random gradients into a converted student
        nn.init.zeros_(self.head.bias)
        ft.add_module("head", self.head)

    def loss(self, ft: FineTune, x: torch.Tensor, y: torch.Tensor, seed: int) -> Step:
        """TSSD from one run of ``T'`` steps: its first ``T`` steps are the student, all ``T'`` the teacher.

        The network is causal and the input of step ``t`` does not depend on the run's length, so
        the first ``T`` steps compute exactly what a ``T``-step run (inference) computes. The
        teacher's output also learns from the labels: a ``T'`` output left to drift while only the
        ``T``-step output is trained gets worse than the student (docs/results.md) and would teach it wrong.
        """
        cfg, T = ft.cfg, ft.student.config.timesteps
        trace = ft.student.run(x, timesteps=cfg.tssd_timesteps or 2 * T, seed=seed, record=True)
        assert trace.outputs is not None  # per-step outputs: the student has LIF layers
        logits, teacher = trace.outputs[:T].mean(0), trace.logits
        tau, w = cfg.tssd_temperature, cfg.kd_weight
        temporal = losses.kd_loss(logits, teacher.detach(), tau, tau)
        weak = self.head(trace.spikes[self.head_level][:T].mean(0).mean((2, 3)))
        spatial = losses.kd_loss(weak, logits.detach(), tau, tau)
        ce = F.cross_entropy(logits, y) + F.cross_entropy(teacher, y)
        return ce + w * (temporal + spatial), logits


METHODS: tuple[str, ...] = tuple(Method.REGISTRY)
TEACHER_METHODS: frozenset[str] = frozenset(n for n, m in Method.REGISTRY.items() if m.needs_teacher)
