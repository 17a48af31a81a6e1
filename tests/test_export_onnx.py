"""ONNX target: spike-exact round trips in onnxruntime, file format, metadata and failure modes.

The file computes every synaptic current in float64 and rounds it once to float32, like
``SpikingStudent.run(exact=True)``, so spikes and logits must be identical bit for bit with
ordinary float weights and images: any difference is an error of the graph. Plain float32
kernels flipped spikes near the threshold on about 2% of samples of a random student firing ~15%
(the case ``test_random_student_near_threshold_is_spike_exact`` keeps). One dyadic student
(every sum exact in float32) also ties the graph to the float64 student of docs/semantics.md.
"""

from __future__ import annotations

import copy
import os

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from helpers import make_student, model_in, resnet_student
from lasnn_deploy.exporters import export
from lasnn_deploy.exporters import onnx as onnx_export
from lasnn_deploy.exporters.onnx import OnnxTarget

from lasnn_deploy.errors import UserError
from lasnn_deploy.inputs import ModelInput, model_input
from lasnn_deploy.student import AvgPool, Conv, Flatten, Linear, SpikingStudent, StudentConfig
from lasnn_deploy.validation import validate

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def random_images(n: int = 24, shape=(1, 8, 8), seed: int = 0) -> torch.Tensor:
    """Uniform images; the seed is offset from the Poisson encoder's (same seed, same draws)."""
    return torch.rand((n, *shape), generator=torch.Generator().manual_seed(1000 + seed))


def inputs_for(student: SpikingStudent, images: torch.Tensor):
    """(images, input_spikes) as validate passes them: spikes for Poisson, images for direct."""
    if student.config.encoding == "poisson":
        return None, model_input("poisson", student.config.timesteps, images, seed=1).spikes
    return images, None


def assert_identical(got, ref, lo: float = 0.01, hi: float = 0.6) -> None:
    assert got.layer_names == ref.layer_names
    for name, s, r in zip(got.layer_names, got.spikes, ref.spikes, strict=True):
        assert s.shape == r.shape, name
        np.testing.assert_array_equal(s, r, err_msg=name)
        assert lo < r.mean() < hi, f"{name} fires {r.mean():.3f}: the test would not exercise the neuron"
    np.testing.assert_array_equal(got.logits, ref.logits)


def ort_session(g: onnx_export._Graph, out: str):
    """A float64 graph part built by the exporter, from input ``x`` to ``out``."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        g.nodes,
        "part",
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, None)],
        [helper.make_tensor_value_info(out, TensorProto.DOUBLE, None)],
        g.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", onnx_export.OPSET)])
    model.ir_version = onnx_export.IR_VERSION
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize(
    "encoding,reset,timesteps",
    [
        ("direct", "hard", 3),
        ("direct", "soft", 6),
        ("poisson", "hard", 6),
        ("poisson", "soft", 3),
        ("direct", "hard", 1),
        ("poisson", "soft", 1),
        ("direct", "hard", 8),
    ],
)
def test_round_trip_with_float_weights_is_bit_exact(tmp_path, encoding, reset, timesteps):
    student = make_student(encoding, reset, timesteps, seed=timesteps)
    images, spikes = inputs_for(student, random_images(seed=timesteps))
    got = OnnxTarget().run(OnnxTarget().export(student, tmp_path / "s.onnx"), model_in(student, images, spikes))
    ref = OnnxTarget().reference(student, model_in(student, images, spikes))
    assert got.layer_names == ["conv0", "conv3", "linear6"]
    assert got.spikes[0].shape == (timesteps, 24, 4, 8, 8)
    assert_identical(got, ref)


def test_random_student_near_threshold_is_spike_exact(tmp_path):
    """The MNIST-sized random student whose float32 export flipped spikes on 214 of 10,000 MNIST
    samples: thresholds tuned to ~15% firing, 256 images; every spike and logit must agree."""
    layers = (
        Conv(1, 16, 3, 1, 1),
        AvgPool(2),
        Conv(16, 32, 3, 1, 1),
        AvgPool(2),
        Flatten(),
        Linear(32 * 7 * 7, 128),
        Linear(128, 10),
    )
    cfg = StudentConfig("near-threshold", (1, 28, 28), 10, layers, timesteps=8, encoding="direct")
    torch.manual_seed(1)
    student = SpikingStudent(cfg, leak=0.9).eval()
    images = random_images(256, (1, 28, 28), seed=2)
    with torch.no_grad():
        for k in range(3):  # bisect each threshold (log scale) to a firing rate of 15%
            lo, hi = 1e-3, 1e2
            for _ in range(12):
                student.thresholds[k] = (lo * hi) ** 0.5
                rate = student.run(images[:32], record=True).spikes[k].mean()
                lo, hi = (float(student.thresholds[k]), hi) if rate > 0.15 else (lo, float(student.thresholds[k]))
    got = OnnxTarget().run(OnnxTarget().export(student, tmp_path / "s.onnx"), model_in(student, images))
    ref = OnnxTarget().reference(student, model_in(student, images))
    assert_identical(got, ref, lo=0.1, hi=0.2)


def test_dyadic_student_matches_the_float64_student(tmp_path):
    """Weights on a 2^-6 grid, pixels on 2^-4: every sum is exact, so float32 and float64 agree."""
    student = make_student("poisson", "hard", 5, leak=0.5, seed=3)
    with torch.no_grad():
        for m in student.weighted_modules():
            m.weight.copy_(torch.round(m.weight * 64) / 64)
        student.thresholds.copy_(torch.tensor([0.3125, 0.1875, 0.1875]))
    images, spikes = inputs_for(student, torch.round(random_images() * 16) / 16)
    got = OnnxTarget().run(OnnxTarget().export(student, tmp_path / "s.onnx"), model_in(student, images, spikes))
    ref64 = OnnxTarget().reference(
        copy.deepcopy(student).double(), model_in(copy.deepcopy(student).double(), images, spikes)
    )
    assert_identical(got, OnnxTarget().reference(student, model_in(student, images, spikes)))
    for s, r in zip(got.spikes, ref64.spikes, strict=True):
        np.testing.assert_array_equal(s, r)
    np.testing.assert_allclose(got.logits, ref64.logits, rtol=0, atol=1e-6)


@pytest.mark.parametrize("stride,padding,size", [(1, 1, 9), (2, 0, 11), (2, 2, 10), (3, 1, 13)])
def test_float64_conv_without_conv_node_matches_torch(stride, padding, size):
    """onnxruntime has no float64 Conv: the slice-and-MatMul form equals torch's float64 conv2d, bit for
    bit once rounded to float32 (which a float32 conv does not: the last assertion)."""
    x = torch.rand(3, 5, size, size, generator=torch.Generator().manual_seed(size), dtype=torch.float64)
    w = torch.randn(7, 5, 3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref = F.conv2d(x, w, stride=stride, padding=padding)
    g = onnx_export._Graph()
    out = g.conv("x", w.numpy(), stride, padding, tuple(ref.shape[1:]))
    got = ort_session(g, out).run(None, {"x": x.numpy()})[0]
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref.numpy(), rtol=1e-13, atol=1e-13)
    np.testing.assert_array_equal(got.astype(np.float32), ref.float().numpy())  # the same after the one rounding
    assert not np.array_equal(
        F.conv2d(x.float(), w.float(), stride=stride, padding=padding).numpy(), ref.float().numpy()
    )


def test_float64_pooling_matches_torch_rounding():
    """Pools are added in torch's order and divided by k * k, also where k does not divide the map."""
    x = torch.rand(4, 3, 25, 25, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for k in (2, 3, 4):
        ref = F.avg_pool2d(x, k)
        g = onnx_export._Graph()
        out = g.avgpool("x", k, tuple(ref.shape[1:]))
        np.testing.assert_array_equal(ort_session(g, out).run(None, {"x": x.numpy()})[0], ref.numpy())


def test_spike_counts_and_dynamic_batch(tmp_path):
    import onnxruntime as ort

    student = make_student("direct", "hard", 4)
    images = random_images(7)
    path = OnnxTarget().export(student, tmp_path / "s.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits", "spike_count_0", "spike_count_1", "spike_count_2"]
    full = session.run(None, {"image": images.numpy()})
    one = session.run(None, {"image": images[:1].numpy()})
    ref = OnnxTarget().reference(student, model_in(student, images))
    for k, r in enumerate(ref.spikes):
        np.testing.assert_array_equal(full[1 + k], r.reshape(4, 7, -1).sum(axis=(0, 2)))
        assert full[1 + k].shape == (7,)
    for a, b in zip(full, one, strict=True):
        np.testing.assert_array_equal(a[:1], b)


@pytest.mark.parametrize("encoding", ["direct", "poisson"])
def test_run_and_reference_in_chunks_equal_one_call(tmp_path, monkeypatch, encoding):
    student = make_student(encoding, "hard", 3)
    images = random_images(12)
    path = OnnxTarget().export(student, tmp_path / "s.onnx")
    whole = OnnxTarget().run(path, model_in(student, images))
    with torch.no_grad():
        whole_ref = student.run(images, record=True, exact=True)  # Poisson: encoded from the images with seed 0
    monkeypatch.setattr(onnx_export, "RUN_CHUNK", 5)
    for chunked in (
        OnnxTarget().run(path, model_in(student, images)),
        OnnxTarget().reference(student, model_in(student, images)),
    ):
        np.testing.assert_array_equal(chunked.logits, whole.logits)
        np.testing.assert_array_equal(chunked.logits, whole_ref.logits.numpy())
        for a, b, r in zip(chunked.spikes, whole.spikes, whole_ref.spikes, strict=True):
            assert a.shape == (3, 12, *a.shape[2:])
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(a, r.numpy())


def test_image_pool_student_round_trip(tmp_path):
    """A student that pools the image first: the pre-LIF layers run once, like SpikingStudent.run."""
    layers = (AvgPool(2), Conv(2, 4, 3, 2, 1), AvgPool(2), Flatten(), Linear(4 * 1 * 1, 3))
    cfg = StudentConfig("pool-first", (2, 9, 9), 3, layers, timesteps=4, encoding="direct")
    torch.manual_seed(0)
    student = SpikingStudent(cfg, leak=0.75, thresholds=[0.05]).eval()
    images = random_images(16, (2, 9, 9))
    path = OnnxTarget().export(student, tmp_path / "p.onnx")
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert not ops & {"Conv", "AveragePool"}  # neither runs in float64 in onnxruntime
    got, ref = (
        OnnxTarget().run(path, model_in(student, images)),
        OnnxTarget().reference(student, model_in(student, images)),
    )
    assert_identical(got, ref, hi=0.9)


def test_file_is_single_unrolled_opset17_model_with_metadata(tmp_path):
    student = make_student("poisson", "soft", timesteps=6)
    path = OnnxTarget().export(student, tmp_path / "s.onnx")
    assert sorted(os.listdir(tmp_path)) == ["s.onnx"]
    model = onnx.load(str(path), load_external_data=False)
    onnx.checker.check_model(model, full_check=True)
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    ops = [n.op_type for n in model.graph.node]
    assert not set(ops) & {"Loop", "Scan", "If"}
    assert ops.count("Greater") == 6 * 3  # T steps x LIF layers
    assert ops.count("MatMul") == 9 + 9 + 2  # one per kernel offset of each 3x3 conv, one per linear
    weights = [
        t for t in model.graph.initializer if t.dims and np.prod(t.dims) > 1 and t.data_type != onnx.TensorProto.INT64
    ]
    assert weights and all(t.data_type == onnx.TensorProto.DOUBLE for t in weights)
    assert sum(int(np.prod(t.dims)) for t in weights) == sum(m.weight.numel() for m in student.weighted_modules())
    (inp,) = model.graph.input
    assert inp.name == "spikes"
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_value == 6 and dims[1].dim_param == "batch" and [d.dim_value for d in dims[2:]] == [1, 8, 8]
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["format"] == onnx_export.FORMAT
    assert meta["currents"] == "float64-rounded"
    assert (meta["timesteps"], meta["encoding"], meta["reset"], meta["num_classes"]) == ("6", "poisson", "soft", "5")
    assert meta["input_shape"] == "[1, 8, 8]"
    assert meta["layer_names"] == '["conv0", "conv3", "linear6"]'


def test_direct_encoding_runs_first_conv_once(tmp_path):
    """The first current is computed once on [B, ...] and fed to every step: only the later LIFs split."""
    model = onnx.load(str(OnnxTarget().export(make_student("direct", "hard", timesteps=5), tmp_path / "s.onnx")))
    assert model.graph.input[0].name == "image"
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("MatMul") == 9 + 9 + 2 and ops.count("Split") == 2


def test_run_leaves_file_untouched_and_reference_keeps_mode(tmp_path):
    student = make_student("direct", "hard", timesteps=3).train()
    path = OnnxTarget().export(student, tmp_path / "s.onnx")
    before = path.read_bytes()
    images = torch.rand(2, 1, 8, 8)
    OnnxTarget().run(path, model_in(student, images))
    OnnxTarget().reference(student, model_in(student, images))
    assert path.read_bytes() == before
    assert student.training


def test_input_mismatch_is_a_user_error(tmp_path):
    direct = OnnxTarget().export(make_student("direct", timesteps=4), tmp_path / "d.onnx")
    poisson = OnnxTarget().export(make_student("poisson", timesteps=4), tmp_path / "p.onnx")
    with pytest.raises(UserError, match=r"images \[B, 1, 8, 8\]"):
        OnnxTarget().run(direct, ModelInput(images=torch.rand(2, 1, 9, 9)))
    with pytest.raises(UserError, match="exactly one"):
        OnnxTarget().run(direct, ModelInput(spikes=None))
    with pytest.raises(UserError, match=r"input spikes \[T=4, B, 1, 8, 8\]"):
        OnnxTarget().run(poisson, ModelInput(spikes=torch.zeros(5, 2, 1, 8, 8)))
    with pytest.raises(UserError, match=r"input spikes \[T=4, B"):
        OnnxTarget().run(poisson, ModelInput(spikes=torch.zeros(4, 2, 3, 8, 8)))
    with pytest.raises(UserError, match=r"images \[B, 1, 8, 8\], got \[0"):
        OnnxTarget().run(direct, ModelInput(images=torch.zeros(0, 1, 8, 8)))


def test_poisson_file_encodes_images_like_the_student(tmp_path):
    student = make_student("poisson", timesteps=4)
    images = torch.rand(3, 1, 8, 8)
    got = OnnxTarget().run(OnnxTarget().export(student, tmp_path / "p.onnx"), model_in(student, images))
    with torch.no_grad():
        ref = student.run(images, record=True)
    np.testing.assert_array_equal(got.spikes[0], ref.spikes[0].numpy())


def test_broken_or_foreign_files_are_user_errors(tmp_path):
    from onnx import TensorProto, helper

    good = OnnxTarget().export(make_student(timesteps=2), tmp_path / "s.onnx").read_bytes()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(good[: len(good) // 2])
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model at all")
    foreign = tmp_path / "foreign.onnx"
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(foreign))
    older = tmp_path / "older.onnx"  # a float32-current export of the first format
    model = onnx.load_from_string(good)
    next(p for p in model.metadata_props if p.key == "format").value = "lasnn-deploy-onnx/1"
    onnx.save(model, str(older))
    images = torch.rand(1, 1, 8, 8)
    for path, message in [
        (truncated, "not a readable ONNX model"),
        (garbage, "not a readable ONNX model"),
        (foreign, "not a lasnn-deploy ONNX export"),
        (older, "older lasnn-deploy ONNX export .* again"),
        (tmp_path / "missing.onnx", "no ONNX file"),
    ]:
        with pytest.raises(UserError, match=message) as info:
            OnnxTarget().run(path, ModelInput(images=images))
        assert "\n" not in str(info.value)


def test_failed_export_leaves_no_file(tmp_path):
    student = make_student(timesteps=2)
    (tmp_path / "plain_file").write_text("x")
    (tmp_path / "taken.onnx").mkdir()
    with pytest.raises(UserError, match="cannot write"):
        OnnxTarget().export(student, tmp_path / "plain_file" / "s.onnx")
    with pytest.raises(UserError, match="is a folder"):
        OnnxTarget().export(student, tmp_path / "taken.onnx")  # refused before anything is written
    with pytest.raises(UserError, match=r"\.onnx"):
        OnnxTarget().export(student, tmp_path / "s.bin")
    with torch.no_grad():
        student.thresholds[1] = float("nan")
    with pytest.raises(UserError, match="thresholds"):
        OnnxTarget().export(student, tmp_path / "nan.onnx")
    assert sorted(os.listdir(tmp_path)) == ["plain_file", "taken.onnx"]
    assert os.listdir(tmp_path / "taken.onnx") == []


def test_check_names_the_layer_with_bad_weights():
    student = make_student(timesteps=2)
    with torch.no_grad():
        student.body[3].weight[0, 0, 0, 0] = float("inf")
    with pytest.raises(UserError, match=r"body\.3\.weight"):
        OnnxTarget().check(student)
    OnnxTarget().check(make_student(reset="soft"))  # soft reset is expressible in ONNX


@pytest.mark.parametrize("encoding,reset", [("direct", "hard"), ("poisson", "soft"), ("direct", "soft")])
def test_biased_student_is_bit_exact(tmp_path, encoding, reset):
    """u = lam u + W s + b: the biases' Add nodes inside the one rounding, spikes and logits bit for bit."""
    student = make_student(encoding, reset, 6, seed=4, bias=True)
    images, spikes = inputs_for(student, random_images(seed=4))
    got = OnnxTarget().run(OnnxTarget().export(student, tmp_path / "s.onnx"), model_in(student, images, spikes))
    assert_identical(got, OnnxTarget().reference(student, model_in(student, images, spikes)))
    unbiased = copy.deepcopy(student)
    with torch.no_grad():
        for m in unbiased.weighted_modules():
            m.bias.zero_()
    assert not np.array_equal(got.logits, OnnxTarget().reference(unbiased, model_in(unbiased, images, spikes)).logits)


def test_dyadic_biased_student_matches_the_float64_student(tmp_path):
    """Weights and biases on a 2^-6 grid: every current is exact, so the file equals the float64 student."""
    student = make_student("direct", "hard", 5, leak=0.5, seed=3, bias=True)
    with torch.no_grad():
        for m in student.weighted_modules():
            m.weight.copy_(torch.round(m.weight * 64) / 64)
            m.bias.copy_(torch.round(m.bias * 64) / 64)
        student.thresholds.copy_(torch.tensor([0.3125, 0.1875, 0.1875]))
    assert all(m.bias.abs().max() > 0 for m in student.weighted_modules())
    images = torch.round(random_images() * 16) / 16
    got = OnnxTarget().run(OnnxTarget().export(student, tmp_path / "s.onnx"), model_in(student, images))
    ref64 = OnnxTarget().reference(copy.deepcopy(student).double(), model_in(copy.deepcopy(student).double(), images))
    for s, r in zip(got.spikes, ref64.spikes, strict=True):
        np.testing.assert_array_equal(s, r)
    np.testing.assert_allclose(got.logits, ref64.logits, rtol=0, atol=1e-6)


@pytest.mark.parametrize("encoding,bias", [("direct", False), ("poisson", False), ("direct", True)])
def test_resnet_student_is_bit_exact_in_onnxruntime(tmp_path, encoding, bias):
    """export + validate as the CLI runs them; then every spike and logit against ``run(exact=True)``."""
    student = resnet_student(encoding, bias)
    images, spikes = inputs_for(student, random_images(6))
    path = export(student, "onnx", tmp_path / "r.onnx")
    report = validate(student, path, random_images(6))
    assert report["passed"] and report["spike_agreement"] == 1.0
    got, ref = (
        OnnxTarget().run(path, model_in(student, images, spikes)),
        OnnxTarget().reference(student, model_in(student, images, spikes)),
    )
    assert got.layer_names[4::2] == ["shortcut9", "shortcut13", "shortcut17", "shortcut21"]
    assert_identical(got, ref)


def test_resnet_file_holds_every_weight_and_projection_in_float64(tmp_path, monkeypatch):
    """Weights in the file = Conv + Linear + 1x1 projections (identity shortcuts add none); the size
    check counts the projections too."""
    student = resnet_student("direct")
    model = onnx.load(str(OnnxTarget().export(student, tmp_path / "r.onnx")))
    weights = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.DOUBLE and np.prod(t.dims) > 1]
    total = sum(v.numel() for k, v in student.state_dict().items() if k.endswith("weight"))
    projections = sum(v.numel() for k, v in student.state_dict().items() if k.endswith("proj.weight"))
    assert projections == 8 * 16 + 16 * 32 + 32 * 64
    assert sum(int(np.prod(t.dims)) for t in weights) == total
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Greater") == 6 * 11  # T steps x LIF layers, block LIFs included
    assert ops.count("MatMul") == 9 * 11 + 3 + 1  # 3x3 convs, 1x1 projections, the linear
    monkeypatch.setattr(onnx_export, "MAX_BYTES", 8 * (total - 1))
    with pytest.raises(UserError, match=f"{total:,} weights"):
        OnnxTarget().check(student)
