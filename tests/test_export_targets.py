"""The export-target type: the registry, the suffixes each target declares, its options, and the
shared checks that ``Target.export`` runs once before a target's own step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import model_in
from lasnn_deploy.exporters import TARGETS, RunResult, Target, export, get_target, target_of_file
from lasnn_deploy.exporters.lava import LavaTarget

from lasnn_deploy.errors import UserError
from lasnn_deploy.inputs import InputSpec
from lasnn_deploy.neurons import Encoding


@pytest.mark.parametrize(
    "name,target", [("a.onnx", "onnx"), ("a.nir", "nir"), ("a.h5", "lava"), ("a.HDF5", "lava"), ("a.net", "lava")]
)
def test_each_target_declares_the_suffixes_it_reads(name, target):
    assert target_of_file(name) == target


def test_an_unknown_suffix_or_option_is_one_clear_error():
    with pytest.raises(UserError, match=r"cannot tell the target of a\.txt.*\.onnx.*\.net"):
        target_of_file("a.txt")
    with pytest.raises(UserError, match="the onnx target has no option weight_percentile"):
        get_target("onnx", weight_percentile=90)
    assert get_target("lava", weight_percentile=90).settings == {"weight_percentile": 90}
    assert LavaTarget().settings == LavaTarget.options


class Toy(Target):
    """A target that writes the logits of the student and counts the calls of its own steps."""

    name, suffixes, options = "toy", (".toy", ".npy"), {"scale": 1.0}
    calls: list[str] = []

    def _check(self, student):
        self.calls.append("check")
        if self.settings["scale"] <= 0:
            raise UserError("scale must be positive")

    def _export(self, student, path):
        self.calls.append("export")
        path.write_bytes(b"toy")
        return path

    def _input_spec(self, path):
        return InputSpec(Encoding.DIRECT, 4, (1, 8, 8))

    def _run(self, path, x):
        return RunResult(logits=np.full((x.batch, 2), self.settings["scale"]))

    def _reference(self, student, x):
        assert not torch.is_grad_enabled()
        return RunResult(logits=np.full((x.batch, 2), self.settings["scale"]))


def test_a_new_target_is_one_class_and_one_registry_entry(monkeypatch, tmp_path, student):
    monkeypatch.setitem(TARGETS, "toy", Toy)
    monkeypatch.setattr(Toy, "calls", [])
    assert export(student, "toy", tmp_path / "s.toy") == tmp_path / "s.toy"
    assert Toy.calls == ["check", "export"]  # the target's own check ran once, before its export
    assert target_of_file(tmp_path / "s.npy") == "toy"
    x = model_in(student, torch.zeros(3, 1, 8, 8))
    assert get_target("toy", scale=2.0).reference(student, x).logits.tolist() == [[2.0, 2.0]] * 3
    assert get_target("toy").run(tmp_path / "s.toy", x).logits.shape == (3, 2)


def test_the_shared_checks_run_before_the_targets_own(monkeypatch, tmp_path, student):
    monkeypatch.setitem(TARGETS, "toy", Toy)
    monkeypatch.setattr(Toy, "calls", [])
    with pytest.raises(UserError, match=r"the toy export must end in \.toy or \.npy"):
        export(student, "toy", tmp_path / "s.onnx")
    (tmp_path / "d.toy").mkdir()
    with pytest.raises(UserError, match="is a folder"):
        export(student, "toy", tmp_path / "d.toy")
    with pytest.raises(UserError, match="scale must be positive"):
        export(student, "toy", tmp_path / "s.toy", scale=0.0)
    with torch.no_grad():
        student.thresholds[0] = float("nan")
    with pytest.raises(UserError, match="'thresholds' contains NaN"):
        export(student, "toy", tmp_path / "s.toy")
    assert Toy.calls == ["check"] and not Path(tmp_path / "s.toy").exists()
