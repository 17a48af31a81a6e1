"""NIR target: real nir.write / nir.read files run in snnTorch 1.0's real importer (docs/semantics.md, 'NIR')."""

from __future__ import annotations

import dataclasses

import lasnn_deploy.exporters.nir as nir_target
import nir
import numpy as np
import pytest
import torch
from helpers import make_student, model_in, resnet_student, small_resnet
from lasnn_deploy.exporters import export
from lasnn_deploy.exporters.nir import NirTarget
from lasnn_deploy.exporters.nir_runtimes import order

from lasnn_deploy import nir_read
from lasnn_deploy.errors import UserError
from lasnn_deploy.inputs import ModelInput, model_input
from lasnn_deploy.student import Dropout, Shortcut, SpikingStudent, StudentConfig
from lasnn_deploy.validation import validate


def images(n: int = 6, shape=(1, 8, 8), seed: int = 1) -> torch.Tensor:
    return torch.rand((n, *shape), generator=torch.Generator().manual_seed(seed))


def _same_value(a, b) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same_value(a[k], b[k]) for k in a)
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(np.asarray(a), np.asarray(b))
    return a == b


def test_the_file_is_the_graph_the_nir_package_reads_back(tmp_path):
    """Export writes with nir.write only: nir.read gives back every node, field and edge as built."""
    student = make_student(timesteps=3, bias=True)
    built, read = nir_target.to_nir_graph(student), nir.read(NirTarget().export(student, tmp_path / "s.nir"))
    assert sorted(built.edges) == sorted(read.edges) and built.nodes.keys() == read.nodes.keys()
    for name, node in built.nodes.items():
        got = read.nodes[name]
        assert type(got) is type(node), name
        for f in dataclasses.fields(node):
            if f.name != "metadata":
                assert _same_value(getattr(node, f.name), getattr(got, f.name)), (name, f.name)


@pytest.mark.parametrize("leak", [0.5, 0.75, 0.9, 0.95, 0.99, 0.999999, 1.0])
def test_tau_gives_back_the_exact_leak_in_the_importers_float32_formula(leak):
    tau, r = nir_read.leak_to_tau(leak)
    assert nir_read.importer_leak(np.array([tau]))[0] == np.float32(leak)
    assert np.isclose(float(r) * nir_read.DT / float(tau), 1.0, rtol=1e-6, atol=0)  # input gain 1
    if leak == 1.0:
        assert r * np.float32(nir_read.DT) == tau  # exactly in float32, so snnTorch keeps the threshold


def test_tau_is_exact_for_every_leak_trained_in_practice():
    leaks = np.random.default_rng(0).uniform(0.9, 1.0, 300).astype(np.float32)
    got = [nir_read.importer_leak(np.array([nir_read.leak_to_tau(float(lam))[0]]))[0] for lam in leaks]
    assert np.array_equal(np.array(got), leaks)


@pytest.mark.parametrize("leak", [0.9, 1.0])
def test_nir_round_trip_preserves_every_parameter(tmp_path, leak):
    student = make_student(leak=leak, timesteps=5, encoding="poisson")
    path = NirTarget().export(student, tmp_path / "s.nir")
    graph = nir.read(path)
    kinds = [type(graph.nodes[n]).__name__ for n in nir_read.chain(graph)]
    assert kinds == [
        "Input",
        "Conv2d",
        "LIF",
        "AvgPool2d",
        "Conv2d",
        "LIF",
        "AvgPool2d",
        "Flatten",
        "Linear",
        "LIF",
        "Linear",
        "Output",
    ]
    meta = graph.metadata
    assert (meta["dt"], meta["timesteps"], meta["encoding"], meta["num_classes"]) == (1e-4, 5, "poisson", 5)
    assert list(meta["input_shape"]) == [1, 8, 8] and meta["output_form"] == "linear"

    back = nir_read.student_from_nir(path)
    cfg = student.config
    assert back.config == cfg.replace(layers=tuple(l for l in cfg.layers if not isinstance(l, Dropout)))
    assert back.leak.item() == student.leak.item()
    assert torch.equal(back.thresholds, student.thresholds)
    originals = student.weighted_modules()
    rebuilt = back.weighted_modules()
    assert len(originals) == len(rebuilt) == 4
    for a, b in zip(originals, rebuilt, strict=True):
        assert a.weight.dtype == b.weight.dtype and torch.equal(a.weight, b.weight)


@pytest.mark.parametrize("leak", [0.9, 1.0])
@pytest.mark.parametrize("encoding", ["direct", "poisson"])
def test_snntorch_importer_reproduces_the_student(tmp_path, encoding, leak):
    student = make_student(encoding=encoding, leak=leak, timesteps=5)
    path = export(student, "nir", tmp_path / "s.nir")
    x = images(4)
    given = model_input(encoding, 5, x, seed=3)
    ref = NirTarget().reference(student, given)
    got = NirTarget().run(path, given)
    assert got.layer_names == ref.layer_names == ["conv0", "conv3", "linear6"]
    assert len(got.spikes) == 3
    for r, g in zip(ref.spikes, got.spikes, strict=True):
        assert g.shape == r.shape and g.shape[:2] == (5, 4)
        assert np.array_equal(g, r)
        assert 0 < r.mean() < 0.6  # the comparison is not between silent layers
    assert np.array_equal(got.logits, ref.logits)  # same float32 sums in the same order


def test_poisson_images_are_encoded_like_the_student(tmp_path):
    """Given only images, both sides draw the student's default Poisson spikes (seed 0)."""
    student = make_student(encoding="poisson", timesteps=4)
    path = NirTarget().export(student, tmp_path / "s.nir")
    ref, got = (
        NirTarget().reference(student, model_in(student, images(4))),
        NirTarget().run(path, model_in(student, images(4))),
    )
    assert all(np.array_equal(r, g) for r, g in zip(ref.spikes, got.spikes, strict=True))


def test_soft_reset_is_refused_before_any_file_is_written(tmp_path):
    student = make_student(reset="soft")
    with pytest.raises(UserError, match=r"layer 0: soft reset cannot be expressed in NIR.*--reset hard"):
        export(student, "nir", tmp_path / "s.nir")
    with pytest.raises(UserError, match="soft reset"):
        NirTarget().export(student, tmp_path / "s.nir")
    assert list(tmp_path.iterdir()) == []


def test_parameters_nir_cannot_express_name_the_layer(tmp_path):
    student = make_student()
    with torch.no_grad():
        student.thresholds[1] = -0.5
    with pytest.raises(UserError, match="layer 3: threshold"):
        NirTarget().export(student, tmp_path / "s.nir")
    assert list(tmp_path.iterdir()) == []


def test_inputs_that_do_not_match_the_metadata_are_refused(tmp_path):
    path = NirTarget().export(make_student(timesteps=4), tmp_path / "s.nir")
    with pytest.raises(UserError, match=r"made for images \[B, 1, 8, 8\]"):
        NirTarget().run(path, ModelInput(images=torch.rand(2, 1, 9, 9)))
    with pytest.raises(UserError, match=r"T=4"):
        NirTarget().run(path, ModelInput(spikes=torch.ones(3, 2, 1, 8, 8)))


def test_truncated_and_foreign_files_are_refused(tmp_path):
    path = NirTarget().export(make_student(), tmp_path / "s.nir")
    data = path.read_bytes()
    truncated = tmp_path / "truncated.nir"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="not a readable NIR file"):
        NirTarget().run(truncated, ModelInput(images=images()))
    with pytest.raises(UserError, match="not a readable NIR file"):
        nir_read.student_from_nir(truncated)

    foreign = tmp_path / "foreign.nir"
    nir.write(foreign, nir.NIRGraph.from_list(nir.Linear(weight=np.ones((2, 3), dtype=np.float32))))
    with pytest.raises(UserError, match="not a lasnn-deploy NIR graph"):
        NirTarget().run(foreign, ModelInput(images=images()))
    with pytest.raises(UserError, match="no NIR file"):
        NirTarget().run(tmp_path / "missing.nir", ModelInput(images=images()))


def test_reading_back_refuses_a_graph_that_is_no_student(tmp_path):
    graph = nir_target.to_nir_graph(make_student())
    graph.nodes.pop("lif6")
    graph.edges = [e for e in graph.edges if "lif6" not in e] + [("linear6", "linear7")]
    with pytest.raises(UserError, match=r"LIF nodes after layers \[0, 2\].*\[0, 2, 5\]"):
        nir_read.student_from_nir(graph)


def without_dropout(config: StudentConfig) -> StudentConfig:
    """``config`` as a NIR graph gives it back: Dropout left out, shortcut sources renumbered."""
    kept = [i for i, layer in enumerate(config.layers) if not isinstance(layer, Dropout)]
    new_index = {old: new for new, old in enumerate(kept)}
    layers = [config.layers[i] for i in kept]

    def renumber(layer):
        return dataclasses.replace(layer, source=new_index[layer.source]) if isinstance(layer, Shortcut) else layer

    return config.replace(layers=tuple(map(renumber, layers)))


@pytest.mark.parametrize("encoding", ["direct", "poisson"])
def test_snntorch_importer_runs_a_residual_student(tmp_path, encoding):
    """export + validate as the CLI runs them: nirtorch's executor adds a LIF's two inputs (block conv +
    shortcut), so every spike of every layer equals the float student's, blocks included."""
    student = resnet_student(encoding)
    n = 4
    report = validate(student, export(student, "nir", tmp_path / "r.nir"), images(n))
    assert report["passed"] and report["spike_agreement"] == 1.0 and report["max_abs_logit_error"] == 0.0
    names = [layer["name"] for layer in report["layers"]]
    assert names[4::2] == ["shortcut9", "shortcut13", "shortcut17", "shortcut21"]
    shapes = student.config.shapes()
    for layer, i in zip(report["layers"], student.config.spiking_layers, strict=True):
        assert layer["spike_agreement"] == 1.0, layer["name"]
        rate = layer["spikes_reference"] / (6 * n * np.prod(shapes[i]))
        assert 0.05 < rate < 0.6, f"{layer['name']} fires {rate:.3f}: the test would not exercise the neuron"


def runtime_currents(student: SpikingStudent, lif: str, x: torch.Tensor) -> torch.Tensor:
    """The input current of node ``lif`` at step 0, ``[B, ...]``, as snnTorch's imported graph computes it."""
    from snntorch.utils import reset

    net, seen = order.snntorch_module(nir_target.to_nir_graph(student)).eval(), []
    net.get_submodule(lif).register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    with torch.no_grad():
        for image in x:  # direct encoding: step 0 gets the image itself
            reset(net)
            net(image)
    return torch.stack(seen)


def batched_currents(student: SpikingStudent, layer: int, x: torch.Tensor) -> torch.Tensor:
    """The same current at step 0 as ``student.run`` computes it, every layer on a ``[T * B]`` batch."""
    seen = []
    hook = student.body[layer].register_forward_hook(lambda m, args, out: seen.append(out.clone()))
    with torch.no_grad():
        student.run(x)
    hook.remove()
    return seen[0][: x.shape[0]]


@pytest.mark.parametrize("layer", [2, 13])  # a stem conv; the block LIF of conv12 + projection shortcut13
def test_reference_follows_snntorchs_float32_order_at_a_threshold_tie(tmp_path, layer):
    """Regression (cifar resnet12: spike agreement 0.999995): PyTorch's float32 conv rounds a batch of
    T*B images differently from snnTorch's one image at a time. A threshold placed exactly on a
    current where the two orders differ flips a spike at step 0; the NIR reference must follow the
    runtime's order there and everywhere else (validate: every spike and logit identical)."""
    student = resnet_student("direct")
    x = images(4)
    k = student.config.spiking_layers.index(layer)
    ours, theirs = batched_currents(student, layer, x), runtime_currents(student, f"lif{layer}", x)
    tie = torch.minimum(ours, theirs)
    where = ((ours != theirs) & (tie > 0)).nonzero()
    assert len(where) > 0, "no current whose float32 rounding depends on the batch: the test needs one"
    with torch.no_grad():
        student.thresholds[k] = tie[tuple(where[0])]  # v[0] = i: exactly one order gives v > theta
    path = export(student, "nir", tmp_path / "tie.nir")
    got = NirTarget().run(path, model_in(student, x))
    with torch.no_grad():
        batched = student.run(x, record=True)
    assert not np.array_equal(batched.spikes[k], got.spikes[k])  # the tie is real: batch order disagrees
    report = validate(student, path, x)
    assert report["passed"] and report["spike_agreement"] == 1.0 and report["max_abs_logit_error"] == 0.0


def test_residual_graph_survives_write_and_read(tmp_path):
    """Every shortcut is a 1x1 Conv2d branch from its source node into the block's LIF (identity
    weights for the identity one), and the student comes back exactly from the file."""
    student = resnet_student("poisson")
    path = NirTarget().export(student, tmp_path / "r.nir")
    graph = nir.read(path)
    assert graph.metadata["shortcuts"] == "shortcut9 shortcut13 shortcut17 shortcut21"
    into = {dst: sorted(src for src, d in graph.edges if d == dst) for dst in ("lif9", "lif13", "lif17", "lif21")}
    assert into == {
        "lif9": ["conv8", "shortcut9"],
        "lif13": ["conv12", "shortcut13"],
        "lif17": ["conv16", "shortcut17"],
        "lif21": ["conv20", "shortcut21"],
    }
    assert {(s, d) for s, d in graph.edges if d.startswith("shortcut")} == {
        ("avgpool5", "shortcut9"),
        ("lif9", "shortcut13"),
        ("lif13", "shortcut17"),
        ("lif17", "shortcut21"),
    }
    identity = graph.nodes["shortcut9"]
    assert identity.weight.shape == (8, 8, 1, 1) and np.array_equal(identity.weight[:, :, 0, 0], np.eye(8))
    assert np.array_equal(graph.nodes["shortcut13"].weight, student.body[13].proj.weight.detach().numpy())
    assert list(graph.nodes["shortcut13"].stride) == [2, 2]

    back = nir_read.student_from_nir(path)
    assert back.config == without_dropout(student.config)
    assert back.leak.item() == student.leak.item() and torch.equal(back.thresholds, student.thresholds)
    assert len(back.weighted_modules()) == len(student.weighted_modules()) == 15  # 11 convs, 3 projections, 1 linear
    for a, b in zip(student.weighted_modules(), back.weighted_modules(), strict=True):
        assert torch.equal(a.weight, b.weight)
    with torch.no_grad():
        x = images(2)
        assert torch.equal(back(x), student(x))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda g: g.nodes["shortcut9"].weight.__imul__(2), "weights are not the identity matrix"),
        (lambda g: g.edges.append(("shortcut9", "lif10")), "shortcut 'shortcut9' must be a Conv2d node"),
        (lambda g: g.edges.remove(("shortcut9", "lif9")), "shortcut 'shortcut9' must be a Conv2d node"),
        (
            lambda g: g.metadata.update(shortcuts="shortcut9 shortcut13"),
            "NIR node 'lif17': 2 incoming edges",
        ),
        (
            lambda g: (g.edges.remove(("avgpool5", "shortcut9")), g.edges.append(("input", "shortcut9"))),
            r"one edge from the chain \(after its Input\)",
        ),
        (
            lambda g: (g.nodes.update(stray=g.nodes["shortcut9"]), g.edges.append(("stray", "lif6"))),
            "NIR node 'lif6': 2 incoming edges",
        ),
        (lambda g: g.edges.append(("conv0", "lif0")), "nodes or edges outside"),
    ],
)
def test_reading_back_refuses_a_residual_graph_that_is_no_student(change, message):
    graph = nir_target.to_nir_graph(resnet_student())
    change(graph)
    with pytest.raises(UserError, match=message):
        nir_read.student_from_nir(graph)


@pytest.mark.parametrize("encoding", ["direct", "poisson"])
def test_biased_student_is_conv2d_bias_and_affine_and_runs_spike_exact_in_snntorch(tmp_path, encoding):
    """u = lam u + W s + b: a conv's bias is its Conv2d node's, a Linear with a bias is an Affine;
    snnTorch reproduces every spike and logit, and the student comes back exactly from the file."""
    student = make_student(encoding=encoding, timesteps=5, bias=True, seed=2)
    path = export(student, "nir", tmp_path / "b.nir")
    graph = nir.read(path)
    kinds = [type(graph.nodes[n]).__name__ for n in nir_read.chain(graph)]
    assert kinds == [
        "Input",
        "Conv2d",
        "LIF",
        "AvgPool2d",
        "Conv2d",
        "LIF",
        "AvgPool2d",
        "Flatten",
        "Affine",
        "LIF",
        "Affine",
        "Output",
    ]
    assert np.array_equal(graph.nodes["conv0"].bias, student.body[0].bias.detach().numpy())
    assert np.array_equal(graph.nodes["linear7"].bias, student.body[7].bias.detach().numpy())
    x = images(6)
    report = validate(student, path, x)
    assert report["passed"] and report["spike_agreement"] == 1.0 and report["max_abs_logit_error"] == 0.0
    assert all(0 < layer["spikes_reference"] for layer in report["layers"])
    back = nir_read.student_from_nir(path)
    assert back.config == without_dropout(student.config)
    for a, b in zip(student.weighted_modules(), back.weighted_modules(), strict=True):
        assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    unbiased = make_student(encoding=encoding, timesteps=5, seed=2)  # same weights, no bias: other spikes
    assert not np.array_equal(
        NirTarget().reference(unbiased, model_in(unbiased, x)).logits,
        NirTarget().run(path, model_in(student, x)).logits,
    )


def test_biased_residual_student_runs_spike_exact_in_snntorch(tmp_path):
    student = small_resnet(bias=True).float().eval()
    report = validate(student, export(student, "nir", tmp_path / "r.nir"), images(4))
    assert report["passed"] and report["spike_agreement"] == 1.0 and report["max_abs_logit_error"] == 0.0
    back = nir_read.student_from_nir(tmp_path / "r.nir")
    assert back.config == without_dropout(student.config)


def test_a_shortcut_with_a_bias_is_refused():
    graph = nir_target.to_nir_graph(resnet_student())
    graph.nodes["shortcut13"].bias[0] = 0.5
    with pytest.raises(UserError, match="a shortcut adds no bias"):
        nir_read.student_from_nir(graph)


def test_a_biased_linear_whose_bias_is_zero_comes_back_biased(tmp_path):
    """Our exporter writes an Affine only for a biased Linear: read back, it stays one even with a zero
    bias (another library's zero-bias Affine reads as a bias-free Linear; both compute the same)."""
    student = make_student(bias=True, seed=2)
    with torch.no_grad():
        student.body[7].bias.zero_()
    back = nir_read.student_from_nir(export(student, "nir", tmp_path / "z.nir"))
    assert back.config == without_dropout(student.config) and back.config.layers[-1].bias
    assert not nir_read.student_from_any_nir(tmp_path / "z.nir", library="snntorch").config.layers[-1].bias
