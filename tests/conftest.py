"""Shared fixtures (the helpers they build on are in helpers.py)."""

from __future__ import annotations

import pytest
import torch

from helpers import make_student
from lasnn_deploy.student import SpikingStudent

torch.set_num_threads(2)


@pytest.fixture
def student() -> SpikingStudent:
    return make_student()
