"""Training methods as classes: the method lists come from the classes, and a new method is one class."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lasnn_deploy.models import build_student
from lasnn_deploy.student import SpikingStudent
from lasnn_deploy.training import config as config_module
from lasnn_deploy.training.methods import Method
from lasnn_deploy.training.objectives import FineTune


def test_the_method_lists_are_read_from_the_classes():
    assert config_module.METHODS == ("conversion", "hybrid", "kd", "hetero-kd", "lasnn", "lasnn-grad", "tssd")
    assert config_module.TEACHER_METHODS == {"kd", "hetero-kd", "lasnn", "lasnn-grad"}
    assert [n for n, m in Method.REGISTRY.items() if not m.fine_tunes] == ["conversion"]
    assert config_module.make_config(method="lasnn").needs_teacher
    assert not config_module.make_config(method="tssd").needs_teacher


def test_a_new_method_is_one_class(monkeypatch):
    monkeypatch.setattr(Method, "REGISTRY", dict(Method.REGISTRY))

    class Doubled(Method):
        """CE twice, with a bias head beside the student that the optimiser must see."""

        name = "doubled"

        def attach(self, ft):
            ft.offset = torch.nn.Parameter(torch.zeros(()))

        def loss(self, ft, x, y, seed):
            logits = ft.student.run(x, seed=seed).logits + ft.offset
            return 2 * F.cross_entropy(logits, y), logits

    assert Method.REGISTRY["doubled"] is Doubled
    torch.manual_seed(0)
    student = SpikingStudent(build_student("tiny", (1, 16, 16), 10, timesteps=2, width=0.5)).eval()
    objective = FineTune(student, "doubled", config_module.make_config())
    assert "offset" in dict(objective.named_parameters())
    x, y = torch.rand(3, 1, 16, 16), torch.randint(0, 10, (3,))
    loss, logits = objective(x, y)
    assert float(loss) == pytest.approx(2 * float(F.cross_entropy(student.run(x).logits, y)))


def test_a_teacher_method_without_a_teacher_is_refused():
    student = SpikingStudent(build_student("tiny", (1, 16, 16), 10, timesteps=2, width=0.5))
    with pytest.raises(ValueError, match="needs a teacher"):
        FineTune(student, "kd", config_module.make_config(method="kd"))
