r"""Lava's fixed-point ``Conv`` synapse with one matrix product per step instead of a loop of 2-D convolutions.

Lava's own CPU model (``lava.proc.conv.models.PyConvModelFixed``) calls ``scipy.signal.convolve2d``
once per (output channel, input channel) pair and step (its torch path is disabled upstream: torch
hangs inside Lava processes). This model computes the same sum over sliding windows of the padded
input as one float64 matrix product (docs/performance.md, 'Lava')::

    a[x, y, k] = sum over c, i, j of  s[x * sx + i, y * sy + j, c] * w_dilated[k, Kx - 1 - i, Ky - 1 - j, c]

(``convolve2d`` is a true convolution: the kernel is flipped). Inputs and weights are integers and
every partial sum stays far below 2**53, so float64 is exact; the result is clamped to 24 bits as
Lava's model does. Imported only once ``lava_compat`` has made Lava importable.
"""

from __future__ import annotations

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol
from lava.proc.conv import utils
from lava.proc.conv.models import PyConvModelFixed
from lava.proc.conv.process import Conv
from numpy.lib.stride_tricks import sliding_window_view


def conv(
    spikes: np.ndarray,
    weight: np.ndarray,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
) -> np.ndarray:
    """What ``lava.proc.conv.utils.conv_scipy`` computes, as float64: input ``[X, Y, C]``, weight ``[K, kx, ky, C / groups]``."""
    k_out, kx, ky, c_group = weight.shape
    dilated = np.zeros((k_out, dilation[0] * (kx - 1) + 1, dilation[1] * (ky - 1) + 1, c_group))
    dilated[:, :: dilation[0], :: dilation[1], :] = weight
    flipped = dilated[:, ::-1, ::-1, :]
    padded = np.pad(spikes.astype(np.float64), ((padding[0],) * 2, (padding[1],) * 2, (0, 0)))
    # [X', Y', 1, kx', ky', C]: windows over all three axes, the channel window the whole depth
    windows = sliding_window_view(padded, (*flipped.shape[1:3], padded.shape[2]))[:: stride[0], :: stride[1], 0]
    k_group = k_out // groups
    parts = [
        np.einsum(
            "xyijc,kijc->xyk",
            windows[..., g * c_group : (g + 1) * c_group],
            flipped[g * k_group : (g + 1) * k_group],
            optimize=True,
        )
        for g in range(groups)
    ]
    return np.concatenate(parts, axis=2)


@implements(proc=Conv, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class MatmulConvModel(PyConvModelFixed):
    """``PyConvModelFixed`` with ``conv`` above in place of ``utils.conv``."""

    a_buf: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)  # as in PyConvModelFixed, typed for mypy

    def run_spk(self) -> None:
        self.a_out.send(self.a_buf)  # the Conv process's Var a_buf, zero before the first step
        s_in = self.s_in.recv() if self.num_message_bits.item() > 0 else self.s_in.recv().astype(bool)
        a = conv(
            s_in,
            self.weight,
            tuple(self.stride),
            tuple(self.padding),
            tuple(self.dilation),
            int(self.groups[0]),
        )
        self.a_buf = utils.signed_clamp(a.astype(self.weight.dtype), bits=24)
