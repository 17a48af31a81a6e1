r"""Spiking neuron and input encodings of the student SNN (SPEC section 1).

For LIF layer ``l`` at step ``t = 1..T``, state 0 at ``t = 0``::

    i[t] = W (x) s_prev[t]                      conv or linear, no bias (applied by the caller)
    u[t] = lam * u[t-1] + i[t]                  lam: leak shared by the whole net, 0 < lam <= 1
    s[t] = 1 if u[t] > theta else 0             theta: one threshold per layer, strictly greater
    u[t] = 0 where s[t] = 1                     hard reset (default)
    u[t] = u[t] - theta * s[t]                  soft reset (training and ONNX only)

Training uses the linear surrogate ``ds/du = gamma * max(0, 1 - |u - theta| / theta)`` with
``gamma = 0.3``; the same function gives ``ds/dtheta = -ds/du``. The reset is not detached: the
gradient is that of autograd through ``u = u * (1 - s)`` (or ``u - theta * s``), flowing through
both ``u`` and ``s``, for the input, ``lam`` and ``theta`` alike.

Everything is multi-step: the currents of all ``T`` steps arrive at once as ``[T, B, ...]`` (the
convolutions run once over ``T * B`` images) and only the cheap recurrence loops over time. One
implementation serves training, evaluation, the Loihi-quantised mode and the exporters' references.
For training, the recurrence is one autograd node (``LIFFunction``) that keeps one value per neuron
and step and computes the gradient above by hand (docs/performance.md has the measurements).
"""

from __future__ import annotations

import warnings
from typing import Literal

import torch
from torch.autograd.function import once_differentiable

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
    current: torch.Tensor, leak: torch.Tensor | float, theta: torch.Tensor | float, reset: Reset = "hard"
) -> torch.Tensor:
    """Run the LIF recurrence over the leading time axis of ``current`` and return the spikes.

    ``leak`` and ``theta`` are one-element tensors (or numbers). With autograd on, the whole
    recurrence is one ``LIFFunction`` node; without, no potential is kept beyond one step.
    """
    if reset not in ("hard", "soft"):
        raise ValueError(f"unknown reset {reset!r}: use 'hard' or 'soft'")
    leak = torch.as_tensor(leak, dtype=current.dtype, device=current.device)
    theta = torch.as_tensor(theta, dtype=current.dtype, device=current.device)
    if leak.numel() != 1 or theta.numel() != 1:
        raise ValueError(f"leak and theta must be single values, got shapes {list(leak.shape)} and {list(theta.shape)}")
    if torch.is_grad_enabled() and (current.requires_grad or leak.requires_grad or theta.requires_grad):
        return LIFFunction.apply(current, leak, theta, reset == "hard")
    return _lif_forward(current, leak, theta, reset == "hard", keep_potential=False)[0]


def _lif_forward(
    current: torch.Tensor, leak: torch.Tensor, theta: torch.Tensor, hard: bool, keep_potential: bool
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Spikes ``[T, ...]`` and, if asked, the potentials before reset ``v[t] = lam * u[t-1] + i[t]``.

    Op by op into preallocated buffers, in the rounding order of the equations (``lam * u`` then
    ``+ i``, as the ONNX export writes it), so the spikes are those of the plain loop. The reset
    ``u = v - v * s`` is exact (``v - v = 0``, ``v - 0 = v``) and, unlike ``torch.where`` on a bool
    mask, runs at the speed of an add on CPU. The potentials are kept as ``T`` step tensors rather
    than one ``[T, ...]`` block: glibc serves blocks above 32 MiB with fresh ``mmap`` pages (a
    page fault per 4 KiB on every training step), while step-sized blocks are reused from the heap.
    """
    spikes = torch.empty(current.shape, dtype=current.dtype, device=current.device)
    u = torch.zeros(current.shape[1:], dtype=current.dtype, device=current.device)
    potentials: list[torch.Tensor] = []
    v = torch.empty_like(u)
    for t in range(current.shape[0]):
        if keep_potential:
            v = torch.empty_like(u)
            potentials.append(v)
        torch.mul(u, leak, out=u)
        torch.add(u, current[t], out=v)
        s = torch.gt(v, theta, out=spikes[t])
        if hard:
            torch.addcmul(v, v, s, value=-1.0, out=u)
        else:
            torch.addcmul(v, s, theta, value=-1.0, out=u)
    return spikes, potentials


class LIFFunction(torch.autograd.Function):
    """The LIF recurrence over all ``T`` steps as one autograd node (speed and memory).

    Its gradient is that of the plain autograd loop ``u = lam * u + i; s = SpikeFn(u, theta);
    u = u * (1 - s)`` (or ``u - theta * s``) up to float rounding: the reset is not detached, so
    the gradient flows through both ``u`` and ``s`` of the reset. Forward keeps only the
    potentials before reset ``v[t]`` (one value per neuron and step; the plain loop keeps about
    three); backward rebuilds spikes, surrogate and ``u`` from them and runs the reverse
    recurrence::

        gu[t] = lam * gv[t+1]                                    (gu[T-1] = 0)
        gs[t] = (dL/ds[t] - gu[t] * v[t]) * sg[t]      hard:  u[t] = v[t] (1 - s[t])
                (dL/ds[t] - gu[t] * theta) * sg[t]     soft:  u[t] = v[t] - theta s[t]
        gv[t] = gu[t] * (1 - s[t]) + gs[t]             hard
                gu[t] + gs[t]                          soft
        dL/di[t] = gv[t]     dL/dlam = sum_t gv[t+1] u[t]     dL/dtheta = -sum_t gs[t]  (soft: - sum_t gu[t] s[t])

    with the surrogate ``sg[t] = gamma * max(0, 1 - |v[t] - theta| / theta)``.
    """

    @staticmethod
    def forward(ctx, current: torch.Tensor, leak: torch.Tensor, theta: torch.Tensor, hard: bool) -> torch.Tensor:
        spikes, potentials = _lif_forward(current, leak, theta, hard, keep_potential=True)
        ctx.save_for_backward(leak, theta, *potentials)
        ctx.hard = hard
        return spikes

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_spikes: torch.Tensor):
        leak, theta, *v = ctx.saved_tensors
        if _compiled["enabled"]:
            try:
                grads = _compiled_backward(grad_spikes, v, leak, theta, ctx.hard)
            except Exception as err:  # no working C++ compiler, an unsupported op...: stay correct, eager
                warnings.warn(f"the compiled LIF backward failed ({type(err).__name__}: {err}); using the eager one")
                compile_backward(False)
            else:
                return tuple(g if need else None for g, need in zip(grads, ctx.needs_input_grad[:3])) + (None,)
        hard = ctx.hard
        need_leak, need_theta = ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        grad_v = torch.empty(grad_spikes.shape, dtype=v[0].dtype, device=v[0].device)
        s, sg, gs, gu, kept = (torch.empty_like(v[0]) for _ in range(5))
        two_theta, slope = 2.0 * theta, GAMMA / theta
        grad_leak, grad_theta = leak.new_zeros(()), theta.new_zeros(())
        for t in reversed(range(len(v))):
            vt, gv = v[t], grad_v[t]
            torch.gt(vt, theta, out=s)
            # sg = gamma * max(0, 1 - |v - theta| / theta) = gamma / theta * max(0, min(v, 2 theta - v))
            torch.minimum(vt, torch.sub(two_theta, vt, out=sg), out=sg).clamp_(min=0.0).mul_(slope)
            if t == len(v) - 1:  # the last step: nothing flows back through its reset
                torch.mul(grad_spikes[t], sg, out=gv)
                if need_theta:
                    grad_theta -= gv.sum()
                continue
            gv_next = grad_v[t + 1]
            torch.mul(gv_next, leak, out=gu)
            if hard:  # kept = gv[t+1] (1 - s[t]): the part of dL/du[t] / lam that survives the reset
                torch.addcmul(gv_next, gv_next, s, value=-1.0, out=kept)
                if need_leak:  # v[t+1] = lam * u[t] + i[t+1],  u[t] = v[t] (1 - s[t])
                    grad_leak += torch.dot(kept.reshape(-1), vt.reshape(-1))
            else:
                if need_leak:  # u[t] = v[t] - theta s[t]
                    grad_leak += torch.dot(gv_next.reshape(-1), torch.addcmul(vt, s, theta, value=-1.0, out=kept).reshape(-1))
                if need_theta:
                    grad_theta -= torch.dot(gu.reshape(-1), s.reshape(-1))
            torch.addcmul(grad_spikes[t], gu, vt if hard else theta, value=-1.0, out=gs).mul_(sg)
            if need_theta:
                grad_theta -= gs.sum()
            if hard:
                torch.addcmul(gs, kept, leak, out=gv)
            else:
                torch.add(gu, gs, out=gv)
        return (
            grad_v if ctx.needs_input_grad[0] else None,
            grad_leak.reshape(leak.shape) if need_leak else None,
            grad_theta.reshape(theta.shape) if need_theta else None,
            None,
        )


def _backward_step(vt, g, gv_next, leak, theta, out, hard: bool):
    """One reverse step of ``LIFFunction`` on flat views, as plain tensor ops for ``torch.compile``.

    The same equations as the eager backward; writes ``gv[t]`` into ``out`` and returns the step's
    terms of ``dL/dlam`` and ``dL/dtheta``.
    """
    s = (vt > theta).to(vt.dtype)
    sg = torch.clamp(torch.minimum(vt, 2.0 * theta - vt), min=0.0) * (GAMMA / theta)
    gu = gv_next * leak
    if hard:
        kept = gv_next - gv_next * s
        gs = (g - gu * vt) * sg
        out.copy_(gs + kept * leak)
        return (kept * vt).sum(), -gs.sum()
    gs = (g - gu * theta) * sg
    out.copy_(gu + gs)
    return (gv_next * (vt - theta * s)).sum(), -gs.sum() - (gu * s).sum()


_compiled: dict = {"enabled": False, "step": None}


def compile_backward(enabled: bool = True) -> None:
    """Fuse each step of the LIF backward into one ``torch.compile`` kernel (opt-in, training only).

    Off by default because it pays only in long runs: on 2 shared CPU cores the first compile took
    40-130 s, while the backward of a step ran about 3x faster (docs/performance.md). The forward
    stays eager, so spikes are unchanged; gradients agree with the eager ones to float rounding.
    If compiling or running the kernel fails, a warning is issued and the eager backward is used.
    """
    _compiled["enabled"] = enabled


def _compiled_backward(grad_spikes: torch.Tensor, v: list[torch.Tensor], leak: torch.Tensor, theta: torch.Tensor,
                       hard: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if _compiled["step"] is None:
        _compiled["step"] = torch.compile(_backward_step, dynamic=True, fullgraph=True)
    step = _compiled["step"]
    grad_v = torch.empty(grad_spikes.shape, dtype=v[0].dtype, device=v[0].device)
    flat = grad_v.view(len(v), -1)
    grad_leak, grad_theta = leak.new_zeros(()), theta.new_zeros(())
    gv_next = torch.zeros_like(flat[0])
    for t in reversed(range(len(v))):
        d_leak, d_theta = step(v[t].view(-1), grad_spikes[t].reshape(-1), gv_next, leak, theta, flat[t], hard)
        grad_leak += d_leak
        grad_theta += d_theta
        gv_next = flat[t]
    return grad_v, grad_leak.reshape(leak.shape), grad_theta.reshape(theta.shape)


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
