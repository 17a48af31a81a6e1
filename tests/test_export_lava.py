"""Lava target: netx file, Lava fixed-point run == Loihi-quantised mode, quantised mode == float where exact."""

from __future__ import annotations

import dataclasses

import h5py
import numpy as np
import pytest
import torch
from helpers import make_student, model_in, small_resnet
from lasnn_deploy.exporters import lava
from lasnn_deploy.exporters.lava import LavaTarget

from lasnn_deploy import exporters
from lasnn_deploy.errors import UserError
from lasnn_deploy.evaluation import evaluate_student
from lasnn_deploy.inputs import ModelInput
from lasnn_deploy.lava_compat import import_netx
from lasnn_deploy.loihi_quant import VTH_MAX, W_MAX, W_MIN, quantise, run_quantised
from lasnn_deploy.neurons import poisson_spikes
from lasnn_deploy.student import AvgPool, Conv, Flatten, Linear, Shortcut, SpikingStudent, StudentConfig


@pytest.mark.parametrize("encoding", ["direct", "poisson"])
def test_lava_run_equals_quantised_mode_spike_for_spike(tmp_path, encoding):
    student = make_student(encoding, timesteps=4)
    images = torch.rand(3, 1, 8, 8)
    spikes_in = poisson_spikes(images, 4, seed=3) if encoding == "poisson" else None
    path = exporters.export(student, "lava", tmp_path / "net.h5")
    got = LavaTarget().run(path, model_in(student, images, spikes_in))
    want = LavaTarget().reference(student, model_in(student, images, spikes_in))
    assert got.layer_names == want.layer_names == ["conv0", "conv3", "linear6"]
    for name, g, w in zip(want.layer_names, got.spikes, want.spikes, strict=True):
        assert g.shape == w.shape and g.shape[:2] == (4, 3), name
        assert np.array_equal(g, w), name
        assert 0 < w.mean() < 0.6, name  # the comparison is not vacuous
    assert np.array_equal(got.logits, want.logits)


def test_netx_file_layout(tmp_path):
    student = make_student("direct", timesteps=4, leak=0.75)
    net = quantise(student)
    LavaTarget().export(student, tmp_path / "net.h5")
    with h5py.File(tmp_path / "net.h5") as f:
        layers = f["layer"]
        types = [layers[str(i)]["type"][0].decode() for i in range(len(layers))]
        assert types == ["input", "conv", "flatten", "dense", "dense"]
        assert list(layers["0/shape"][()]) == [4, 8, 8] and layers["0/neuron/vThMant"][()] == net.layers[0].v_th
        conv = layers["1"]
        assert conv["weight"].shape == (6, 4, 6, 6)  # 3x3 kernel with the 2x2 pool folded in
        assert list(conv["stride"][()]) == [2, 2] and list(conv["padding"][()]) == [2, 2]
        weight = conv["weight"][()]
        assert weight.dtype.kind == "i" and W_MIN <= weight.min() <= weight.max() <= W_MAX
        assert conv["neuron/vDecay"][()] == 1024 and conv["neuron/iDecay"][()] == 4096
        assert layers["4/neuron/vThMant"][()] == VTH_MAX and layers["4/neuron/vDecay"][()] == 0
        assert f.attrs["timesteps"] == 4 and f.attrs["encoding"] == "direct"
        assert list(f.attrs["input_shape"]) == [1, 8, 8] and list(f.attrs["lif_layers"]) == net.lif_names
        assert f["host/weight"].dtype == np.float64


def test_quantisation_uses_the_weight_range():
    student = make_student("poisson", timesteps=4)
    net = quantise(student)
    thetas = student.thresholds.detach().double().numpy()
    for q in net.layers:
        assert q.weight.max() == W_MAX or q.weight.min() == W_MIN, q.name
        assert q.clip_fraction == 0
    assert [q.v_th for q in net.layers[:-1]] == [
        round(t * q.scale) for t, q in zip(thetas, net.layers[:-1], strict=True)
    ]
    assert net.v_decay == round((1 - 0.9) * 4096)


def representable_student() -> SpikingStudent:
    """A student whose folded weights are n / 256 and thresholds m / 256: the scale is 256 in every layer."""
    layers = (
        Conv(1, 3, 3, 1, 1),
        AvgPool(2),
        Conv(3, 4, 3, 1, 1),
        AvgPool(2),
        Flatten(),
        Linear(4 * 2 * 2, 6),
        Linear(6, 4),
    )
    cfg = StudentConfig("exact", (1, 8, 8), 4, layers, timesteps=5, encoding="poisson")
    student = SpikingStudent(cfg, leak=0.5, thresholds=[40 / 256, 20 / 256, 30 / 256]).double()
    return _representable_weights(student, pools=[1, 4, 4, 1], seed=0)  # folded weight = weight / pool area


def _representable_weights(
    student: SpikingStudent, pools: list[int], seed: int, unpinned: int | None = None
) -> SpikingStudent:
    """Weights n * pool area / 256 (n in [-30, 30]), whose folded form is n / 256; the first entry of
    every weight set but ``unpinned`` is W_MAX, which pins its scale to 254 / (254 / 256) = 256."""
    gen = torch.Generator().manual_seed(seed)
    for k, (m, area) in enumerate(zip(student.weighted_modules(), pools, strict=True)):
        n = torch.randint(-30, 31, m.weight.shape, generator=gen).double()
        if k != unpinned:
            n.view(-1)[0] = W_MAX
        with torch.no_grad():
            m.weight.copy_(n * area / 256)
    return student.eval()


def _assert_quantised_mode_exact(student: SpikingStudent, net) -> None:
    """The quantised mode equals the float64 student spike for spike and logit for logit, every layer firing."""
    spikes_in = poisson_spikes(torch.rand(16, 1, 8, 8, dtype=torch.float64), 5, seed=1)
    want = student.run(input_spikes=spikes_in, record=True)
    got = run_quantised(net, input_spikes=spikes_in)
    for g, w in zip(got.spikes, want.spikes, strict=True):
        assert torch.equal(g.double(), w.detach())
        assert 0 < w.mean() < 0.9
    assert torch.equal(got.logits, want.logits.detach())


def test_quantised_mode_equals_float64_student_with_representable_weights():
    """Pool folding, integer synapses, the truncating leak and the readout are exact here."""
    student = representable_student()
    net = quantise(student)
    assert [q.scale for q in net.layers] == [256.0] * 4 and net.v_decay == 2048
    _assert_quantised_mode_exact(student, net)


def representable_resnet() -> SpikingStudent:
    """Two residual blocks (an identity behind a pool, a stride-2 projection) whose folded weights are
    n / 256 and thresholds m / 256: the identity through the 2x2 pool is eye / 4, 64 at scale 256."""
    layers = (
        Conv(1, 3, 3, 1, 1),
        AvgPool(2),
        Conv(3, 3, 3, 1, 1),
        Conv(3, 3, 3, 1, 1),
        Shortcut(1, 3, 3),
        Conv(3, 4, 3, 2, 1),
        Conv(4, 4, 3, 1, 1),
        Shortcut(4, 3, 4, 2),
        Flatten(),
        Linear(16, 4),
    )
    cfg = StudentConfig("exact-resnet", (1, 8, 8), 4, layers, timesteps=5, encoding="poisson")
    student = SpikingStudent(cfg, leak=0.5, thresholds=[40 / 256, 20 / 256, 30 / 256, 25 / 256, 30 / 256]).double()
    # conv0, conv2 (behind the pool), conv3, conv5, conv6, projection 7, linear9; the projection shares
    # conv6's scale, so its own largest weight stays far from the edge
    return _representable_weights(student, pools=[1, 4, 1, 1, 1, 1, 1], seed=1, unpinned=5)


def test_residual_quantised_mode_equals_float64_student_with_representable_weights():
    """Shortcuts quantised in their layer's scale: with representable weights the mode is exact."""
    student = representable_resnet()
    net = quantise(student)
    assert [q.scale for q in net.layers] == [256.0] * 6
    identity, projection = net.layers[2].shortcut, net.layers[4].shortcut
    assert identity.weight.shape == (3, 3, 2, 2) and identity.stride == 2 and identity.lif == 0
    assert np.array_equal(identity.weight, 64 * np.eye(3, dtype=np.int64)[:, :, None, None].repeat(2, 2).repeat(2, 3))
    assert (
        np.array_equal(projection.weight, np.round(student.body[7].proj.weight.detach().numpy() * 256))
        and projection.lif == 2
    )
    _assert_quantised_mode_exact(student, net)


def test_refuses_a_residual_student_without_writing(tmp_path):
    with pytest.raises(UserError) as err:
        exporters.export(small_resnet().float(), "lava", tmp_path / "net.h5")
    assert str(err.value) == (
        "lava-dl netx describes feed-forward layer chains; resnet12 has residual shortcuts "
        "(layer 9): export it to onnx or nir instead"
    )
    assert not list(tmp_path.iterdir())


def test_direct_quantised_mode_tracks_float_student():
    student = make_student("direct", timesteps=4)
    images = torch.rand(32, 1, 8, 8)
    want = student.run(images, record=True)
    got = run_quantised(quantise(student), images)
    agreement = np.mean([(g.float() == w).float().mean().item() for g, w in zip(got.spikes, want.spikes, strict=True)])
    assert agreement > 0.97
    labels = want.logits.argmax(1)
    result = evaluate_student(student, torch.utils.data.TensorDataset(images, labels), batch_size=16, loihi=True)
    assert result["test_accuracy"] > 0.85
    assert result["spikes_per_sample"] == pytest.approx(sum(float(s.sum()) for s in got.spikes) / 32)


def test_refuses_soft_reset_without_writing(tmp_path):
    student = make_student(reset="soft")
    with pytest.raises(UserError, match=r"layer conv0: .*hard reset.*reset='soft'"):
        exporters.export(student, "lava", tmp_path / "net.h5")
    assert not list(tmp_path.iterdir())


def test_refuses_clipping_beyond_the_stated_fraction_without_writing(tmp_path):
    student = make_student("poisson")
    with pytest.raises(UserError, match=r"layer conv0: .*% of its weights would clip .*\[-256, 254\]"):
        lava.LavaTarget(weight_percentile=90).export(student, tmp_path / "net.h5")
    assert not list(tmp_path.iterdir())


def test_run_refuses_foreign_files_and_wrong_inputs(tmp_path):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.create_group("layer")
    with pytest.raises(UserError, match="not a lasnn-deploy netx file"):
        LavaTarget().run(other, ModelInput(images=torch.rand(1, 1, 8, 8)))
    path = LavaTarget().export(make_student("poisson"), tmp_path / "net.h5")
    with pytest.raises(UserError, match=r"input spikes \[T=4, B, 1, 8, 8\], got \[3, 2, 1, 8, 8\]"):
        LavaTarget().run(path, ModelInput(spikes=torch.zeros(3, 2, 1, 8, 8)))


@pytest.mark.parametrize("encoding", ["direct", "poisson"])
def test_biased_student_runs_bit_exact_in_lava(tmp_path, encoding):
    """Biases as netx's bias mantissas (exponent 6): 32 samples, every spike and logit of the Lava
    simulator equal to the quantised mode; the biases change what both compute."""
    student = make_student(encoding, timesteps=4, bias=True, seed=1)
    images = torch.rand(32, 1, 8, 8, generator=torch.Generator().manual_seed(7))
    spikes_in = poisson_spikes(images, 4, seed=3) if encoding == "poisson" else None
    path = exporters.export(student, "lava", tmp_path / "net.h5")
    with h5py.File(path) as f:
        first_on_chip = f["layer/1/bias"]
        assert first_on_chip.shape == ((6,) if encoding == "direct" else (4,)) and first_on_chip.dtype.kind == "i"
        assert ("host/bias" in f) == (encoding == "direct")
    got = LavaTarget().run(path, model_in(student, images, spikes_in))
    want = LavaTarget().reference(student, model_in(student, images, spikes_in))
    for name, g, w in zip(want.layer_names, got.spikes, want.spikes, strict=True):
        assert g.shape == w.shape and g.shape[:2] == (4, 32), name
        assert np.array_equal(g, w), name
        assert 0 < w.mean() < 0.6, name
    assert np.array_equal(got.logits, want.logits)
    unbiased = make_student(encoding, timesteps=4, seed=1)
    assert not np.array_equal(
        LavaTarget().reference(unbiased, model_in(unbiased, images, spikes_in)).logits, want.logits
    )


def test_quantised_mode_equals_float64_student_with_representable_biases():
    """Biases n / 256 are whole bias mantissas at scale 256: the quantised mode stays exact, readout included."""
    student = representable_student()
    cfg = student.config
    biased = SpikingStudent(
        cfg.replace(
            layers=tuple(dataclasses.replace(l, bias=True) if isinstance(l, (Conv, Linear)) else l for l in cfg.layers)
        ),
        leak=0.5,
        thresholds=student.thresholds.tolist(),
    ).double()
    state = student.state_dict()
    gen = torch.Generator().manual_seed(2)
    for m, name in zip(biased.weighted_modules(), ["body.0", "body.2", "body.5", "body.6"], strict=True):
        state[f"{name}.bias"] = torch.randint(-12, 13, m.bias.shape, generator=gen).double() / 256
    biased.load_state_dict(state)
    net = quantise(biased.eval())
    assert [q.scale for q in net.layers] == [256.0] * 4
    assert all(q.bias is not None and np.any(q.bias) for q in net.layers)
    _assert_quantised_mode_exact(biased, net)


@pytest.mark.parametrize("encoding", ["direct", "poisson"])
def test_one_long_lava_run_equals_the_reference_across_samples_batches_and_chunks(tmp_path, encoding):
    """Five samples in two batches (3 + 2) through ONE Lava run of two-sample chunks: every sample
    boundary (reset, next input) falls inside the run, between ``net.run`` calls and between
    batches, and every spike and logit still equals the quantised mode's."""
    student = make_student(encoding, timesteps=4, bias=True, seed=2)
    images = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(11))
    spikes_in = poisson_spikes(images, 4, seed=3) if encoding == "poisson" else None
    path = exporters.export(student, "lava", tmp_path / "net.h5")
    target = LavaTarget()
    target.chunk = 2
    batches = [slice(0, 3), slice(3, 5)]
    inputs = [
        ModelInput(images=images[b]) if spikes_in is None else ModelInput(spikes=spikes_in[:, b]) for b in batches
    ]
    results = list(target.run_stream(path, inputs))
    assert [r.logits.shape[0] for r in results] == [3, 2]
    got = lava._concat(results)
    want = target.reference(student, model_in(student, images, spikes_in))
    for name, g, w in zip(want.layer_names, got.spikes, want.spikes, strict=True):
        assert g.shape == w.shape and g.shape[:2] == (4, 5), name
        assert np.array_equal(g, w), name
        assert 0 < w[:, 1:].mean() < 0.6, name  # the samples after the first boundary fire too
    assert np.array_equal(got.logits, want.logits)
    assert len({tuple(row) for row in want.logits}) == 5  # five different samples, not one repeated


def test_matmul_conv_equals_lavas_scipy_conv():
    """The Conv model the Lava runs use computes what Lava's own (scipy) model does, exactly, for every
    stride, padding, dilation and group count (inputs up to 24-bit graded spikes, 8-bit weights)."""
    import_netx()  # Lava importable on Python 3.11
    from lasnn_deploy.exporters.lava_conv import conv
    from lava.proc.conv import utils

    rng = np.random.default_rng(0)
    for _ in range(60):
        groups = int(rng.choice([1, 2]))
        c_in, c_out = groups * int(rng.integers(1, 4)), groups * int(rng.integers(1, 4))
        kernel = (int(rng.integers(1, 5)), int(rng.integers(1, 5)))
        stride, padding, dilation = (
            tuple(int(v) for v in rng.integers(lo, hi, 2)) for lo, hi in ((1, 3), (0, 3), (1, 3))
        )
        x = rng.integers(
            -(2**23), 2**23, size=(int(rng.integers(9, 14)), int(rng.integers(9, 14)), c_in), dtype=np.int32
        )
        w = rng.integers(-128, 128, size=(c_out, *kernel, c_in // groups), dtype=np.int32)
        want = utils.conv_scipy(x, w, kernel, stride, padding, dilation, groups).astype(np.int32)
        got = conv(x, w, stride, padding, dilation, groups).astype(np.int32)
        assert got.shape == want.shape and np.array_equal(got, want), (kernel, stride, padding, dilation, groups)
