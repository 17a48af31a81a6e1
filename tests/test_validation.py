"""``validate`` over many samples: chunk-wise counting, per-sample Poisson seeds, honest failure."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import CountingSet, make_student, model_in
from lasnn_deploy.exporters import onnx as onnx_export
from lasnn_deploy.exporters.onnx import OnnxTarget

from lasnn_deploy import validation
from lasnn_deploy.evaluation import evaluate_student
from lasnn_deploy.inputs import ModelInput
from lasnn_deploy.neurons import poisson_inputs

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def images_and_labels(n: int = 13):
    gen = torch.Generator().manual_seed(7)
    return torch.rand((n, 1, 8, 8), generator=gen), torch.randint(0, 5, (n,), generator=gen)


def test_poisson_inputs_of_a_slice_equal_the_slice_of_the_whole_set():
    images, _ = images_and_labels()
    whole = poisson_inputs(images, 5, seed=3)
    np_slice = poisson_inputs(images[4:9], 5, seed=3, first_index=4)
    assert torch.equal(np_slice, whole[:, 4:9])
    assert not torch.equal(whole[:, 0], whole[:, 1])  # every sample has its own draw


def test_evaluate_does_not_depend_on_the_batch_size_under_poisson():
    student = make_student("poisson", "hard", 4)
    images, labels = images_and_labels()
    dataset = torch.utils.data.TensorDataset(images, labels)
    a = evaluate_student(student, dataset, batch_size=4)
    b = evaluate_student(student, dataset, batch_size=13)
    assert a.pop("loss") == pytest.approx(b.pop("loss"), rel=1e-12)  # float64 sums, grouped by batch
    assert a == b
    assert a["spikes_per_sample"] > 0


@pytest.mark.parametrize("encoding", ["direct", "poisson"])
def test_chunked_validation_reports_what_one_chunk_reports(tmp_path, monkeypatch, encoding):
    student = make_student(encoding, "hard", 3)
    images, labels = images_and_labels()
    path = OnnxTarget().export(student, tmp_path / "s.onnx")
    whole = validation.validate(student, path, images, labels)
    monkeypatch.setattr(onnx_export.OnnxTarget, "chunk", 4)
    chunked = validation.validate(student, path, images, labels)
    assert chunked == whole
    assert whole["passed"] and whole["spike_agreement"] == 1.0 and whole["samples"] == 13
    assert [layer["spikes_reference"] for layer in whole["layers"]] == [
        layer["spikes_runtime"] for layer in whole["layers"]
    ]
    assert sum(layer["spikes_reference"] for layer in whole["layers"]) > 0


def test_a_file_from_another_student_fails_validation(tmp_path, monkeypatch):
    student = make_student("direct", "hard", 3)
    other = copy.deepcopy(student)
    with torch.no_grad():
        other.thresholds[0] *= 1.5  # the exported network fires less in its first layer
    images, labels = images_and_labels()
    path = OnnxTarget().export(other, tmp_path / "other.onnx")
    monkeypatch.setattr(onnx_export.OnnxTarget, "chunk", 5)
    report = validation.validate(student, path, images, labels)
    assert not report["passed"]
    assert report["layers"][0]["spike_agreement"] < 1.0
    assert report["layers"][0]["spikes_runtime"] < report["layers"][0]["spikes_reference"]


def test_the_package_offers_the_whole_data_flow_without_loading_matplotlib():
    """train -> load -> data -> export -> validate -> energy from ``import lasnn_deploy`` alone;
    matplotlib (seconds to import) waits until a plot is drawn."""
    import subprocess
    import sys

    code = (
        "import sys, lasnn_deploy as l; "
        "assert all(callable(getattr(l, n)) for n in l.__all__ if n != '__version__'), l.__all__; "
        "assert {'train', 'load_split', 'first_samples', 'export', 'validate', 'energy_report'} <= set(l.__all__); "
        "assert 'matplotlib' not in sys.modules"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr


# -- a validate that cannot be fooled ----------------------------------------------------------
from unittest import mock  # noqa: E402

import nir  # noqa: E402
import numpy as np  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from lasnn_deploy.exporters import (  # noqa: E402
    RunResult,
    target_of_file,
)
from lasnn_deploy.exporters.nir import NirTarget  # noqa: E402
from lasnn_deploy.exporters.nir_runtimes import order  # noqa: E402


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    student = make_student("direct", "hard", 3)
    return student, OnnxTarget().export(student, tmp_path_factory.mktemp("v") / "s.onnx")


def tampered(result: RunResult, how: str, k: int) -> RunResult:
    names, spikes = list(result.layer_names), list(result.spikes)
    k %= len(names)
    if how == "drop":
        del names[k], spikes[k]
    elif how == "rename":
        names[k] = names[k] + "_x"
    elif how == "swap" and len(names) > 1:
        j = (k + 1) % len(names)
        names[k], names[j], spikes[k], spikes[j] = names[j], names[k], spikes[j], spikes[k]
    elif how == "extra":
        names.append("ghost"), spikes.append(spikes[k])
    elif how == "reshape":
        spikes[k] = spikes[k].reshape(spikes[k].shape[0], spikes[k].shape[1], -1)[..., :-1]  # one neuron short
    else:  # no names at all
        names = []
    return RunResult(result.logits, spikes, names)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(how=st.sampled_from(["drop", "rename", "swap", "extra", "reshape", "unnamed"]), k=st.integers(0, 5))
def test_a_runtime_that_drops_or_renames_a_layer_fails_validation(onnx_file, how, k):
    student, path = onnx_file
    images, labels = images_and_labels(5)
    real_run = onnx_export._run  # the target's own step, which validate reaches through OnnxTarget.run
    with mock.patch.object(
        onnx_export.OnnxTarget, "_run", staticmethod(lambda *a, **kw: tampered(real_run(*a, **kw), how, k))
    ):
        report = validation.validate(student, path, images, labels)
    assert not report["passed"]
    assert report["layer_mismatch"] and report["spike_agreement"] is None
    honest = validation.validate(student, path, images, labels)
    assert honest["passed"] and not honest["layer_mismatch"]
    if how == "drop":
        dropped = honest["layers"][k % len(honest["layers"])]["name"]
        assert any(dropped in line and "missing" in line for line in report["layer_mismatch"])


def test_first_divergence_names_a_planted_threshold_tie(tmp_path):
    """A neuron whose potential equals the threshold exactly does not fire (v > theta); the file's
    threshold one float32 step lower makes it fire there, and nowhere earlier."""
    student = make_student("direct", "hard", 4)
    images, labels = images_and_labels(6)
    v = order.ordered_reference(student, model_in(student, images)).potentials[0]  # conv0, [T, B, C, H, W]
    flat = v[0, 0].reshape(-1)
    n = int(np.flatnonzero(flat > 0)[0])  # sample 0, step 0: every neuron before it has v <= 0
    tie = float(flat[n])
    with torch.no_grad():
        student.thresholds[0] = tie
    planted = copy.deepcopy(student)
    with torch.no_grad():
        planted.thresholds[0] = float(np.nextafter(np.float32(tie), np.float32(0)))
    path = NirTarget().export(planted, tmp_path / "tie.nir")
    report = validation.validate(student, path, images, labels)
    d = report["first_divergence"]
    assert not report["passed"] and report["spike_agreement"] < 1.0
    neuron = [int(i) for i in np.unravel_index(n, v.shape[2:])]
    assert (d["layer"], d["step"], d["sample"], d["neuron"]) == ("conv0", 0, 0, neuron)
    assert (d["spike_reference"], d["spike_runtime"]) == (0.0, 1.0)
    assert d["potential_reference"] == tie == float(student.thresholds[0])


def test_trace_is_the_references_spikes_as_nir_data(tmp_path):
    student = make_student("poisson", "hard", 4)
    images, labels = images_and_labels(7)
    path = NirTarget().export(student, tmp_path / "s.nir")
    report = validation.validate(student, path, images, labels, trace=tmp_path / "golden.h5")
    data = nir.read_data(tmp_path / "golden.h5")
    reference = order.ordered_reference(student, ModelInput(spikes=poisson_inputs(images, 4, 0, 0)))
    assert report["passed"] and sorted(data.nodes) == ["lif0", "lif3", "lif6"]
    for name, spikes in zip(["lif0", "lif3", "lif6"], reference.spikes, strict=True):
        grid = data.nodes[name].observables["spikes"]
        assert grid.dt == 1e-4 and grid.data.dtype == bool and grid.data.shape == (7, 4, spikes[0, 0].size)
        assert np.array_equal(grid.data, spikes.reshape(4, 7, -1).transpose(1, 0, 2) > 0)
    assert all(name in nir.read(path).nodes for name in data.nodes)  # named after the file's LIF nodes


def test_a_netx_file_named_net_is_a_lava_file(tmp_path):
    from lasnn_deploy.exporters import export

    assert target_of_file("model.net") == "lava"
    student = make_student("poisson", "hard", 3)
    path = export(student, "lava", tmp_path / "student.net")
    images, labels = images_and_labels(3)
    report = validation.validate(student, path, images, labels)
    assert report["target"] == "lava" and report["passed"]


@pytest.mark.parametrize("encoding", ["direct", "poisson"])
def test_validate_streams_a_data_set_a_batch_at_a_time(tmp_path, monkeypatch, encoding):
    """Structural, not timing: when the runtime runs batch k, no sample past batch k has been
    loaded, so memory holds a batch however large the set; the report equals the tensors' one."""
    student = make_student(encoding, "hard", 3)
    images, labels = images_and_labels()
    path = OnnxTarget().export(student, tmp_path / "s.onnx")
    whole = validation.validate(student, path, images, labels)
    monkeypatch.setattr(onnx_export.OnnxTarget, "chunk", 4)
    data = CountingSet(images, labels)
    seen = []  # (samples in this run call, samples loaded when it ran)
    real_run = onnx_export._run

    def run(*args, **kwargs):
        result = real_run(*args, **kwargs)
        seen.append((result.logits.shape[0], data.loaded))
        return result

    monkeypatch.setattr(onnx_export.OnnxTarget, "_run", staticmethod(run))
    streamed = validation.validate(student, path, data)
    assert [n for n, _ in seen] == [4, 4, 4, 1]
    assert [loaded for _, loaded in seen] == [4, 8, 12, 13]
    assert streamed == whole and whole["samples"] == 13 and "runtime_accuracy" in whole


def test_validate_samples_all_runs_the_whole_test_split(capsys, monkeypatch, tmp_path):
    """``--samples all``: every sample of the test split, with the runtime's accuracy beside the
    reference's; a count past the split's size means all of it too."""
    from helpers import run_cli

    from lasnn_deploy import data
    from lasnn_deploy.student import save_student

    images, labels = images_and_labels(21)
    monkeypatch.setattr(data, "load_split", lambda *a, **kw: torch.utils.data.TensorDataset(images, labels))
    student = make_student("direct", "hard", 3)
    save_student(student, tmp_path)
    path = OnnxTarget().export(student, tmp_path / "s.onnx")
    for samples in ("all", "500"):
        code, out, _ = run_cli(capsys, "validate", tmp_path, path, "--samples", samples, "--json", tmp_path / "v.json")
        report = __import__("json").loads((tmp_path / "v.json").read_text())
        assert code == 0 and report["samples"] == 21 and report["passed"], out
        assert "accuracy: runtime" in out and report["runtime_accuracy"] == report["reference_accuracy"]
    code, _, err = run_cli(capsys, "validate", tmp_path, path, "--samples", "some")
    assert code == 2 and "expected an integer or 'all', got 'some'" in err
