"""Property tests: random small students keep every export's promise (hypothesis).

Students are drawn as data: an optional pool on the image, 0-2 convolutions (kernel 1-3, stride
1-2, padding 0-1), each maybe followed by a dropout and a pool that divides its map, a flatten,
0-2 hidden linears and the output linear, with or without a bias on every Conv and Linear; leak in
(0, 1], one threshold per LIF layer, T in 1..6, direct or Poisson input. For each target, what it
promises:

- ONNX: the file run in onnxruntime gives the spikes of ``onnx.reference`` (the student's exact
  float64-current mode) bit for bit, and its logits within float32 rounding.
- Lava: the Loihi-quantised mode (``loihi_quant.run_quantised``) equals an independent int64 numpy
  implementation of Lava's bit-accurate CUBA LIF (``PyLifModelBitAcc``) over the
  folded integer weights; a few students also go through the real Lava simulator. Random residual
  students (resnet12 at width 1/8) check the quantised mode's shortcuts the same way.
- NIR: ``nir.write`` then ``nir.read`` and ``student_from_nir`` give back every parameter exactly.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import model_in
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lasnn_deploy.exporters.lava import LavaTarget
from lasnn_deploy.exporters.nir import NirTarget
from lasnn_deploy.exporters.onnx import OnnxTarget

from lasnn_deploy import nir_read
from lasnn_deploy.inputs import model_input
from lasnn_deploy.loihi_quant import VTH_MAX, W_MAX, W_MIN, LoihiNet, QuantLayer, quantise, run_quantised
from lasnn_deploy.models import build_student
from lasnn_deploy.student import AvgPool, Conv, Dropout, Flatten, Linear, SpikingStudent, StudentConfig, deployed_layers

EXAMPLES = settings(
    max_examples=50,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
BATCH = 3


# -- random students -------------------------------------------------------------------------------
def _pools(h: int, w: int) -> list[int]:
    return [k for k in (2, 3) if h % k == 0 and w % k == 0]


@st.composite
def students(
    draw, resets=("hard", "soft"), encodings=("direct", "poisson")
) -> tuple[SpikingStudent, torch.Tensor, torch.Tensor | None]:
    """A random valid student, ``BATCH`` images in [0, 1], and its input spikes (Poisson) or None."""
    channels, height, width = draw(st.integers(1, 2)), draw(st.integers(3, 9)), draw(st.integers(3, 9))
    h, w = height, width
    layers: list = []
    if _pools(h, w) and draw(st.booleans()):
        k = draw(st.sampled_from(_pools(h, w)))
        layers.append(AvgPool(k))
        h, w = h // k, w // k
    c, bias = channels, draw(st.booleans())
    for _ in range(draw(st.integers(0, 2))):
        padding = draw(st.integers(0, 1))
        kernel = draw(st.integers(1, min(3, h + 2 * padding, w + 2 * padding)))
        stride = draw(st.integers(1, 2))
        out = draw(st.integers(1, 4))
        layers.append(Conv(c, out, kernel, stride, padding, bias=bias))
        c, h, w = out, *((s + 2 * padding - kernel) // stride + 1 for s in (h, w))
        if draw(st.booleans()):
            layers.append(Dropout(0.2))
        if _pools(h, w) and draw(st.booleans()):
            k = draw(st.sampled_from(_pools(h, w)))
            layers.append(AvgPool(k))
            h, w = h // k, w // k
    layers.append(Flatten())
    features = c * h * w
    has_conv = any(isinstance(l, Conv) for l in layers)
    for _ in range(draw(st.integers(0 if has_conv else 1, 2))):  # at least one LIF layer
        units = draw(st.integers(1, 8))
        layers.append(Linear(features, units, bias=bias))
        features = units
    classes = draw(st.integers(2, 5))
    layers.append(Linear(features, classes, bias=bias))
    config = StudentConfig(
        "random",
        (channels, height, width),
        classes,
        tuple(layers),
        timesteps=draw(st.integers(1, 6)),
        encoding=draw(st.sampled_from(encodings)),
        reset=draw(st.sampled_from(resets)),
    )
    leak = draw(st.one_of(st.just(1.0), st.floats(0.01, 1.0)))
    thresholds = draw(
        st.lists(st.floats(0.02, 1.0), min_size=len(config.spiking_layers), max_size=len(config.spiking_layers))
    )
    return _with_random_weights(draw, config, leak, thresholds)


def _with_random_weights(draw, config: StudentConfig, leak: float, thresholds: list[float]):
    """The student of ``config`` with drawn weights, ``BATCH`` images and its input spikes (Poisson) or None."""
    gain, seed = draw(st.floats(1.0, 5.0)), draw(st.integers(0, 2**31 - 1))
    student = SpikingStudent(config, leak=leak, thresholds=thresholds)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in student.weighted_modules():
            fan_in = module.weight[0].numel()
            module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * gain / math.sqrt(fan_in))
            if module.bias is not None:  # about a third of a unit input's current
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * gain / 3)
    images = torch.rand(BATCH, *config.input_shape, generator=generator)
    spikes = (
        model_input("poisson", config.timesteps, images, seed=seed).spikes if config.encoding == "poisson" else None
    )
    return student.eval(), images, spikes


@st.composite
def residual_students(draw) -> tuple[SpikingStudent, torch.Tensor, torch.Tensor | None]:
    """resnet12 at width 1/8 (an identity shortcut behind a pool, three strided projections), drawn like ``students``."""
    config = build_student(
        "resnet12",
        (draw(st.integers(1, 2)), 8, 8),
        draw(st.integers(2, 5)),
        width=0.125,
        timesteps=draw(st.integers(1, 6)),
        encoding=draw(st.sampled_from(("direct", "poisson"))),
    )
    leak = draw(st.one_of(st.just(1.0), st.floats(0.01, 1.0)))
    n = len(config.spiking_layers)
    return _with_random_weights(draw, config, leak, draw(st.lists(st.floats(0.02, 1.0), min_size=n, max_size=n)))


# -- ONNX ------------------------------------------------------------------------------------------
@EXAMPLES
@given(case=students())
def test_onnx_export_is_spike_exact(case, tmp_path_factory):
    student, images, spikes = case
    path = OnnxTarget().export(student, tmp_path_factory.mktemp("onnx") / "student.onnx")
    direct = images if spikes is None else None
    got = OnnxTarget().run(path, model_in(student, direct, spikes))
    want = OnnxTarget().reference(student, model_in(student, direct, spikes))
    assert got.layer_names == want.layer_names and len(got.spikes) == len(student.config.spiking_layers)
    for name, a, b in zip(want.layer_names, want.spikes, got.spikes, strict=True):
        assert a.shape == b.shape and np.array_equal(a, b), f"{name}: {int((a != b).sum())} spikes differ"
    np.testing.assert_allclose(got.logits, want.logits, rtol=1e-6, atol=1e-6)


# -- NIR -------------------------------------------------------------------------------------------
@EXAMPLES
@given(case=students(resets=("hard",)))
def test_nir_round_trip_keeps_every_parameter(case, tmp_path_factory):
    import nir

    student, _, _ = case
    path = NirTarget().export(student, tmp_path_factory.mktemp("nir") / "student.nir")
    back = nir_read.student_from_nir(nir.read(path))
    without_dropout = tuple(l for l in student.config.layers if not isinstance(l, Dropout))
    assert back.config == student.config.replace(layers=without_dropout)
    assert back.leak.item() == student.leak.item()
    assert torch.equal(back.thresholds, student.thresholds)
    weights = [m.weight for m in student.weighted_modules()]
    assert all(torch.equal(a, b.weight) for a, b in zip(weights, back.weighted_modules(), strict=True))
    assert len(weights) == len(back.weighted_modules())
    for a, b in zip(student.weighted_modules(), back.weighted_modules(), strict=True):
        assert (a.bias is None and b.bias is None) or torch.equal(a.bias, b.bias)


# -- Lava: an independent int64 implementation of Loihi's fixed-point LIF ------------------------------
STATE = 2**23  # u and v are 24-bit signed


def _wrap_current(u: np.ndarray) -> np.ndarray:
    """Lava's AbstractPyLifModelFixed: a current beyond 24 bits wraps around (modulo 2**24)."""
    wrapped = np.where(u > STATE, u - 2 * STATE, u)
    return np.where(wrapped <= -STATE, u + 2 * STATE, wrapped)


def _decay(x: np.ndarray, decay: int) -> np.ndarray:
    """``x * (4096 - decay) >> 12`` with the shift applied to the magnitude (rounds towards zero)."""
    product = x * (4096 - decay)
    return np.sign(product) * (np.abs(product) >> 12)


def loihi_lif(
    drive: np.ndarray, v_decay: int, v_th: int, *, synaptic: bool, bias_mant: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Lava's bit-accurate CUBA LIF with iDecay = 4096 over ``drive [T, ...]`` (int64).

    ``synaptic``: ``drive`` is the synaptic input ``a`` (``u = wrap(a << 6)``), plus the layer's
    bias mantissas ``bias_mant`` (``<< 6``, every step) if any; else ``drive`` is the bias mantissa
    of netx's input block (``bias << 6`` added to ``v``). Returns spikes and the last ``v``.
    """
    v = np.zeros(drive.shape[1:], np.int64)
    spikes = np.zeros(drive.shape, np.int64)
    for t, x in enumerate(drive):
        u = _wrap_current(x << 6) if synaptic else np.zeros_like(v)
        bias = (0 if bias_mant is None else bias_mant << 6) if synaptic else x << 6
        v = np.clip(_decay(v, v_decay) + u + bias, -STATE + 1, STATE - 1)
        spikes[t] = v > (v_th << 6)
        v = np.where(spikes[t] == 1, 0, v)
    return spikes, v


def _synapses(layer: QuantLayer, x: np.ndarray) -> np.ndarray:
    """Conv (im2col) or dense of ``x [N, ...]`` with the layer's weights, in the weights' dtype."""
    if layer.kind == "linear":
        return x.reshape(len(x), -1) @ layer.weight.T
    return _conv(x, layer.weight, layer.stride, layer.padding)


def _conv(x: np.ndarray, w: np.ndarray, s: int, p: int) -> np.ndarray:
    k = w.shape[-1]
    padded = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (k, k), axis=(2, 3))[:, :, ::s, ::s]
    return np.einsum("nchwij,ocij->nohw", windows, w)


def _per_neuron(layer: QuantLayer, bias: np.ndarray | None, none):
    """A layer's bias ``[out]`` broadcastable over its ``[N, ...]`` output (per channel for a conv)."""
    if bias is None:
        return none
    return bias.reshape(-1, 1, 1) if layer.kind == "conv" else bias


def _wrap_conv(a: np.ndarray) -> np.ndarray:
    """Lava's Conv clamps its output to signed 24 bits by wrapping."""
    return (a + STATE) % (2 * STATE) - STATE


def reimplemented_lava(net: LoihiNet, images: np.ndarray, input_spikes: np.ndarray | None):
    """Spikes ``[T, B, ...]`` of every LIF layer and the logits, computed in numpy int64."""
    T, recorded = net.timesteps, []
    layers = net.layers
    if net.encoding == "direct":  # the host computes the first layer once; netx's input block gets it as bias
        host, layers = layers[0], layers[1:]
        current = _synapses(host, images.astype(np.float64)) + _per_neuron(host, host.bias, 0.0)  # W x + b on the host
        bias = np.clip(np.round(current * host.scale), -4096, 4095).astype(np.int64)
        spikes, _ = loihi_lif(np.broadcast_to(bias, (T, *bias.shape)), net.v_decay, host.v_th, synaptic=False)
        recorded.append(spikes)
    else:
        spikes = input_spikes.astype(np.int64)
    for layer in layers:
        a = np.stack([_synapses(layer, s_t) for s_t in spikes])
        if layer.kind == "conv":
            a = _wrap_conv(a)
        if layer.shortcut is not None:  # a Conv of its own from an earlier LIF layer, into the same neurons
            sc = layer.shortcut
            a = a + _wrap_conv(np.stack([_conv(s_t, sc.weight, sc.stride, 0) for s_t in recorded[sc.lif]]))
        out, v = loihi_lif(
            a,
            0 if layer.is_output else net.v_decay,
            layer.v_th,
            synaptic=True,
            bias_mant=_per_neuron(layer, layer.bias, None),
        )
        if layer.is_output:
            return recorded, v / (64 * layer.scale * T)
        spikes = out
        recorded.append(spikes)
    raise AssertionError("the network has no output layer")


@EXAMPLES
@given(case=students(resets=("hard",)))
def test_loihi_quantised_mode_equals_an_int64_reimplementation(case):
    _check_quantised_mode(*case)


@settings(EXAMPLES, max_examples=25)
@given(case=residual_students())
def test_loihi_quantised_residual_mode_equals_an_int64_reimplementation(case):
    student, images, spikes = case
    net = quantise(student)
    thetas = student.thresholds.detach().double().numpy()
    residual = [(q, d) for q, d in zip(net.layers, deployed_layers(student), strict=True) if d.shortcut is not None]
    assert len(residual) == 4
    for q, d in residual:  # the shortcut in the layer's own scale, which is the largest that fits both
        assert (
            q.shortcut.weight.dtype == np.int64 and np.abs(q.shortcut.weight - d.shortcut.weight * q.scale).max() <= 0.5
        )
        edges = [w for w in (q.weight, q.shortcut.weight) if w.max() == W_MAX or w.min() in (W_MIN, W_MIN + 1)]
        assert edges or q.v_th == VTH_MAX, q.name
        assert q.v_th == round(thetas[d.lif] * q.scale)
    _check_quantised_mode(student, images, spikes)


def _check_quantised_mode(student: SpikingStudent, images: torch.Tensor, spikes: torch.Tensor | None) -> None:
    net = quantise(student)
    for q, d in zip(
        net.layers, deployed_layers(student), strict=True
    ):  # weights are the folded ones, rounded, unclipped
        if not q.on_host:
            assert q.weight.dtype == np.int64 and np.abs(q.weight - d.weight * q.scale).max() <= 0.5
    trace = run_quantised(net, images, input_spikes=spikes)
    want_spikes, want_logits = reimplemented_lava(net, images.numpy(), None if spikes is None else spikes.numpy())
    assert len(trace.spikes) == len(want_spikes) == len(student.config.spiking_layers)
    for k, (got, want) in enumerate(zip(trace.spikes, want_spikes, strict=True)):
        assert np.array_equal(got.numpy().astype(np.int64), want), (
            f"LIF layer {k}: {int((got.numpy() != want).sum())} spikes differ"
        )
    assert np.array_equal(trace.logits.numpy(), want_logits)


@pytest.mark.slow
@pytest.mark.parametrize("encoding", ["direct", "poisson"])
def test_lava_simulator_equals_the_quantised_mode(encoding, tmp_path_factory):
    """Two students per encoding through the real Lava simulator (about 10 s each)."""

    @settings(max_examples=2, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(case=students(resets=("hard",), encodings=(encoding,)))
    def check(case):
        _lava_run_equals_reference(*case, tmp_path_factory.mktemp("lava") / "student.h5")

    check()


def _all_negative_dense(student: SpikingStudent) -> bool:
    return any(q.kind == "linear" and not q.on_host and q.weight.max() < 0 for q in quantise(student).layers)


def _lava_run_equals_reference(
    student: SpikingStudent, images: torch.Tensor, spikes: torch.Tensor | None, path
) -> None:
    LavaTarget().export(student, path)
    direct = images if spikes is None else None
    got = LavaTarget().run(path, model_in(student, direct, spikes))
    want = LavaTarget().reference(student, model_in(student, direct, spikes))
    for name, a, b in zip(want.layer_names, want.spikes, got.spikes, strict=True):
        assert np.array_equal(a, b), f"{name}: {int((a != b).sum())} spikes differ"
    np.testing.assert_array_equal(got.logits, want.logits)


@pytest.mark.slow
def test_lava_runs_a_dense_layer_with_only_negative_weights_exactly(tmp_path):
    config = StudentConfig(
        "negative", (1, 3, 3), 2, (Flatten(), Linear(9, 1), Linear(1, 2)), timesteps=4, encoding="poisson"
    )
    student = SpikingStudent(config, leak=1.0, thresholds=[0.3]).eval()
    with torch.no_grad():
        student.body[1].weight.fill_(0.5)
        student.body[2].weight.copy_(torch.tensor([[-0.3], [-0.7]]))
    assert _all_negative_dense(student)
    images = torch.rand(3, 1, 3, 3, generator=torch.Generator().manual_seed(0))
    _lava_run_equals_reference(student, images, model_input("poisson", 4, images).spikes, tmp_path / "student.h5")
