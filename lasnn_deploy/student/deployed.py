"""The deployed graph: the student as hardware sees it (Conv/Linear only, pooling folded in, float64).

Every target (ONNX's spike taps aside, NIR, netx HDF5, the energy model) reads the student through
``deployed_layers``; none of them reaches into training code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UserError
from .config import StudentConfig
from .layers import AvgPool, Conv, Flatten, Linear, Shortcut, layer_name
from .module import SpikingStudent


@dataclass
class DeployedShortcut:
    """A residual input of a deployed layer: spikes of deployed layer ``producer`` through a conv.

    An identity shortcut is a 1x1 conv with identity weights; a pool between the source's LIF and
    the shortcut is folded in like any other (kernel and stride times the pool).
    """

    weight: np.ndarray  # [out, in, k, k], float64
    producer: int  # index into the deployed layers (not StudentConfig.layers) of the LIF population read
    in_shape: tuple[int, int, int]
    stride: int = 1


@dataclass
class DeployedLayer:
    """A Conv or Linear of the deployed graph, pooling folded in, weights in float64.

    ``in_shape`` is what the layer reads (a Linear after a folded pool reads the unpooled,
    flattened map). ``lif`` is the index of the LIF layer that follows, None for the output layer.
    ``shortcut``, when set, is a second input whose current joins this layer's before its LIF.
    ``bias``, when set, is a constant current ``[out]`` (per channel for a conv) added every step.
    """

    kind: str  # "conv" | "linear"
    weight: np.ndarray
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    stride: int = 1
    padding: int = 0
    lif: int | None = None
    source: int = 0  # index of the layer in StudentConfig.layers
    flatten_before: bool = False
    shortcut: DeployedShortcut | None = None
    bias: np.ndarray | None = None  # [out], float64

    @property
    def name(self) -> str:
        return layer_name(self.kind, self.source)


def fold_pool_into_conv(weight: np.ndarray, k: int, stride: int, padding: int) -> tuple[np.ndarray, int, int]:
    """AvgPool(k) then Conv(W, stride, padding) == Conv(W repeated over k x k / k^2, stride*k, padding*k)."""
    folded = np.repeat(np.repeat(weight, k, axis=2), k, axis=3) / (k * k)
    return folded, stride * k, padding * k


def fold_pool_into_linear(weight: np.ndarray, chw: tuple[int, int, int], k: int) -> np.ndarray:
    """AvgPool(k), Flatten, Linear(W) == Flatten, Linear(W') on the unpooled [C, H, W] map."""
    c, h, w = chw
    hp, wp = h // k, w // k
    w4 = weight.reshape(weight.shape[0], c, hp, wp)
    folded = np.zeros((weight.shape[0], c, h, w))
    folded[:, :, : hp * k, : wp * k] = np.repeat(np.repeat(w4, k, axis=2), k, axis=3) / (k * k)
    return folded.reshape(weight.shape[0], c * h * w)


def has_shortcuts(config: StudentConfig) -> bool:
    return any(isinstance(l, Shortcut) for l in config.layers)


def deployed_layers(student: SpikingStudent) -> list[DeployedLayer]:
    """The student as hardware sees it: Conv/Linear only, each AvgPool folded into the next layer.

    A ``Shortcut`` becomes the ``shortcut`` input of the deployed Conv it closes.
    """
    cfg = student.config
    shapes = cfg.shapes()
    weights = {
        i: m.weight.detach().double().cpu().numpy()
        for i, m in enumerate(student.body)
        if isinstance(cfg.layers[i], (Conv, Linear))
    }
    biases = {
        i: m.bias.detach().double().cpu().numpy()
        for i, m in enumerate(student.body)
        if isinstance(cfg.layers[i], (Conv, Linear)) and m.bias is not None
    }
    lif = {i: k for k, i in enumerate(cfg.spiking_layers)}
    out: list[DeployedLayer] = []
    shape: tuple[int, ...] = tuple(cfg.input_shape)  # shape of the real (unpooled) signal
    pool, flatten = 1, False
    signal: dict[int, tuple[int, int, tuple[int, ...]]] = {}  # layer -> (deployed producer, pool, unpooled shape)
    for i, layer in enumerate(cfg.layers):
        if isinstance(layer, AvgPool):
            if shape[1] % (pool * layer.kernel_size) or shape[2] % (pool * layer.kernel_size):
                raise UserError(
                    f"layer {i} (avgpool {layer.kernel_size}): a {shape[1]}x{shape[2]} map is not divisible by the pool, "
                    "so it cannot be folded into the next layer exactly; use a pool that divides the map"
                )
            pool *= layer.kernel_size
        elif isinstance(layer, Flatten):
            flatten = True
        elif isinstance(layer, Conv):
            w, stride, padding = weights[i], layer.stride, layer.padding
            if pool > 1:
                w, stride, padding = fold_pool_into_conv(w, pool, stride, padding)
            out.append(DeployedLayer("conv", w, shape, shapes[i], stride, padding, lif.get(i), i, bias=biases.get(i)))
            shape, pool = shapes[i], 1
        elif isinstance(layer, Linear):
            w = weights[i]
            if pool > 1:
                w = fold_pool_into_linear(w, shape, pool)
            in_shape = (int(np.prod(shape)),)
            out.append(
                DeployedLayer(
                    "linear",
                    w,
                    in_shape,
                    shapes[i],
                    lif=lif.get(i),
                    source=i,
                    flatten_before=flatten and len(shape) == 3,
                    bias=biases.get(i),
                )
            )
            shape, pool, flatten = shapes[i], 1, False
        elif isinstance(layer, Shortcut):
            producer, source_pool, source_shape = signal[layer.source]
            module = student.body[i]
            if module.proj is None:
                w = np.eye(layer.out_channels)[:, :, None, None]
            else:
                w = module.proj.weight.detach().double().cpu().numpy()
            w, stride, _ = fold_pool_into_conv(w, source_pool, layer.stride, 0)
            out[-1].shortcut = DeployedShortcut(w, producer, source_shape, stride)
            out[-1].lif = lif.get(i)
        signal[i] = (len(out) - 1, pool, shape)
    return out
