"""``validate`` over many samples: chunk-wise counting, per-sample Poisson seeds, honest failure."""

from __future__ import annotations

import copy

import pytest
import torch

from lasnn_deploy import validation
from lasnn_deploy.evaluation import evaluate_student
from lasnn_deploy.exporters import onnx as onnx_export
from lasnn_deploy.neurons import poisson_inputs

from conftest import make_student


@pytest.fixture(autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
    assert a == b
    assert a["spikes_per_sample"] > 0


@pytest.mark.parametrize("encoding", ["direct", "poisson"])
def test_chunked_validation_reports_what_one_chunk_reports(tmp_path, monkeypatch, encoding):
    student = make_student(encoding, "hard", 3)
    images, labels = images_and_labels()
    path = onnx_export.export(student, tmp_path / "s.onnx")
    whole = validation.validate(student, path, images, labels)
    monkeypatch.setattr(validation, "CHUNK", 4)
    chunked = validation.validate(student, path, images, labels)
    assert chunked == whole
    assert whole["passed"] and whole["spike_agreement"] == 1.0 and whole["samples"] == 13
    assert [layer["spikes_reference"] for layer in whole["layers"]] == [layer["spikes_runtime"] for layer in whole["layers"]]
    assert sum(layer["spikes_reference"] for layer in whole["layers"]) > 0


def test_a_file_from_another_student_fails_validation(tmp_path, monkeypatch):
    student = make_student("direct", "hard", 3)
    other = copy.deepcopy(student)
    with torch.no_grad():
        other.thresholds[0] *= 1.5  # the exported network fires less in its first layer
    images, labels = images_and_labels()
    path = onnx_export.export(other, tmp_path / "other.onnx")
    monkeypatch.setattr(validation, "CHUNK", 5)
    report = validation.validate(student, path, images, labels)
    assert not report["passed"]
    assert report["layers"][0]["spike_agreement"] < 1.0
    assert report["layers"][0]["spikes_runtime"] < report["layers"][0]["spikes_reference"]


def test_the_package_offers_the_whole_data_flow_without_loading_matplotlib():
    """train -> load -> data -> export -> validate -> energy from ``import lasnn_deploy`` alone;
    matplotlib (seconds to import) waits until a plot is drawn."""
    import subprocess
    import sys

    code = ("import sys, lasnn_deploy as l; "
            "assert all(callable(getattr(l, n)) for n in l.__all__ if n != '__version__'), l.__all__; "
            "assert {'train', 'load_split', 'first_samples', 'export', 'validate', 'energy_report'} <= set(l.__all__); "
            "assert 'matplotlib' not in sys.modules")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
