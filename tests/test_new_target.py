"""A new export target is one module plus one entry in ``TARGETS``: nothing else in the package names
the targets. A toy target, registered here and nowhere else, goes through ``export``, ``validate``
and the CLI (``export``, ``validate``) like the real ones."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import torch
from helpers import run_cli
from lasnn_deploy.exporters import TARGETS, RunResult, Target

from lasnn_deploy import export, validate
from lasnn_deploy.atomic import atomic_path
from lasnn_deploy.data import first_samples, load_split
from lasnn_deploy.inputs import InputSpec, ModelInput
from lasnn_deploy.models import build_student
from lasnn_deploy.student import SpikingStudent, StudentConfig, save_student


def _result(student: SpikingStudent, x: ModelInput) -> RunResult:
    with torch.no_grad():
        trace = student.run(x.images, input_spikes=x.spikes, record=True)
    cfg = student.config
    return RunResult(
        logits=trace.logits.numpy(),
        spikes=[s.numpy() for s in trace.spikes],
        layer_names=[cfg.layer_name(i) for i in cfg.spiking_layers],
    )


class NpzTarget(Target):
    """The student's float64 weights and description in a NumPy ``.npz``, run by rebuilding it in float64."""

    name, suffixes = "npz", (".npz",)
    quick_samples = 8

    def _check(self, student: SpikingStudent) -> None:
        """Every student fits."""

    def _export(self, student: SpikingStudent, path: Path) -> Path:
        arrays = {k: v.detach().double().numpy() for k, v in student.state_dict().items()}
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, config=np.array(json.dumps(student.config.to_dict())), **arrays)
        return path

    def _load(self, path: Path) -> SpikingStudent:
        with np.load(path) as data:
            student = SpikingStudent(StudentConfig.from_dict(json.loads(str(data["config"])))).double()
            student.load_state_dict({k: torch.from_numpy(data[k]) for k in data.files if k != "config"})
        return student.eval()

    def _input_spec(self, path: Path) -> InputSpec:
        return InputSpec.of(self._load(path).config)

    def _run(self, path: Path, x: ModelInput) -> RunResult:
        return _result(self._load(path), ModelInput(*(None if t is None else t.double() for t in (x.images, x.spikes))))

    def _reference(self, student: SpikingStudent, x: ModelInput) -> RunResult:
        double = copy.deepcopy(student).double().eval()
        return _result(double, ModelInput(*(None if t is None else t.double() for t in (x.images, x.spikes))))


def test_a_registered_toy_target_runs_through_export_validate_and_the_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(TARGETS, "npz", NpzTarget)
    images, labels = first_samples(load_split("digits", None, "test"), 16)
    student = SpikingStudent(build_student("tiny", images.shape[1:], 10, timesteps=3, encoding="poisson")).eval()
    path = export(student, "npz", tmp_path / "s.npz")
    report = validate(student, path, images, labels)
    assert report["target"] == "npz" and report["passed"] and report["spike_agreement"] == 1.0

    save_student(student, tmp_path / "run")
    code, out, _ = run_cli(capsys, "export", tmp_path / "run", "--target", "npz", "--out", tmp_path / "cli.npz")
    assert code == 0 and "wrote npz export" in out
    code, _, _ = run_cli(
        capsys, "validate", tmp_path / "run", tmp_path / "cli.npz", "--samples", 8, "--json", tmp_path / "v.json"
    )
    assert code == 0 and json.loads((tmp_path / "v.json").read_text())["passed"]
    code, _, err = run_cli(capsys, "export", tmp_path / "run", "--target", "npz", "--nir-for", "norse")
    assert code == 2 and "the npz target has no option runtime" in err
