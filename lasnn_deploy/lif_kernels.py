"""One LIF time step, forward and backward, as one compiled loop over the neurons (CPU, numba).

The equations and their rounding are those of ``neurons`` (docs/semantics.md, 'The float student';
the backward recurrence is written out in ``neurons.LIFFunction``): the forward computes
``lam * u`` then ``+ i`` in the tensor's own dtype, no fused multiply-add (numba without
``fastmath`` lets LLVM contract nothing), so spikes and potentials are bit for bit those of the
eager tensor ops. What changes is the passes over memory: eager PyTorch runs 4 element-wise ops per
step in forward and 12 in backward, each one a pass over the neurons; here each step is one pass
(docs/performance.md has the profile). The backward is compiled with ``reassoc`` and ``contract``,
so its sums for ``dL/dlam`` and ``dL/dtheta`` (kept in float64) vectorise: gradients agree with the
plain autograd loop within rounding (tests/test_neurons.py: 1e-12 in float64), spikes are not
touched by it.

Compiled on first use per dtype (float32, float64) and cached on disk beside this file
(``cache=True``), so later processes load the machine code instead of compiling it.
"""

from __future__ import annotations

import numba
import numpy as np
import torch


@numba.njit(cache=True, nogil=True)
def _forward(u, i, v, s, leak, theta, hard):  # pragma: no cover - compiled
    lam, th = leak[0], theta[0]
    for j in range(u.shape[0]):
        vj = lam * u[j]
        vj = vj + i[j]
        sj = s.dtype.type(1.0) if vj > th else s.dtype.type(0.0)
        v[j] = vj
        s[j] = sj
        u[j] = vj - vj * sj if hard else vj - sj * th


@numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _backward(g, v, gv_next, gv, leak, theta, gamma_over_theta, hard, last):  # pragma: no cover - compiled
    lam, th, slope = leak[0], theta[0], gamma_over_theta[0]
    two_theta = v.dtype.type(2.0) * th
    zero = v.dtype.type(0.0)
    grad_leak, grad_theta = 0.0, 0.0
    for j in range(v.shape[0]):
        vj = v[j]
        sg = slope * max(zero, min(vj, two_theta - vj))
        if last:  # nothing flows back through the last step's reset
            out = g[j] * sg
            grad_theta -= out
            gv[j] = out
            continue
        sj = v.dtype.type(1.0) if vj > th else zero
        gn = gv_next[j]
        gu = gn * lam
        if hard:  # u = v (1 - s)
            kept = gn - gn * sj
            grad_leak += kept * vj
            gs = (g[j] - gu * vj) * sg
            out = gs + kept * lam
        else:  # u = v - theta s
            grad_leak += gn * (vj - sj * th)
            grad_theta -= gu * sj
            gs = (g[j] - gu * th) * sg
            out = gu + gs
        grad_theta -= gs
        gv[j] = out
    return grad_leak, grad_theta


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy()


def forward_step(
    u: torch.Tensor,
    i: torch.Tensor,
    v: torch.Tensor,
    s: torch.Tensor,
    leak: torch.Tensor,
    theta: torch.Tensor,
    hard: bool,
) -> None:
    """One step on flat tensors: ``v = lam * u + i``, ``s = v > theta``, ``u`` reset in place."""
    _forward(_np(u), _np(i), _np(v), _np(s), _np(leak).reshape(1), _np(theta).reshape(1), hard)


def backward_step(
    g: torch.Tensor,
    v: torch.Tensor,
    gv_next: torch.Tensor,
    gv: torch.Tensor,
    leak: torch.Tensor,
    theta: torch.Tensor,
    slope: torch.Tensor,
    hard: bool,
    last: bool,
) -> tuple[float, float]:
    """One step of the reverse recurrence on flat tensors (``slope = gamma / theta``): writes ``gv``
    (dL/dv[t]) from ``g`` (dL/ds[t]), ``v`` (v[t]) and ``gv_next`` (dL/dv[t+1], unread when ``last``);
    returns this step's terms of dL/dlam and dL/dtheta."""
    lam, th, sl = (_np(t).reshape(1) for t in (leak, theta, slope))
    return _backward(_np(g), _np(v), _np(gv_next), _np(gv), lam, th, sl, hard, last)
