import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import make_student, repeat_steps, small_resnet

from lasnn_deploy.errors import UserError
from lasnn_deploy.neurons import lif_reference
from lasnn_deploy.student import (
    AvgPool,
    Conv,
    Flatten,
    Linear,
    Shortcut,
    SpikingStudent,
    StudentConfig,
    deployed_layers,
    load_student,
    save_student,
)


@torch.no_grad()
def reference_forward(student: SpikingStudent, s0: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Float64 step-by-step run of the LIF recurrence from the layer list, with torch functional ops."""
    cfg, leak = student.config, student.leak.item()
    thetas = student.thresholds.detach().double().numpy()
    spikes, lif, outputs = [], {i: k for k, i in enumerate(cfg.spiking_layers)}, {}
    T = s0.shape[0]
    h = torch.from_numpy(s0)
    for i, (spec, mod) in enumerate(zip(cfg.layers, student.body, strict=True)):
        if isinstance(spec, Shortcut):
            source = outputs[spec.source]
            if mod.proj is not None:
                source = torch.stack(
                    [F.conv2d(source[t], mod.proj.weight.double(), stride=spec.stride) for t in range(T)]
                )
            h = h + source
        elif isinstance(spec, Conv):
            h = torch.stack(
                [F.conv2d(h[t], mod.weight.double(), stride=spec.stride, padding=spec.padding) for t in range(T)]
            )
            if spec.bias:  # u[t] = lam u[t-1] + W s[t] + b: a constant current every step
                h = h + mod.bias.double()[:, None, None]
        elif isinstance(spec, Linear):
            h = torch.stack([h[t] @ mod.weight.double().T for t in range(T)])
            if spec.bias:
                h = h + mod.bias.double()
        elif isinstance(spec, AvgPool):
            h = torch.stack([F.avg_pool2d(h[t], spec.kernel_size) for t in range(T)])
        elif isinstance(spec, Flatten):
            h = h.flatten(2)
        if i in lif:
            h = torch.from_numpy(lif_reference(h.numpy(), leak, thetas[lif[i]], cfg.reset))
            spikes.append(h.numpy())
        outputs[i] = h
    return h.numpy().sum(0) / T, spikes


@pytest.mark.parametrize("encoding", ["direct", "poisson"])
@pytest.mark.parametrize("reset", ["hard", "soft"])
def test_student_matches_float64_reference(encoding, reset):
    student = make_student(encoding, reset, timesteps=6).double()
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        trace = student.run(x, seed=5, record=True)
    s0 = trace.input_spikes if encoding == "poisson" else repeat_steps(x, 6)
    logits, spikes = reference_forward(student, s0.numpy())
    for got, want in zip(trace.spikes, spikes, strict=True):
        assert np.array_equal(got.numpy(), want)
    assert np.allclose(trace.logits.numpy(), logits, atol=1e-12)
    assert 0.02 < np.mean([s.mean() for s in spikes]) < 0.6


@pytest.mark.parametrize("encoding", ["direct", "poisson"])
@pytest.mark.parametrize("reset", ["hard", "soft"])
@pytest.mark.parametrize("exact", [False, True])
def test_biased_student_matches_float64_reference(encoding, reset, exact):
    """u[t] = lam u[t-1] + W s[t] + b, in the training mode (torch layers) and the exact mode (float64 ops)."""
    student = make_student(encoding, reset, timesteps=6, bias=True).double()
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        trace = student.run(x, seed=5, record=True, exact=exact)
    s0 = trace.input_spikes if encoding == "poisson" else repeat_steps(x, 6)
    logits, spikes = reference_forward(student, s0.numpy())
    for got, want in zip(trace.spikes, spikes, strict=True):
        assert np.array_equal(got.numpy(), want)
    assert np.allclose(trace.logits.numpy(), logits, atol=1e-12)
    with torch.no_grad():  # the biases really change the spikes and the readout
        for m in student.weighted_modules():
            m.bias.zero_()
        unbiased = student.run(x, seed=5, record=True, exact=exact)
    assert not all(torch.equal(a, b) for a, b in zip(trace.spikes, unbiased.spikes, strict=True))
    assert not torch.allclose(trace.logits, unbiased.logits)


def test_bias_is_written_only_when_true(tmp_path):
    plain, biased = make_student(), make_student(bias=True)
    assert all("bias" not in layer for layer in plain.config.to_dict()["layers"])
    weighted = [layer for layer in biased.config.to_dict()["layers"] if layer["type"] in ("conv", "linear")]
    assert [layer.get("bias") for layer in weighted] == [True] * 4
    back = load_student(save_student(biased, tmp_path / "b.safetensors"))
    assert back.config == biased.config and "body.7.bias" in back.state_dict()
    assert all(torch.equal(a, b) for a, b in zip(biased.state_dict().values(), back.state_dict().values(), strict=True))
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(back.run(x, exact=True).logits, biased.run(x, exact=True).logits)


def test_bias_flag_must_be_a_bool():
    with pytest.raises(UserError, match="bias must be true or false"):
        StudentConfig.from_dict(
            {
                **make_student().config.to_dict(),
                "layers": [
                    {"type": "flatten"},
                    {"type": "linear", "in_features": 64, "out_features": 5, "bias": "yes"},
                ],
            }
        )


def test_residual_student_matches_float64_reference():
    student = small_resnet()
    assert [type(l).__name__ for l in student.config.layers].count("Shortcut") == 4
    x = torch.rand(4, 1, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        trace = student.run(x, record=True)
    logits, spikes = reference_forward(student, repeat_steps(x, 6).numpy())
    assert len(trace.spikes) == len(spikes) == 11  # 3 stem + 2 per block
    for got, want in zip(trace.spikes, spikes, strict=True):
        assert np.array_equal(got.numpy(), want)
    assert np.allclose(trace.logits.numpy(), logits, atol=1e-12)
    assert all(0.05 < s.mean() < 0.8 for s in spikes)  # every layer, blocks included, really spikes


@pytest.mark.parametrize("bias", [False, True])
def test_deployed_residual_graph_computes_the_student(bias):
    """Folded pools, the identity-as-1x1 shortcut and biases give the same spikes, step by step, in float64."""
    student = small_resnet(1, bias)
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        trace = student.run(x, record=True)
    deployed = deployed_layers(student)
    assert [d.shortcut is not None for d in deployed].count(True) == 4
    identity = deployed[4].shortcut  # block 1 reads the stem's pooled spikes: eye(C) spread over the 2x2 pool
    assert identity.weight.shape[2:] == (2, 2) and identity.stride == 2 and identity.producer == 2
    thetas, leak = student.thresholds.detach().double().numpy(), float(student.leak.detach())
    spikes: list[torch.Tensor] = []
    h = repeat_steps(x, 6)
    for d in deployed:
        inp = h.flatten(2) if d.kind == "linear" else h
        w = torch.from_numpy(d.weight)
        current = (
            torch.stack([F.conv2d(inp[t], w, stride=d.stride, padding=d.padding) for t in range(6)])
            if d.kind == "conv"
            else inp @ w.T
        )
        assert (d.bias is not None) == bias
        if bias:
            current = current + torch.from_numpy(d.bias).reshape(-1, *[1] * (current.dim() - 3))
        if d.shortcut is not None:
            src, sw = spikes[d.shortcut.producer], torch.from_numpy(d.shortcut.weight)
            current = current + torch.stack([F.conv2d(src[t], sw, stride=d.shortcut.stride) for t in range(6)])
        h = current if d.lif is None else torch.from_numpy(lif_reference(current.numpy(), leak, thetas[d.lif]))
        spikes.append(h)
    for got, want in zip(trace.spikes, spikes[:-1], strict=True):  # the last deployed layer is the output
        assert np.array_equal(got.numpy(), want.numpy())
    assert np.allclose(trace.logits.numpy(), h.mean(0).numpy(), atol=1e-12)


def test_residual_student_saves_and_loads(tmp_path):
    student = small_resnet().float()
    back = load_student(save_student(student, tmp_path / "s.safetensors"))
    assert back.config == student.config
    assert all(
        torch.equal(a, b) for a, b in zip(student.state_dict().values(), back.state_dict().values(), strict=True)
    )
    assert "body.13.proj.weight" in back.state_dict()


@pytest.mark.parametrize(
    "bad, message",
    [
        (Shortcut(0, 1, 2), "must directly follow the Conv"),
        (Shortcut(3, 2, 2), "must be a layer before"),
        (Shortcut(0, 2, 2, 2), "does not give"),
        (Shortcut(0, 3, 2), "in_channels 3"),
    ],
)
def test_bad_shortcuts_are_refused(bad, message):
    layers = [Conv(1, 2, 3, 1, 1), Conv(2, 2, 3, 1, 1), Conv(2, 2, 3, 1, 1), Flatten(), Linear(2 * 16, 3)]
    if message == "must directly follow the Conv":
        layers.insert(4, bad)
    else:
        layers.insert(3, bad)
    with pytest.raises(UserError, match=message):
        StudentConfig("bad", (1, 4, 4), 3, tuple(layers))


def test_save_load_round_trip(tmp_path, student):
    path = save_student(student, tmp_path)
    assert path.name == "student.safetensors" and not list(tmp_path.glob(".*tmp"))
    loaded = load_student(tmp_path)
    x = torch.rand(2, 1, 8, 8)
    assert loaded.config == student.config
    with torch.no_grad():
        assert torch.equal(loaded(x), student(x))


def test_load_refuses_foreign_and_truncated_files(tmp_path, student):
    path = save_student(student, tmp_path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(UserError, match="not a readable student"):
        load_student(path)
    with pytest.raises(UserError, match="no student at"):
        load_student(tmp_path / "missing")


def test_config_rejects_inconsistent_shapes():
    with pytest.raises(UserError, match="linear expects"):
        StudentConfig("bad", (1, 8, 8), 3, (Conv(1, 2, 3, 1, 1), Flatten(), Linear(10, 3)))
    with pytest.raises(UserError, match="time steps"):
        StudentConfig("bad", (1, 8, 8), 3, (Flatten(), Linear(64, 3)), timesteps=0)


def deployed_forward(layers, s0: np.ndarray) -> list[np.ndarray]:
    """Float64 currents of every deployed layer for a fixed input of each layer (no neurons)."""
    out = []
    for layer, x in zip(layers, s0, strict=True):
        x = torch.from_numpy(x)
        if layer.kind == "conv":
            y = F.conv2d(x, torch.from_numpy(layer.weight), stride=layer.stride, padding=layer.padding)
        else:
            y = x.flatten(1) @ torch.from_numpy(layer.weight).T
        out.append(y.numpy())
    return out


def test_pool_folding_equals_pool_then_layer():
    student = make_student(input_shape=(2, 8, 8)).double()
    layers = deployed_layers(student)
    assert [l.kind for l in layers] == ["conv", "conv", "linear", "linear"]
    assert layers[1].weight.shape[2:] == (6, 6) and layers[1].stride == 2 and layers[1].padding == 2
    rng = np.random.default_rng(0)
    spikes_a = (rng.random((3, 4, 8, 8)) < 0.3).astype(np.float64)
    spikes_b = (rng.random((3, 6, 4, 4)) < 0.3).astype(np.float64)
    with torch.no_grad():
        folded, unfolded = _folded_and_unfolded(layers, student, spikes_a, spikes_b)
    assert np.allclose(folded[0], unfolded[0], atol=1e-12)
    assert np.allclose(folded[1], unfolded[1], atol=1e-12)


def _folded_and_unfolded(layers, student, spikes_a, spikes_b):
    conv2, lin1 = student.body[3], student.body[6]
    folded = deployed_forward(layers[1:3], [spikes_a, spikes_b])
    unfolded_conv = F.conv2d(F.avg_pool2d(torch.from_numpy(spikes_a), 2), conv2.weight.double(), padding=1)
    unfolded_lin = F.avg_pool2d(torch.from_numpy(spikes_b), 2).flatten(1) @ lin1.weight.double().T
    return folded, [unfolded_conv.numpy(), unfolded_lin.numpy()]


def test_pool_that_does_not_divide_the_map_is_refused():
    cfg = StudentConfig("odd", (1, 6, 6), 3, (Conv(1, 2, 3, 1, 1), AvgPool(4), Flatten(), Linear(2, 3)))
    with pytest.raises(UserError, match="not divisible"):
        deployed_layers(SpikingStudent(cfg))
