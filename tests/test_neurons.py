import numpy as np
import pytest
import torch

from lasnn_deploy import neurons
from lasnn_deploy.neurons import GAMMA, SpikeFn, lif_multistep, lif_reference, poisson_spikes


def use_steps(steps, monkeypatch):
    """``"eager"``: the LIF's tensor-op steps (what CUDA runs) on CPU; ``"compiled"``: the numba kernels."""
    if steps == "eager":
        monkeypatch.setattr(neurons, "_kernels", lambda t: None)


@pytest.mark.parametrize("steps", ["compiled", "eager"])
@pytest.mark.parametrize("chunk", [None, 4])
@pytest.mark.parametrize("reset", ["hard", "soft"])
@pytest.mark.parametrize("leak", [1.0, 0.75])
def test_lif_matches_float64_reference_loop(reset, leak, chunk, steps, monkeypatch):
    use_steps(steps, monkeypatch)
    if chunk:
        monkeypatch.setattr(neurons, "CPU_CHUNK", chunk)
    gen = torch.Generator().manual_seed(1)
    current = torch.rand(12, 3, 5, generator=gen, dtype=torch.float64) * 0.8
    theta = torch.tensor(0.9, dtype=torch.float64)
    spikes = lif_multistep(current, torch.tensor(leak, dtype=torch.float64), theta, reset)
    expected = lif_reference(current.numpy(), leak, 0.9, reset)
    assert np.array_equal(spikes.numpy(), expected)
    assert 0 < expected.mean() < 1


def test_threshold_is_strict():
    current = torch.tensor([[0.5], [0.5], [0.5]])
    spikes = lif_multistep(current, torch.tensor(1.0), torch.tensor(1.0))
    assert spikes[:, 0].tolist() == [0.0, 0.0, 1.0]  # u = 0.5, 1.0 (not > 1), 1.5 -> spike


def test_surrogate_gradient_is_linear_with_gamma():
    u = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.5], requires_grad=True)
    theta = torch.tensor(1.0, requires_grad=True)
    SpikeFn.apply(u, theta).sum().backward()
    expected = GAMMA * torch.clamp(1 - (u.detach() - 1).abs(), min=0)
    assert torch.allclose(u.grad, expected)
    assert torch.isclose(theta.grad, -expected.sum())


def test_poisson_spikes_are_seeded_and_follow_rates():
    x = torch.tensor([[0.0, 0.25, 1.0]])
    a, b = poisson_spikes(x, 4000, seed=3), poisson_spikes(x, 4000, seed=3)
    assert torch.equal(a, b)
    rates = a.mean(0)[0]
    assert rates[0] == 0 and rates[2] == 1 and abs(rates[1] - 0.25) < 0.03
    assert not torch.equal(a, poisson_spikes(x, 4000, seed=4))


def lif_autograd(current, leak, theta, reset):
    """The straightforward loop of the LIF recurrence with autograd through every op (the reference)."""
    u = torch.zeros_like(current[0])
    spikes = []
    for i_t in current:
        u = leak * u + i_t
        s = SpikeFn.apply(u, theta)
        u = u * (1.0 - s) if reset == "hard" else u - theta * s
        spikes.append(s)
    return torch.stack(spikes)


def _grads(fn, current, leak, theta, reset, weights):
    inputs = [t.detach().clone().requires_grad_(True) for t in (current, leak, theta)]
    spikes = fn(*inputs, reset)
    (spikes * weights).sum().backward()
    return spikes.detach(), [t.grad for t in inputs]


@pytest.mark.parametrize("steps", ["compiled", "eager"])
@pytest.mark.parametrize("chunk", [None, 7])  # 7: many CPU slices of the neurons, the last one short
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("reset", ["hard", "soft"])
def test_lif_gradients_equal_the_plain_autograd_loop(reset, dtype, chunk, steps, monkeypatch):
    use_steps(steps, monkeypatch)
    if chunk:
        monkeypatch.setattr(neurons, "CPU_CHUNK", chunk)
    gen = torch.Generator().manual_seed(5)
    current = (torch.rand(9, 4, 3, 5, generator=gen, dtype=torch.float64) * 0.9).to(dtype)
    weights = torch.randn(current.shape, generator=gen, dtype=torch.float64).to(dtype)  # dL/ds, all different
    leak, theta = torch.tensor(0.8, dtype=dtype), torch.tensor(0.7, dtype=dtype)
    spikes, grads = _grads(lif_multistep, current, leak, theta, reset, weights)
    ref_spikes, ref_grads = _grads(lif_autograd, current, leak, theta, reset, weights)
    assert torch.equal(spikes, ref_spikes) and 0.1 < spikes.mean() < 0.6
    tol = {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-5}
    for name, got, want in zip(("input", "leak", "theta"), grads, ref_grads, strict=True):
        assert got.abs().sum() > 0, name
        assert torch.allclose(got, want, **tol), f"{name}: max error {(got - want).abs().max():.3g}"


def test_lif_gradients_through_an_expanded_input_and_a_threshold_slice():
    """What the student does: direct input expanded over time, theta one entry of a vector."""
    gen = torch.Generator().manual_seed(6)
    base = torch.rand(2, 3, 4, generator=gen, dtype=torch.float64)
    thresholds = torch.tensor([0.9, 0.5], dtype=torch.float64)
    leak = torch.tensor(0.9, dtype=torch.float64)
    grads = []
    for fn in (lif_multistep, lif_autograd):
        x, th, lk = (t.clone().requires_grad_(True) for t in (base, thresholds, leak))
        fn(x.unsqueeze(0).expand(6, *x.shape), lk, th[1], "hard").mean(0).pow(2).sum().backward()
        grads.append([x.grad, lk.grad, th.grad])
    for got, want in zip(*grads, strict=True):
        assert torch.allclose(got, want, rtol=1e-12, atol=1e-12), (got - want).abs().max()
    assert grads[0][2][0] == 0 and grads[0][2][1] != 0


@pytest.mark.parametrize("leak", [0.7, 0.75])  # 0.75: exact arithmetic on the grid, potentials exactly at theta
@pytest.mark.parametrize("reset", ["hard", "soft"])
def test_compiled_steps_give_the_eager_steps_spikes_and_potentials_bit_for_bit(reset, leak, monkeypatch):
    """float32, currents on a grid of 2^-12 so that many potentials land on theta or within a
    rounding step of it, where a fused multiply-add or another rounding order would flip a spike."""
    gen = torch.Generator().manual_seed(8)
    current = torch.randint(0, 820, (10, 6, 500), generator=gen).float() / 4096.0 + 0.5
    leak, theta = torch.tensor(leak), torch.tensor(1.0)
    compiled = neurons._lif_forward(current, leak, theta, reset == "hard", keep_potential=True)
    monkeypatch.setattr(neurons, "_kernels", lambda t: None)
    eager = neurons._lif_forward(current, leak, theta, reset == "hard", keep_potential=True)
    assert torch.equal(compiled[0], eager[0]) and 0.1 < compiled[0].mean() < 0.9
    assert all(torch.equal(a, b) for a, b in zip(compiled[1], eager[1], strict=True))
    near = (torch.stack(eager[1]) - theta).abs() <= (0.0 if leak == 0.75 else 2**-12)
    assert near.sum() > 0  # potentials at (0.75) or next to (0.7) the threshold are exercised


def test_lif_without_autograd_gives_the_same_spikes():
    current = torch.rand(7, 3, 10, generator=torch.Generator().manual_seed(7))
    leak, theta = torch.tensor(0.9, requires_grad=True), torch.tensor(0.6, requires_grad=True)
    with torch.no_grad():
        plain = lif_multistep(current, leak, theta)
    assert torch.equal(plain, lif_multistep(current, leak, theta).detach())
    assert torch.equal(plain, lif_multistep(current, 0.9, 0.6))


def test_lif_refuses_per_neuron_parameters_and_unknown_resets():
    current = torch.rand(3, 2, 4)
    with pytest.raises(ValueError, match="single values"):
        lif_multistep(current, 0.9, torch.full((4,), 0.5))
    with pytest.raises(ValueError, match="unknown reset"):
        lif_multistep(current, 0.9, 0.5, "none")
