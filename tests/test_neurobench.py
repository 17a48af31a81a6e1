"""NeuroBench 2.3, run for real on the student's replica: its metrics equal our counts under the stated
conventions, a replica it cannot see or that is not the student is an error (never a 0.0), and every energy
report, an imported NIR model's included, carries the section."""

from __future__ import annotations

import json

import lasnn_deploy.hw_targets.neurobench as nb
import pytest
import torch
from helpers import make_student, resnet_student
from lasnn_deploy.hw_targets.energy import counted_batches
from lasnn_deploy.hw_targets.report import energy_report
from torch import nn

from lasnn_deploy.models import build_student
from lasnn_deploy.neurons import lif_multistep
from lasnn_deploy.student import SpikingStudent


def images(n: int = 6, shape=(1, 8, 8), seed: int = 0) -> torch.Tensor:
    """Digits-sized images with blank pixels (so zero inputs matter) and grey ones (so the first layer is analog)."""
    x = torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed))
    return torch.where(x < 0.3, torch.zeros_like(x), x)


def dense_student() -> SpikingStudent:
    """The mlp student (Flatten-Linear-LIF-Linear) on 8x8 images, firing a fair share of its neurons."""
    torch.manual_seed(1)
    student = SpikingStudent(build_student("mlp", (1, 8, 8), 10, timesteps=4), leak=0.9, thresholds=[0.5])
    return student.eval()


STUDENTS = {
    "conv+pool": make_student,
    "conv+pool, Poisson": lambda: make_student(encoding="poisson"),
    "conv+pool, bias": lambda: make_student(bias=True),
    "dense": dense_student,
    "residual": resnet_student,
}


@pytest.mark.parametrize("name", STUDENTS)
def test_neurobench_equals_our_counts(name, one_torch_thread):
    """Effective_ACs equal our synaptic events exactly (no zero weight among these), ActivationSparsity is
    1 - our firing rate and MembraneUpdates our changed-potential count, to 1e-9; every metric says equal."""
    student, x = STUDENTS[name](), images()
    section = nb.neurobench_metrics(student, x, batch_size=4)
    m, ops = section["metrics"], section["metrics"]["SynapticOperations"]
    run = list(counted_batches(student, x, timesteps=student.config.timesteps, batch_size=4, progress=False))
    synops = sum(float(c.synops.sum()) for b in run for c in b.layers) / len(x)
    spikes = sum(float(c.spikes.sum()) for b in run for c in b.layers if c.spiking)
    rate = spikes / (sum(c.neurons * c.timesteps for c in run[0].layers if c.spiking) * len(x))
    assert ops["Effective_ACs"]["neurobench"] == ops["Effective_ACs"]["ours"] == synops > 0
    assert abs(m["ActivationSparsity"]["neurobench"] - (1 - rate)) <= 1e-9
    assert 0 < m["MembraneUpdates"]["neurobench"] <= m["MembraneUpdates"]["ours"]
    assert abs(m["MembraneUpdates"]["neurobench"] - m["MembraneUpdates"]["ours_neurobench_conventions"]) <= 1e-9
    direct = student.config.encoding == "direct"
    assert (ops["Effective_MACs"]["neurobench"] > 0) == direct
    assert all(e.get("equal", True) for e in [*m.values(), *ops.values()] if "neurobench" in e)


class FunctionalLIF(nn.Module):
    """Our LIF as a plain module (the student's own function): the same spikes, but no snnTorch neuron."""

    def __init__(self, leak: torch.Tensor, theta: torch.Tensor):
        super().__init__()
        self.leak, self.theta, self.u = leak, theta, None

    def reset_mem(self) -> None:
        self.u = None

    def forward(self, current: torch.Tensor) -> tuple[torch.Tensor, None]:
        u = torch.zeros_like(current) if self.u is None else self.u
        v = self.leak * u + current
        spikes = lif_multistep(v.unsqueeze(0), 1.0, self.theta)[0]
        self.u = v * (1 - spikes)
        return spikes, None


def test_neurons_neurobench_cannot_see_are_an_error_not_a_zero(monkeypatch):
    """NeuroBench finds neurons by type: with functional ones it would report 0.0 sparsity and updates."""
    monkeypatch.setattr(nb, "neuron", FunctionalLIF)
    with pytest.raises(nb.NeuroBenchError, match="sees 0 of 3 neuron layers"):
        nb.neurobench_metrics(make_student(), images(2))


def test_a_replica_that_is_not_the_student_is_refused(monkeypatch):
    """A threshold 1% off changes spikes: the check refuses before NeuroBench's numbers are taken."""
    monkeypatch.setattr(
        nb, "neuron", lambda leak, theta: nb.snn.Leaky(beta=leak, threshold=theta * 1.01, reset_mechanism="zero")
    )
    with pytest.raises(nb.NeuroBenchError, match="differs from the student in"):
        nb.neurobench_metrics(make_student(), images(4))


def test_every_energy_report_carries_neurobench(tmp_path):
    """One profile: in the profile's report; all profiles: at the top; both in energy.md."""
    student, x = make_student(), images(3)
    one = energy_report(student, x, hw="loihi", out_dir=tmp_path / "one", progress=False)
    every = energy_report(student, x, hw="all", out_dir=tmp_path / "all", progress=False)
    assert one["neurobench"]["metrics"] == every["neurobench"]["metrics"]
    written = json.loads((tmp_path / "all" / "energy.json").read_text())
    assert written["neurobench"]["metrics"]["SynapticOperations"]["Effective_ACs"]["equal"] is True
    md = (tmp_path / "one" / "energy.md").read_text()
    assert "## NeuroBench metrics" in md and "| SynapticOperations.Effective_ACs |" in md
    soft = energy_report(make_student(reset="soft"), x, hw="loihi", out_dir=tmp_path / "soft", progress=False)
    assert "hard reset only" in soft["neurobench"]["skipped"]


def test_an_imported_nir_model_gets_the_neurobench_section(tmp_path):
    """A foreign snnTorch graph imported from NIR is a student like any other: the same section, equal counts."""
    pytest.importorskip("snntorch")
    import foreign_nets as fn

    from lasnn_deploy import import_nir, load_student

    import_nir(
        fn.build("snntorch", "conv").graph, tmp_path / "run", library="snntorch", timesteps=4, input_shape=fn.SHAPE
    )
    student = load_student(tmp_path / "run")
    result = energy_report(student, images(3, fn.SHAPE), hw="loihi", out_dir=tmp_path / "energy", progress=False)
    ops = result["neurobench"]["metrics"]["SynapticOperations"]
    assert ops["Effective_ACs"]["neurobench"] == ops["Effective_ACs"]["ours_neurobench_conventions"] > 0
