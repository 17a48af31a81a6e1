"""What each stage minimises, as modules whose ``forward(x, y, seed)`` returns ``(loss, logits)``.

One module per stage holds everything that is trained (so one optimiser, one checkpoint and, later,
one DistributedDataParallel wrapper cover it); a frozen teacher is held outside the module tree,
so it is neither trained nor saved with the student.

Each fine-tuning method is a class in ``methods.py``; ``FineTune`` holds the student, the method's
heads and the teacher, and asks the method for the loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..student import SpikingStudent
from .methods import Method


class TeacherStep(nn.Module):
    """Stage 1: the teacher ANN under CE."""

    def __init__(self, teacher: nn.Module):
        super().__init__()
        self.model = teacher

    def forward(self, x: torch.Tensor, y: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(x)[0]
        return F.cross_entropy(logits, y), logits


class FineTune(nn.Module):
    """Stage 4: the student SNN (and what its method trains beside it) under the method's loss."""

    def __init__(self, student: SpikingStudent, method: str, config, teacher: nn.Module | None = None):
        super().__init__()
        self.student = student
        self.method = Method.REGISTRY[method]()
        self.cfg = config
        self._teacher = [teacher]  # a list keeps the frozen teacher out of parameters and state_dict
        self.method.attach(self)
        if self.method.needs_teacher and teacher is None:
            raise ValueError(f"method {method} needs a teacher")

    @property
    def teacher(self) -> nn.Module | None:
        return self._teacher[0]

    def forward(self, x: torch.Tensor, y: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        return self.method.loss(self, x, y, seed)
