r"""Loihi-quantised mode of the student: the integer network that Lava's netx runs (docs/semantics.md, 'Lava / netx').

netx runs fixed point only, so the Lava export is checked against this mode, spike for spike, and
its accuracy cost against the float student is reported separately.

Quantisation, per deployed layer ``l`` (``deployed_layers``: Conv/Linear, pooling folded in)::

    s_l      = min(254 / w+_l, 256 / w-_l, 131071 / theta_l,   per-layer scale; w+, w-: the largest
                   4095 / b+_l, 4096 / b-_l)                   positive and |negative| weight; b+, b-:
                                                               bias (when the layer has one)
    W_int    = clip(round(W_l * s_l), -256, 254)               netx's 8-bit range
    b_int    = round(b_l * s_l)                                biasMant: signed 13 bits, never clips
    vThMant  = round(theta_l * s_l)                            17-bit unsigned threshold mantissa
    vDecay   = clip(round((1 - lam) * 4096), 0, 4095)          one leak for the net (12 bits)
    iDecay   = 4096                                            no synaptic memory: u = this step's input

``w+``/``w-`` are the ``weight_percentile`` of the positive / negative weights (100: the largest,
so nothing clips). A percentile below 100 buys resolution for the bulk of the weights by clipping
the tail; more than ``MAX_CLIP_FRACTION`` of a layer clipped is refused.

Lava's bit-accurate LIF (``lava.proc.lif.models.PyLifModelBitAcc``, tag ``fixed_pt``), per step::

    a = W_int (x) s_prev                  integer; a Conv's output wraps to signed 24 bits
    u = wrap24(a << 6)                    iDecay = 4096 erases the previous u
    v = trunc(v * (4096 - vDecay) / 4096) + u + (b_int << 6)    trunc: towards zero (sign * (|x| >> 12))
    v = clip(v, -(2**23 - 1), 2**23 - 1)
    s = v > (vThMant << 6);  v = 0 where s

This is the float student's recurrence with ``lam = 1 - vDecay / 4096`` in units of ``1 / (64 s_l)``. A layer's
bias ``b`` (a constant current every step) is the neuron's bias mantissa ``b_int`` with netx's
fixed exponent 6: the same units as the synaptic input ``a << 6``. It joins ``v`` before the clip,
every step, the output layer included (``v_out = 64 s_out sum_t (W s_L[t] + b)``).

Direct encoding: the first layer sees the analog image, the same at every step, so the host
computes it once and hands it to the first LIF as a constant bias (netx's ``input`` block is a
LIF whose bias is its input). Its scale fits the bias mantissa (signed 13 bits) for any input in
[0, 1]: ``s_1 = min(4095 / max_j (b_j + sum_i |W_ji|_sign), 131071 / theta_1)`` (the sum over the
weights of one sign, ``b_j`` the layer's bias or 0), bias = round((W x + b) * s_1).
Poisson encoding: the first layer runs on chip on the input spikes like any other.

Residual blocks: a layer that closes one also reads its shortcut, the spikes of an earlier LIF
layer through the deployed shortcut conv (a 1x1 projection, or the identity as an identity matrix
over channels, a pool before it folded in). Both currents join before the same LIF, so both are
quantised with the layer's one scale: ``s_l`` is the smaller of the two weight sets' scales (each
in [-256, 254], theta in 17 bits) and ``W_sc_int = clip(round(W_sc * s_l), -256, 254)``. On chip
each is a Conv of its own (its output wrapping to 24 bits) into the neuron's input, where they add::

    a = wrap24(W_int (x) s_prev) + wrap24(W_sc_int (x) s_source)

netx's HDF5 cannot describe that graph (the Lava export refuses it); this mode is what a Lava
network of Conv and LIF processes wired the same way runs.

Output layer: an on-chip Dense whose neuron never leaks (vDecay = 0), never fires (vThMant at its
maximum) and has no synaptic memory, so its voltage after step T is ``64 s_out * sum_t W s_L[t]``:
``logits = v / (64 s_out T)``, computable on both sides. (The voltage saturates at 2**23 - 1, i.e.
a summed input of 131071 weight units; bit-exactness holds through that, the logits' meaning not.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .errors import UserError
from .inputs import model_input
from .neurons import Encoding
from .student import LAYER_TYPES, DeployedLayer, SpikingStudent, Trace, deployed_layers

W_MIN, W_MAX = -256, 254  # netx's 8-bit weight range (larger magnitudes lose bits in optimize_weight_bits)
VTH_MAX = 2**17 - 1  # vThMant: unsigned 17 bits
BIAS_MIN, BIAS_MAX = -(2**12), 2**12 - 1  # bias mantissa: signed 13 bits
DECAY_UNITY = 4096  # decays are 12-bit fractions of 4096
STATE_SHIFT = 6  # synaptic input, bias and threshold are left-shifted by 6 bits
STATE_LIMIT = 2**23  # u and v are 24-bit signed
MAX_CLIP_FRACTION = 0.01  # refuse a layer when more of its weights would clip


@dataclass
class QuantShortcut:
    """The residual input of a quantised layer: spikes of LIF layer ``lif`` through a conv, in the layer's scale."""

    weight: np.ndarray  # int64 [out, in, k, k]
    lif: int  # index of the LIF layer read, as in Trace.spikes
    stride: int = 1


@dataclass
class QuantLayer:
    """One deployed layer in integers. ``weight`` is int64, or float64 for the host layer."""

    name: str
    kind: str  # "conv" | "linear"
    weight: np.ndarray
    scale: float
    v_th: int  # vThMant (VTH_MAX for the output layer, which never fires)
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    stride: int = 1
    padding: int = 0
    flatten_before: bool = False
    on_host: bool = False
    is_output: bool = False
    clip_fraction: float = 0.0
    shortcut: QuantShortcut | None = None
    bias: np.ndarray | None = None  # [out]: biasMant (int64) on chip, the float64 bias on the host

    @property
    def convolutional(self) -> bool:
        """A conv (weights shared over a map, a bias per channel) rather than a dense layer."""
        return LAYER_TYPES[self.kind].convolutional


@dataclass
class LoihiNet:
    """The Loihi-quantised student: integer layers, one leak, and the run settings."""

    layers: list[QuantLayer]
    v_decay: int
    timesteps: int
    encoding: str
    input_shape: tuple[int, ...]
    num_classes: int
    lif_names: list[str] = field(default_factory=list)

    @property
    def output_scale(self) -> float:
        return self.layers[-1].scale


def _top(values: np.ndarray, percentile: float) -> float:
    return float(np.percentile(values, percentile)) if values.size else 0.0


def layer_scale(
    weight: np.ndarray, theta: float | None, percentile: float = 100.0, bias: np.ndarray | None = None
) -> float:
    """Largest scale that puts the weights' ``percentile`` into [-256, 254], theta into 17 bits and
    every bias into the signed 13-bit bias mantissa (a bias is never clipped)."""
    top_pos, top_neg = _top(weight[weight > 0], percentile), _top(-weight[weight < 0], percentile)
    limits = [W_MAX / top_pos if top_pos > 0 else np.inf, -weight_min(weight) / top_neg if top_neg > 0 else np.inf]
    if theta is not None:
        limits.append(VTH_MAX / theta)
    if bias is not None and bias.size:
        limits += [
            BIAS_MAX / bias.max() if bias.max() > 0 else np.inf,
            -BIAS_MIN / -bias.min() if bias.min() < 0 else np.inf,
        ]
    return float(min(limits))


def weight_min(weight: np.ndarray) -> int:
    """-256, or -255 for a layer with no positive weight: netx then uses Loihi's inhibitory sign
    mode, whose 8-bit magnitudes stop at 255 (a -256 would run as -254)."""
    return W_MIN if np.any(weight > 0) else W_MIN + 1


def host_scale(weight: np.ndarray, theta: float, bias: np.ndarray | None = None) -> float:
    """Scale of the host-computed first layer: any image in [0, 1] gives a bias within 13 bits."""
    rows = weight.reshape(weight.shape[0], -1)
    b = np.zeros(len(rows)) if bias is None else bias
    bound = max((np.clip(rows, 0, None).sum(1) + b).max(), -(np.clip(rows, None, 0).sum(1) + b).min(), 0.0)
    return float(min(BIAS_MAX / bound if bound > 0 else np.inf, VTH_MAX / theta))


def quantise(student: SpikingStudent, weight_percentile: float = 100.0) -> LoihiNet:
    """The Loihi-quantised mode of ``student``; ``UserError`` naming the layer if it cannot be built."""
    cfg = student.config
    if not 0 < weight_percentile <= 100:
        raise UserError(f"weight percentile must be in (0, 100], got {weight_percentile}")
    deployed = deployed_layers(student)
    lif_names = [d.name for d in deployed if d.lif is not None]
    if cfg.reset != "hard" and lif_names:
        raise UserError(
            f"layer {lif_names[0]}: Loihi resets v to 0 after a spike (hard reset) but this student uses "
            "reset='soft'; retrain it with reset='hard' or export it to ONNX"
        )
    thetas = student.thresholds.detach().double().cpu().numpy()
    lam = float(student.leak.detach())
    direct = cfg.encoding == Encoding.DIRECT
    if direct and deployed[0].lif is None:
        raise UserError(
            "a direct-encoded student needs at least one LIF layer before its output layer: the first "
            "layer runs on the host, so nothing would be left to run on chip"
        )
    layers = []
    for idx, d in enumerate(deployed):
        theta = None if d.lif is None else float(thetas[d.lif])
        if theta is not None and theta <= 0:
            raise UserError(f"layer {d.name}: threshold {theta} is not positive; Loihi's vThMant is unsigned")
        if not np.any(d.weight):
            raise UserError(f"layer {d.name}: all weights are zero, which netx cannot map to a weight exponent")
        shortcut_lif = None if d.shortcut is None else deployed[d.shortcut.producer].lif
        layers.append(
            _quantise_layer(d, theta, weight_percentile, on_host=direct and idx == 0, shortcut_lif=shortcut_lif)
        )
    return LoihiNet(
        layers,
        int(np.clip(round((1 - lam) * DECAY_UNITY), 0, DECAY_UNITY - 1)),
        cfg.timesteps,
        cfg.encoding,
        tuple(cfg.input_shape),
        cfg.num_classes,
        lif_names,
    )


def _quantise_layer(
    d: DeployedLayer, theta: float | None, percentile: float, on_host: bool, shortcut_lif: int | None = None
) -> QuantLayer:
    common: dict[str, Any] = dict(
        name=d.name,
        kind=d.kind,
        in_shape=d.in_shape,
        out_shape=d.out_shape,
        stride=d.stride,
        padding=d.padding,
        flatten_before=d.flatten_before,
        is_output=theta is None,
    )
    if on_host:
        assert theta is not None, "the host computes the current of the first LIF layer"
        scale = host_scale(d.weight, theta, d.bias)
        return QuantLayer(
            weight=d.weight.copy(),
            scale=scale,
            v_th=int(round(theta * scale)),
            on_host=True,
            bias=None if d.bias is None else d.bias.copy(),
            **common,
        )
    scale = layer_scale(d.weight, theta, percentile, d.bias)
    if d.shortcut is not None:  # its current joins this layer's before the same LIF: one scale for both
        scale = min(scale, layer_scale(d.shortcut.weight, None, percentile))
    weight, clipped = _integer_weights(d.weight, scale)
    shortcut, size = None, d.weight.size
    if d.shortcut is not None:
        shortcut_weight, shortcut_clipped = _integer_weights(d.shortcut.weight, scale)
        assert shortcut_lif is not None, "a shortcut reads the spikes of a LIF layer"
        shortcut = QuantShortcut(shortcut_weight, shortcut_lif, d.shortcut.stride)
        clipped, size = clipped + shortcut_clipped, size + d.shortcut.weight.size
    fraction = clipped / size
    if fraction > MAX_CLIP_FRACTION:
        raise UserError(
            f"layer {d.name}: {fraction:.1%} of its weights would clip to the 8-bit range [{weight_min(d.weight)}, {W_MAX}] "
            f"(at most {MAX_CLIP_FRACTION:.0%} allowed); use a higher weight percentile"
        )
    v_th = VTH_MAX if theta is None else int(round(theta * scale))
    bias = None if d.bias is None else np.round(d.bias * scale).astype(np.int64)  # within 13 bits by the scale
    return QuantLayer(
        weight=weight, scale=scale, v_th=v_th, clip_fraction=fraction, shortcut=shortcut, bias=bias, **common
    )


def _integer_weights(weight: np.ndarray, scale: float) -> tuple[np.ndarray, int]:
    """``weight * scale`` rounded and clipped to netx's range (int64), and how many entries clipped."""
    rounded = np.round(weight * scale)
    w_min = weight_min(weight)
    clipped = int(np.count_nonzero((rounded < w_min) | (rounded > W_MAX)))
    return np.clip(rounded, w_min, W_MAX).astype(np.int64), clipped


# -- running -----------------------------------------------------------------------------------
def host_bias(layer: QuantLayer, images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Direct encoding: the first layer's current for ``images`` ``[B, C, H, W]`` as bias mantissas (int64)."""
    x = torch.as_tensor(images).detach().cpu().double()
    current = _apply(layer, x, torch.from_numpy(np.asarray(layer.weight, dtype=np.float64)))
    if layer.bias is not None:  # W x + b, the float student's first current
        current = current + _per_neuron(layer, torch.from_numpy(np.asarray(layer.bias, dtype=np.float64)))
    return torch.round(current * layer.scale).clamp(BIAS_MIN, BIAS_MAX).to(torch.int64)


def _per_neuron(layer: QuantLayer, bias: torch.Tensor) -> torch.Tensor:
    """A bias ``[out]`` shaped to broadcast over a layer's ``[N, ...]`` output (per channel for a conv)."""
    return bias.reshape(-1, 1, 1) if layer.convolutional else bias


def bias_mantissa(layer: QuantLayer) -> torch.Tensor | None:
    """An on-chip layer's bias mantissas, shaped to broadcast over its ``[N, ...]`` output; None without a bias."""
    return None if layer.bias is None else _per_neuron(layer, torch.from_numpy(layer.bias.astype(np.int64)))


def _apply(layer: QuantLayer, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Conv or linear in float64 (exact for the integer layers: every partial sum is below 2**53)."""
    if layer.convolutional:
        return F.conv2d(x, w, stride=layer.stride, padding=layer.padding)
    return x.flatten(1) @ w.T


def synaptic_input(layer: QuantLayer, spikes: torch.Tensor) -> torch.Tensor:
    """Integer input ``a`` of an on-chip layer for spikes ``[N, ...]``, as Lava's Dense/Conv deliver it."""
    a = _apply(layer, spikes.double(), torch.from_numpy(layer.weight.astype(np.float64))).to(torch.int64)
    return _wrap_conv(a) if layer.convolutional else a


def shortcut_input(shortcut: QuantShortcut, spikes: torch.Tensor) -> torch.Tensor:
    """Integer input a shortcut adds for its source's spikes ``[N, C, H, W]``: a Conv of its own."""
    weight = torch.from_numpy(shortcut.weight.astype(np.float64))
    return _wrap_conv(F.conv2d(spikes.double(), weight, stride=shortcut.stride).to(torch.int64))


def _wrap_conv(a: torch.Tensor) -> torch.Tensor:
    """lava.proc.conv: a_buf = signed_clamp(a, bits=24), a wrap-around."""
    return torch.remainder(a + STATE_LIMIT // 2, STATE_LIMIT) - STATE_LIMIT // 2


def _wrap24(u: torch.Tensor) -> torch.Tensor:
    """u's overflow handling in AbstractPyLifModelFixed.subthr_dynamics, literally."""
    wrapped = torch.where(u > STATE_LIMIT, u - 2 * STATE_LIMIT, u)
    return torch.where(wrapped <= -STATE_LIMIT, u + 2 * STATE_LIMIT, wrapped)


def loihi_lif(
    current: torch.Tensor, v_decay: int, v_th: int, bias: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bit-accurate CUBA LIF with iDecay = 4096 over ``current`` ``[T, ...]`` (int64), plus the
    bias mantissa ``bias`` (broadcast over ``current[t]``) at exponent 6 every step.

    Returns the spikes ``[T, ...]`` (int8) and the voltage after the last step.
    """
    v = torch.zeros_like(current[0])
    threshold = v_th << STATE_SHIFT
    effective_bias = 0 if bias is None else bias << STATE_SHIFT
    spikes = []
    for a in current:
        u = _wrap24(a << STATE_SHIFT)
        decayed = v * (DECAY_UNITY - v_decay)
        v = torch.sign(decayed) * (decayed.abs() >> 12)
        v = (v + u + effective_bias).clamp(-STATE_LIMIT + 1, STATE_LIMIT - 1)
        s = v > threshold
        v = torch.where(s, torch.zeros_like(v), v)
        spikes.append(s.to(torch.int8))
    return torch.stack(spikes), v


def run_quantised(
    net: LoihiNet,
    images: torch.Tensor | None = None,
    *,
    input_spikes: torch.Tensor | None = None,
    seed: int = 0,
) -> Trace:
    """Run the integer network on ``images`` (encoded per ``net``) or given ``input_spikes`` ``[T, B, ...]``.

    Logits (float64) are ``v_out / (64 s_out T)``; spikes are recorded for every LIF layer.
    """
    T = net.timesteps
    given = model_input(net.encoding, T, images, input_spikes, seed=seed)
    if net.encoding == Encoding.DIRECT:
        bias = host_bias(net.layers[0], given.image())  # the host layer's constant current, fed to the first LIF
        spikes, _ = loihi_lif(bias.unsqueeze(0).expand(T, *bias.shape), net.v_decay, net.layers[0].v_th)
        trace, on_chip = Trace(logits=torch.empty(0), spikes=[spikes]), net.layers[1:]
    else:
        s0 = given.steps(T)  # Poisson: the input spikes [T, B, ...]
        spikes, T = s0.detach().cpu(), s0.shape[0]
        trace, on_chip = Trace(logits=torch.empty(0), input_spikes=s0), net.layers
    for layer in on_chip:
        a = synaptic_input(layer, spikes.flatten(0, 1)).unflatten(0, (T, -1))
        if layer.shortcut is not None:
            source = trace.spikes[layer.shortcut.lif]
            a = a + shortcut_input(layer.shortcut, source.flatten(0, 1)).unflatten(0, (T, -1))
        if layer.is_output:
            _, v = loihi_lif(a, 0, layer.v_th, bias_mantissa(layer))
            trace.logits = torch.from_numpy(readout_logits(v.numpy(), layer.scale, T))
        else:
            spikes, _ = loihi_lif(a, net.v_decay, layer.v_th, bias_mantissa(layer))
            trace.spikes.append(spikes)
    return trace


def readout_logits(v_out: np.ndarray, output_scale: float, timesteps: int) -> np.ndarray:
    """Logits ``u_out[T] / T`` from the output layer's integer voltage (float64; the same on both sides)."""
    return v_out.astype(np.float64) / (2**STATE_SHIFT * output_scale * timesteps)
