"""Shared fixtures (the helpers they build on are in helpers.py)."""

from __future__ import annotations

import pytest
import torch
from helpers import make_student

from lasnn_deploy.student import SpikingStudent

torch.set_num_threads(2)


@pytest.fixture
def one_torch_thread():
    """One torch thread: two threads on a shared, busy 2-core machine ran the small batches of the
    export tests much slower, and the float64 reference is the slow part."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def student() -> SpikingStudent:
    return make_student()
