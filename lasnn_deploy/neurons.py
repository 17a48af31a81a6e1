r"""Spiking neuron and input encodings of the student SNN (SPEC section 1).

For LIF layer ``l`` at step ``t = 1..T``, state 0 at ``t = 0``::

    i[t] = W (x) s_prev[t]                      conv or linear, no bias (applied by the caller)
    u[t] = lam * u[t-1] + i[t]                  lam: leak shared by the whole net, 0 < lam <= 1
    s[t] = 1 if u[t] > theta else 0             theta: one threshold per layer, strictly greater
    u[t] = 0 where s[t] = 1                     hard reset (default)
    u[t] = u[t] - theta * s[t]                  soft reset (training and ONNX only)

Training uses the linear surrogate ``ds/du = gamma * max(0, 1 - |u - theta| / theta)`` with
``gamma = 0.3``; the same function gives ``ds/dtheta = -ds/du``.

Everything is multi-step: the currents of all ``T`` steps arrive at once as ``[T, B, ...]`` (the
convolutions run once over ``T * B`` images) and only the cheap recurrence loops over time. One
implementation serves training, evaluation, the Loihi-quantised mode and the exporters' references.
"""

from __future__ import annotations

from typing import Literal

import torch

GAMMA = 0.3
Reset = Literal["hard", "soft"]
Encoding = Literal["direct", "poisson"]


class SpikeFn(torch.autograd.Function):
    """Heaviside ``u > theta`` forward, linear surrogate backward."""

    @staticmethod
    def forward(ctx, u: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(u, theta)
        return (u > theta).to(u.dtype)

    @staticmethod
    def backward(ctx, grad_s: torch.Tensor):
        u, theta = ctx.saved_tensors
        surrogate = GAMMA * torch.clamp(1.0 - torch.abs(u - theta) / theta, min=0.0)
        grad_u = grad_s * surrogate
        grad_theta = -grad_u.sum().reshape(theta.shape) if ctx.needs_input_grad[1] else None
        return grad_u, grad_theta


def lif_multistep(
    current: torch.Tensor, leak: torch.Tensor, theta: torch.Tensor, reset: Reset = "hard"
) -> torch.Tensor:
    """Run the LIF recurrence over the leading time axis of ``current`` and return the spikes."""
    u = torch.zeros_like(current[0])
    spikes = []
    for i_t in current:
        u = leak * u + i_t
        s = SpikeFn.apply(u, theta)
        u = u * (1.0 - s) if reset == "hard" else u - theta * s
        spikes.append(s)
    return torch.stack(spikes)


def lif_reference(current, leak: float, theta: float, reset: Reset = "hard"):
    """Plain element-by-element loop of SPEC section 1, for float64 checks (numpy or lists)."""
    import numpy as np

    current = np.asarray(current, dtype=np.float64)
    u = np.zeros(current.shape[1:])
    out = np.zeros_like(current)
    for t in range(current.shape[0]):
        for idx in np.ndindex(u.shape):
            u[idx] = leak * u[idx] + current[t][idx]
            if u[idx] > theta:
                out[t][idx] = 1.0
                u[idx] = 0.0 if reset == "hard" else u[idx] - theta
    return out


def poisson_spikes(x: torch.Tensor, timesteps: int, seed: int) -> torch.Tensor:
    """Bernoulli spikes ``[T, *x.shape]`` with rate ``x`` in [0, 1] from a seeded CPU generator.

    Two runs (and two runtimes fed this tensor) see the same spikes for the same seed.
    """
    gen = torch.Generator().manual_seed(seed)
    noise = torch.rand((timesteps, *x.shape), generator=gen, dtype=torch.float32)
    return (noise < x.detach().cpu().float().unsqueeze(0)).to(x.dtype).to(x.device)


def encode(x: torch.Tensor, timesteps: int, encoding: Encoding, seed: int = 0) -> torch.Tensor:
    """Input spikes ``s_0`` as ``[T, B, C, H, W]``: the analog image repeated, or Poisson spikes."""
    if encoding == "direct":
        return x.unsqueeze(0).expand(timesteps, *x.shape)
    if encoding == "poisson":
        return poisson_spikes(x, timesteps, seed)
    raise ValueError(f"unknown encoding {encoding!r}: use 'direct' or 'poisson'")
