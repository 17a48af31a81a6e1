import numpy as np
import pytest
import torch

from lasnn_deploy.neurons import GAMMA, SpikeFn, encode, lif_multistep, lif_reference, poisson_spikes


@pytest.mark.parametrize("reset", ["hard", "soft"])
@pytest.mark.parametrize("leak", [1.0, 0.75])
def test_lif_matches_float64_reference_loop(reset, leak):
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


def test_direct_encoding_repeats_the_image():
    x = torch.rand(2, 1, 3, 3)
    s = encode(x, 5, "direct")
    assert s.shape == (5, 2, 1, 3, 3) and all(torch.equal(s[t], x) for t in range(5))
    with pytest.raises(ValueError):
        encode(x, 5, "rate")
