"""Shared fixtures: small students built in code, so no test needs data files."""

from __future__ import annotations

import pytest
import torch

from lasnn_deploy.student import AvgPool, Conv, Dropout, Flatten, Linear, SpikingStudent, StudentConfig

torch.set_num_threads(2)


def make_student(encoding: str = "direct", reset: str = "hard", timesteps: int = 4, leak: float = 0.9,
                 seed: int = 0, input_shape=(1, 8, 8)) -> SpikingStudent:
    """conv-LIF-avgpool-conv-LIF-avgpool-flatten-linear-LIF-linear with weights that fire 5-40%."""
    c, h, w = input_shape
    layers = (Conv(c, 4, 3, 1, 1), AvgPool(2), Dropout(0.1), Conv(4, 6, 3, 1, 1), AvgPool(2), Flatten(),
              Linear(6 * (h // 4) * (w // 4), 12), Linear(12, 5))
    cfg = StudentConfig("test", input_shape, 5, layers, timesteps=timesteps, encoding=encoding, reset=reset)
    torch.manual_seed(seed)
    student = SpikingStudent(cfg, leak=leak, thresholds=[0.3, 0.2, 0.2])
    with torch.no_grad():
        for m in student.weighted_modules():
            m.weight.mul_(2.0 / 6**0.5)  # PyTorch-default scale: weights that fire 5-40%
    return student.eval()


@pytest.fixture
def student() -> SpikingStudent:
    return make_student()
