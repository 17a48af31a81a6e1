"""``eval_mode`` restores each module's own training flag, also when the block raises."""

from __future__ import annotations

import pytest
from torch import nn

from lasnn_deploy.modes import eval_mode


def test_eval_mode_restores_each_flag_even_on_an_exception():
    training, frozen = nn.Dropout(0.5).train(), nn.Dropout(0.5).eval()
    with pytest.raises(RuntimeError, match="boom"):
        with eval_mode(training, frozen):
            assert not training.training and not frozen.training
            raise RuntimeError("boom")
    assert training.training and not frozen.training
