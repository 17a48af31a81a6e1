r"""Spiking neuron and input encodings of the student SNN (docs/semantics.md, 'The float student').

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

from enum import StrEnum
from typing import Literal

import torch
from torch.autograd.function import once_differentiable

GAMMA = 0.3
CPU_CHUNK = 1 << 18  # neurons per slice of the CPU time loops (1 MiB of float32): fastest measured
Reset = Literal["hard", "soft"]


class Encoding(StrEnum):
    """How images become the input of the time steps (docs/semantics.md, SPEC 1). String-valued:
    ``Encoding.DIRECT == "direct"``, and config and metadata files hold the plain string."""

    DIRECT = "direct"  # the image itself at every step
    POISSON = "poisson"  # Bernoulli spikes with the pixel as probability, drawn per step


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


def lif_potentials(
    current: torch.Tensor, leak: torch.Tensor | float, theta: torch.Tensor | float, reset: Reset = "hard"
) -> torch.Tensor:
    """The potentials before reset ``v[t] = lam * u[t-1] + i[t]``, ``[T, ...]``, of the same recurrence (no autograd).

    What a count of membrane updates reads: ``v[t] != v[t-1]`` is a neuron whose potential changed at step t.
    """
    leak = torch.as_tensor(leak, dtype=current.dtype, device=current.device)
    theta = torch.as_tensor(theta, dtype=current.dtype, device=current.device)
    with torch.no_grad():
        return torch.stack(_lif_forward(current, leak, theta, reset == "hard", keep_potential=True)[1])


def _chunk(n: int, device: torch.device) -> int:
    """Elements per slice of the time loops: CPU_CHUNK on CPU (cache-sized), all of them elsewhere."""
    return max(min(n, CPU_CHUNK) if device.type == "cpu" else n, 1)


def _kernels(t: torch.Tensor):
    """The compiled step functions (``lif_kernels``, numba) for a CPU float32/float64 tensor, else None:
    eager tensor ops, one kernel per op (CUDA, other dtypes). Imported on first use: numba loads in
    about a second, which commands that never train or run the student on CPU do not pay."""
    if t.device.type != "cpu" or t.dtype not in (torch.float32, torch.float64):
        return None
    from . import lif_kernels

    return lif_kernels


def _eager_forward_step(
    u: torch.Tensor,
    i: torch.Tensor,
    v: torch.Tensor,
    s: torch.Tensor,
    leak: torch.Tensor,
    theta: torch.Tensor,
    hard: bool,
) -> None:
    """One step in tensor ops: ``v = lam * u + i``, ``s = v > theta``, then ``u`` reset in place.

    The reset ``u = v - v * s`` is exact (``v - v = 0``, ``v - 0 = v``) and, unlike ``torch.where``
    on a bool mask, runs at the speed of an add."""
    torch.mul(u, leak, out=u)
    torch.add(u, i, out=v)
    torch.gt(v, theta, out=s)
    if hard:
        torch.addcmul(v, v, s, value=-1.0, out=u)
    else:
        torch.addcmul(v, s, theta, value=-1.0, out=u)


def _eager_backward_step(
    g: torch.Tensor,
    v: torch.Tensor,
    gv_next: torch.Tensor,
    gv: torch.Tensor,
    leak: torch.Tensor,
    theta: torch.Tensor,
    slope: torch.Tensor,
    hard: bool,
    last: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of ``LIFFunction``'s reverse recurrence in tensor ops (``slope = gamma / theta``);
    returns the step's dL/dlam and dL/dtheta terms."""
    zero = v.new_zeros(())
    # sg = gamma * max(0, 1 - |v - theta| / theta) = gamma / theta * max(0, min(v, 2 theta - v))
    sg = torch.minimum(v, 2.0 * theta - v).clamp_(min=0.0).mul_(slope)
    if last:  # the last step: nothing flows back through its reset
        torch.mul(g, sg, out=gv)
        return zero, -gv.sum()
    s = torch.gt(v, theta).to(v.dtype)
    gu = gv_next * leak
    if hard:  # kept = gv[t+1] (1 - s[t]): the part of dL/du[t] / lam that survives the reset
        kept = torch.addcmul(gv_next, gv_next, s, value=-1.0)
        grad_leak, grad_theta = torch.dot(kept, v), zero  # v[t+1] = lam * u[t] + i[t+1],  u[t] = v[t] (1 - s[t])
    else:  # u[t] = v[t] - theta s[t]
        grad_leak, grad_theta = torch.dot(gv_next, torch.addcmul(v, s, theta, value=-1.0)), -torch.dot(gu, s)
    gs = torch.addcmul(g, gu, v if hard else theta, value=-1.0).mul_(sg)
    if hard:
        torch.addcmul(gs, kept, leak, out=gv)
    else:
        torch.add(gu, gs, out=gv)
    return grad_leak, grad_theta - gs.sum()


def _lif_forward(
    current: torch.Tensor, leak: torch.Tensor, theta: torch.Tensor, hard: bool, keep_potential: bool
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Spikes ``[T, ...]`` and, if asked, the potentials before reset ``v[t] = lam * u[t-1] + i[t]``.

    Step by step into preallocated buffers, in the rounding order of the equations (``lam * u``
    then ``+ i``, as the ONNX export writes it), so the spikes are those of the plain loop; on CPU
    each step is one compiled pass over the neurons (``lif_kernels``), and the neurons are taken in
    cache-sized slices, all T steps of one slice before the next, so the state never leaves the
    cache. The potentials are ``T`` step tensors rather than one ``[T, ...]`` block: glibc serves
    blocks above 32 MiB with fresh ``mmap`` pages (a page fault per 4 KiB, every step), smaller
    ones from its heap.
    """
    steps, dtype, device = current.shape[0], current.dtype, current.device
    spikes = torch.empty(current.shape, dtype=dtype, device=device)
    potentials = (
        [torch.empty(current.shape[1:], dtype=dtype, device=device) for _ in range(steps)] if keep_potential else []
    )
    flat_current, flat_spikes = current.reshape(steps, -1), spikes.view(steps, -1)
    flat_v = [p.view(-1) for p in potentials]
    n = flat_spikes.shape[1]
    chunk = _chunk(n, current.device)
    u_buf, v_buf = torch.empty(chunk, dtype=dtype, device=device), torch.empty(chunk, dtype=dtype, device=device)
    kernels = _kernels(current)
    step = kernels.forward_step if kernels is not None else _eager_forward_step
    for a in range(0, n, chunk):  # slice by slice, all T steps of a slice before the next
        b = min(n, a + chunk)
        u = u_buf[: b - a].zero_()
        for t in range(steps):
            v = flat_v[t][a:b] if keep_potential else v_buf[: b - a]
            step(u, flat_current[t, a:b], v, flat_spikes[t, a:b], leak, theta, hard)
    return spikes, potentials


class LIFFunction(torch.autograd.Function):
    """The LIF recurrence over all ``T`` steps as one autograd node (speed and memory).

    Its gradient is that of the plain autograd loop ``u = lam * u + i; s = SpikeFn(u, theta);
    u = u * (1 - s)`` (or ``u - theta * s``) up to float rounding: the reset is not detached, so
    the gradient flows through both ``u`` and ``s`` of the reset. Forward keeps only the
    potentials before reset ``v[t]`` (one value per neuron and step; the plain loop keeps about
    three); backward rebuilds spikes, surrogate and ``u`` from them and runs the reverse
    recurrence from ``t = T-1`` down, in the same cache-sized slices::

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
        steps = len(v)
        grad_v = torch.empty(grad_spikes.shape, dtype=v[0].dtype, device=v[0].device)
        flat_gv, flat_g = grad_v.view(steps, -1), grad_spikes.reshape(steps, -1)
        flat_v = [p.view(-1) for p in v]
        n = flat_gv.shape[1]
        chunk = _chunk(n, grad_v.device)
        kernels = _kernels(grad_v)
        step = kernels.backward_step if kernels is not None else _eager_backward_step
        slope = GAMMA / theta
        # floats from the kernels (float64 sums), tensors from the eager steps
        grad_leak: float | torch.Tensor = 0.0
        grad_theta: float | torch.Tensor = 0.0
        for a in range(0, n, chunk):  # slice by slice as in forward, each slice from t = T-1 down
            b = min(n, a + chunk)
            for t in reversed(range(steps)):
                last = t == steps - 1
                gv, gv_next = flat_gv[t, a:b], flat_gv[min(t + 1, steps - 1), a:b]  # gv_next unread when last
                d_leak, d_theta = step(flat_g[t, a:b], flat_v[t][a:b], gv_next, gv, leak, theta, slope, ctx.hard, last)
                grad_leak, grad_theta = grad_leak + d_leak, grad_theta + d_theta
        return (
            grad_v if ctx.needs_input_grad[0] else None,
            torch.as_tensor(grad_leak, dtype=leak.dtype, device=leak.device).reshape(leak.shape)
            if ctx.needs_input_grad[1]
            else None,
            torch.as_tensor(grad_theta, dtype=theta.dtype, device=theta.device).reshape(theta.shape)
            if ctx.needs_input_grad[2]
            else None,
            None,
        )


def lif_reference(current, leak: float, theta: float, reset: Reset = "hard"):
    """Plain element-by-element loop of the LIF recurrence, for float64 checks (numpy or lists)."""
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


def poisson_inputs(images: torch.Tensor, timesteps: int, seed: int, first_index: int = 0) -> torch.Tensor:
    """Poisson spikes ``[T, B, ...]`` for a slice of a data set that starts at ``first_index``.

    Sample ``i`` of the whole set is drawn with seed ``seed + i``, so its spikes do not depend on
    the batch or chunk it falls in: ``evaluate``, ``validate`` and ``energy`` see the same spikes.
    """
    cpu = images.detach().cpu()  # drawn on the CPU generator, moved once
    return torch.stack([poisson_spikes(x, timesteps, seed + first_index + i) for i, x in enumerate(cpu)], dim=1).to(
        images.device
    )
