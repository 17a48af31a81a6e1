"""`validate --runtime NAME` for NIR files: each importer as it ships, on the plain file or its flavour."""

from __future__ import annotations

import importlib.util

import nir
import numpy as np
import pytest
import torch
from helpers import make_student, model_in
from lasnn_deploy.exporters import nir as nir_target
from lasnn_deploy.exporters import nir_runtimes
from lasnn_deploy.exporters.nir import NirTarget
from lasnn_deploy.exporters.nir_runtimes import order
from lasnn_deploy.exporters.nir_runtimes import spyx as spyx_runtime

from lasnn_deploy.errors import UserError
from lasnn_deploy.neurons import poisson_inputs
from lasnn_deploy.validation import compare, validate

LIBRARY = {"snntorch": "snntorch", "spikingjelly": "spikingjelly", "norse": "norse", "sinabs": "sinabs"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def require(runtime: str) -> None:
    """Skip, with the reason, where the runtime's extra is not installed (make install installs all)."""
    if runtime == "spyx":
        try:
            spyx_runtime.python()
        except UserError as err:
            pytest.skip(f"spyx not installed: {err}")
    elif importlib.util.find_spec(LIBRARY[runtime]) is None:
        pytest.skip(f"{runtime} not installed: install {nir_runtimes.RUNTIMES[runtime]} (make install does)")


def inputs(encoding: str, n: int = 12, T: int = 4):
    x = torch.rand((n, 1, 8, 8), generator=torch.Generator().manual_seed(5))
    return (None, poisson_inputs(x, T, 0, 0)) if encoding == "poisson" else (x, None)


def run_both(student, path, runtime, encoding):
    images, spikes = inputs(encoding, T=student.config.timesteps)
    in_batches = nir_runtimes.batched(nir.read(path), runtime)
    return (
        order.ordered_reference(student, model_in(student, images, spikes), in_batches=in_batches),
        nir_runtimes.run(path, model_in(student, images, spikes), runtime=runtime),
    )


def test_the_cli_names_every_runtime():
    from lasnn_deploy.cli.parser import RUNTIME_NAMES

    assert RUNTIME_NAMES == tuple(nir_runtimes.RUNTIMES)


@pytest.mark.parametrize("runtime", ["snntorch", "spikingjelly", "norse"])
@pytest.mark.parametrize("encoding", ["direct", "poisson"])
@pytest.mark.parametrize("leak", [0.9, 1.0])
def test_spike_exact_in_each_importer_as_it_ships(tmp_path, runtime, encoding, leak):
    require(runtime)
    student = make_student(encoding, leak=leak)
    path = NirTarget(runtime=runtime).export(student, tmp_path / "s.nir")
    reference, result = run_both(student, path, runtime, encoding)
    report = compare(reference, result)
    assert result.layer_names == reference.layer_names == ["conv0", "conv3", "linear6"]
    assert report["spike_agreement"] == 1.0 and report["output_agreement"] == 1.0, report["first_divergence"]
    assert report["max_abs_logit_error"] <= 1e-5
    assert 0 < np.mean([s.mean() for s in reference.spikes]) < 0.6  # not a vacuous comparison


@pytest.mark.parametrize("runtime", ["sinabs", "spyx"])
def test_closest_runtimes_run_and_disagree_only_by_their_neuron(tmp_path, runtime):
    """Sinabs and Spyx reset by subtraction (Sinabs also fires several spikes a step): no file makes
    them exact, but everything up to the first spike after an above-threshold step must agree."""
    require(runtime)
    student = make_student("direct", leak=0.9)
    path = NirTarget(runtime=runtime).export(student, tmp_path / "s.nir")
    reference, result = run_both(student, path, runtime, "direct")
    report = compare(reference, result)
    assert result.layer_names == reference.layer_names and not report["layer_mismatch"]
    assert 0.6 < report["spike_agreement"] < 1.0
    d = report["first_divergence"]
    if runtime == "sinabs":  # MultiSpike: more than one spike where the reference fires once
        assert d["spike_runtime"] >= 2 and d["spike_reference"] == 1 and d["potential_reference"] > 0
    else:  # subtractive reset: a spike the reference's reset-to-0 neuron did not fire, never at step 0
        assert d["step"] >= 1
    first = reference.spikes[0][0]  # step 0 of the first layer: no reset has happened yet
    assert np.array_equal(np.minimum(result.spikes[0][0], 1), first)


@pytest.mark.parametrize("runtime", list(nir_runtimes.RUNTIMES))
def test_every_flavoured_file_passes_nirs_own_checks(tmp_path, runtime):
    student = make_student("direct", leak=0.9)
    path = NirTarget(runtime=runtime).export(student, tmp_path / "s.nir")
    graph = nir.read(path)  # type-checks the graph (infer_types + check_types)
    assert graph.check_types()
    graph.validate_structure()
    assert graph.metadata["nir_for"] == runtime
    plain = nir.read(NirTarget().export(student, tmp_path / "plain.nir"))
    assert "nir_for" not in plain.metadata and any(isinstance(n, nir.AvgPool2d) for n in plain.nodes.values())


def test_sum_pool_flavour_folds_the_pool_into_the_next_weights():
    student = make_student("direct")
    plain = nir_target.to_nir_graph(student)
    graph = nir_runtimes.flavour(nir_target.to_nir_graph(student), "norse")
    assert isinstance(graph.nodes["avgpool1"], nir.SumPool2d)
    assert np.array_equal(graph.nodes["conv3"].weight, plain.nodes["conv3"].weight / np.float32(4))
    assert np.array_equal(graph.nodes["linear6"].weight, plain.nodes["linear6"].weight / np.float32(4))
    assert float(graph.metadata["dt"]) == 1e-3 and np.all(graph.nodes["lif0"].r == 1)


def test_a_file_for_one_runtime_is_refused_by_another(tmp_path):
    student = make_student("direct")
    path = NirTarget(runtime="norse").export(student, tmp_path / "s.nir")
    x, _ = inputs("direct")
    with pytest.raises(UserError, match="written for norse"):
        validate(student, path, x, runtime="snntorch")
    with pytest.raises(UserError, match="unknown NIR runtime"):
        NirTarget(runtime="rockpool").export(student, tmp_path / "t.nir")


def test_cli_refuses_runtime_options_where_they_do_not_apply(capsys, tmp_path):
    from helpers import run_cli

    from lasnn_deploy.student import save_student

    student = make_student("direct")
    save_student(student, tmp_path / "run")
    code, _, err = run_cli(
        capsys,
        "export",
        str(tmp_path / "run"),
        "--target",
        "onnx",
        "--nir-for",
        "norse",
        "--out",
        str(tmp_path / "s.onnx"),
    )
    assert code == 2 and "has no option runtime" in err and not (tmp_path / "s.onnx").exists()
    code, out, _ = run_cli(
        capsys,
        "export",
        str(tmp_path / "run"),
        "--target",
        "nir",
        "--nir-for",
        "spikingjelly",
        "--out",
        str(tmp_path / "s.nir"),
    )
    assert code == 0 and nir.read(tmp_path / "s.nir").metadata["nir_for"] == "spikingjelly"
    code, _, err = run_cli(capsys, "export", str(tmp_path / "run"), "--target", "nir", "--nir-for", "rockpool")
    assert code == 2 and "invalid choice" in err


@pytest.mark.parametrize("runtime", ["norse", "sinabs"])
def test_the_api_and_the_cli_write_the_same_file_for_a_runtime(capsys, tmp_path, runtime):
    """``export(student, "nir", path, runtime=R)`` and ``export --nir-for R`` are one code path: the same
    bytes, and not the plain file's (the option once was accepted and ignored)."""
    from helpers import run_cli

    from lasnn_deploy import export
    from lasnn_deploy.student import load_student, save_student

    save_student(make_student("direct", leak=0.9), tmp_path / "run")
    student = load_student(tmp_path / "run")
    api = export(student, "nir", tmp_path / "api.nir", runtime=runtime)
    code, _, _ = run_cli(
        capsys, "export", tmp_path / "run", "--target", "nir", "--nir-for", runtime, "--out", tmp_path / "cli.nir"
    )
    assert code == 0 and api.read_bytes() == (tmp_path / "cli.nir").read_bytes()
    assert api.read_bytes() != export(student, "nir", tmp_path / "plain.nir").read_bytes()
    assert nir.read(api).metadata["nir_for"] == runtime


@pytest.mark.parametrize("runtime", list(nir_runtimes.RUNTIMES))
def test_biased_students_keep_their_biases_in_every_flavour(tmp_path, runtime):
    """Conv biases and Affine nodes survive the pool folding and the dense rewrite: the exact
    runtimes stay spike-exact, the closest ones agree as well as without a bias at step 0."""
    require(runtime)
    student = make_student("direct", leak=0.9, bias=True)
    path = NirTarget(runtime=runtime).export(student, tmp_path / "s.nir")
    reference, result = run_both(student, path, runtime, "direct")
    report = compare(reference, result)
    if runtime in ("sinabs", "spyx"):
        assert np.array_equal(np.minimum(result.spikes[0][0], 1), reference.spikes[0][0])
        assert report["spike_agreement"] > 0.6
    else:
        assert report["spike_agreement"] == 1.0 and report["max_abs_logit_error"] <= 1e-5, report["first_divergence"]


def test_plain_file_runs_unbatched_in_snntorch_and_its_flavour_batched(tmp_path):
    """snnTorch and Norse build Flatten(start_dim=0) literally: the plain file goes one sample at a
    time; the flavours' Flatten(start_dim=-3) is the same NIR node and keeps the batch axis."""
    student = make_student("direct", leak=0.9)
    plain = NirTarget().export(student, tmp_path / "plain.nir")
    flavoured = NirTarget(runtime="snntorch").export(student, tmp_path / "snntorch.nir")
    assert not nir_runtimes.batched(nir.read(plain), "snntorch")
    assert nir_runtimes.batched(nir.read(flavoured), "snntorch") and nir_runtimes.batched(
        nir.read(plain), "spikingjelly"
    )
    assert nir.read(flavoured).nodes["flatten5"].start_dim == -3
    reference, result = run_both(student, plain, "snntorch", "direct")
    assert compare(reference, result)["spike_agreement"] == 1.0


def test_a_missing_spyx_environment_is_one_clear_line(tmp_path, monkeypatch):
    student = make_student("direct")
    path = NirTarget(runtime="spyx").export(student, tmp_path / "s.nir")
    monkeypatch.setenv("LASNN_SPYX_PYTHON", str(tmp_path / "no-python"))
    with pytest.raises(UserError, match="make spyx"):
        nir_runtimes.run(path, model_in(student, inputs("direct")[0]))


def test_an_importer_that_cannot_read_the_plain_file_is_one_line_naming_the_flavour(tmp_path):
    require("norse")
    student = make_student("direct")
    plain = NirTarget().export(student, tmp_path / "plain.nir")
    with pytest.raises(UserError, match="norse cannot run .*KeyError.*avgpool1.*--nir-for norse"):
        nir_runtimes.run(plain, model_in(student, inputs("direct")[0]), runtime="norse")
