"""The deployed graph: the student as hardware sees it (Conv/Linear only, pooling folded in, float64).

Every target (ONNX's spike taps aside, NIR, netx HDF5, the energy model) reads the student through
``deployed_layers``; none of them reaches into training code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import torch

from ..errors import UserError
from .config import StudentConfig
from .layers import LAYER_TYPES, AvgPool, Conv, Dropout, Flatten, Linear, Shortcut, layer_name, table_entry
from .module import SpikingStudent
from .walk import LayerStep


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

    @property
    def convolutional(self) -> bool:
        """Weights shared over a ``[C, H, W]`` map and a bias per channel (a conv), rather than all-to-all."""
        return LAYER_TYPES[self.kind].convolutional


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
    return any(l.joins_previous for l in config.layers)


@dataclass
class _Deploying:
    """The state of ``deployed_layers``'s walk: the layers so far and the signal the next one reads."""

    student: SpikingStudent
    out: list[DeployedLayer] = field(default_factory=list)
    shape: tuple[int, ...] = ()  # the real (unpooled) signal's shape
    pool: int = 1  # the product of the pools since the last deployed layer, folded into the next one
    flatten: bool = False
    # layer index -> (the deployed layer whose spikes it carries, the pool since, the unpooled shape)
    signal: dict[int, tuple[int, int, tuple[int, ...]]] = field(default_factory=dict)

    def weight(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Layer ``index``'s weight and bias (None without one) in float64."""
        module = self.student.synapses(index)
        bias = None if module.bias is None else _float64(module.bias)
        return _float64(module.weight), bias


def _float64(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().double().cpu().numpy()


def _deploy_pool(d: _Deploying, step: LayerStep) -> None:
    k = cast(AvgPool, step.spec).kernel_size
    if d.shape[1] % (d.pool * k) or d.shape[2] % (d.pool * k):
        raise UserError(
            f"layer {step.index} (avgpool {k}): a {d.shape[1]}x{d.shape[2]} map is not divisible by the pool, "
            "so it cannot be folded into the next layer exactly; use a pool that divides the map"
        )
    d.pool *= k


def _deploy_flatten(d: _Deploying, step: LayerStep) -> None:
    d.flatten = True


def _deploy_dropout(d: _Deploying, step: LayerStep) -> None:
    """The identity at inference: no deployed layer."""


def _deploy_conv(d: _Deploying, step: LayerStep) -> None:
    spec = cast(Conv, step.spec)
    (w, bias), stride, padding = d.weight(step.index), spec.stride, spec.padding
    if d.pool > 1:
        w, stride, padding = fold_pool_into_conv(w, d.pool, stride, padding)
    d.out.append(DeployedLayer("conv", w, d.shape, step.out_shape, stride, padding, step.lif, step.index, bias=bias))
    d.shape, d.pool = step.out_shape, 1


def _deploy_linear(d: _Deploying, step: LayerStep) -> None:
    w, bias = d.weight(step.index)
    if d.pool > 1:
        w = fold_pool_into_linear(w, _map(d.shape), d.pool)
    flatten_before = d.flatten and len(d.shape) == 3
    in_shape = (int(np.prod(d.shape)),)
    d.out.append(
        DeployedLayer(
            "linear",
            w,
            in_shape,
            step.out_shape,
            lif=step.lif,
            source=step.index,
            flatten_before=flatten_before,
            bias=bias,
        )
    )
    d.shape, d.pool, d.flatten = step.out_shape, 1, False


def _deploy_shortcut(d: _Deploying, step: LayerStep) -> None:
    """The second input of the deployed conv it closes; that conv's LIF is the shortcut's."""
    spec = cast(Shortcut, step.spec)
    producer, source_pool, source_shape = d.signal[spec.source]
    if spec.projects:
        w = d.weight(step.index)[0]
    else:
        w = np.eye(spec.out_channels)[:, :, None, None]
    w, stride, _ = fold_pool_into_conv(w, source_pool, spec.stride, 0)
    d.out[-1].shortcut = DeployedShortcut(w, producer, _map(source_shape), stride)
    d.out[-1].lif = step.lif


def _map(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """A ``[C, H, W]`` shape as such (what a pool or a shortcut reads: ``StudentConfig`` checked it)."""
    c, h, w = shape
    return c, h, w


# layer-spec type -> how it enters the deployed graph
_DEPLOY: dict[type, Callable[[_Deploying, LayerStep], None]] = {
    Conv: _deploy_conv,
    Linear: _deploy_linear,
    AvgPool: _deploy_pool,
    Flatten: _deploy_flatten,
    Dropout: _deploy_dropout,
    Shortcut: _deploy_shortcut,
}


def deployed_layers(student: SpikingStudent) -> list[DeployedLayer]:
    """The student as hardware sees it: Conv/Linear only, each AvgPool folded into the next layer.

    A ``Shortcut`` becomes the ``shortcut`` input of the deployed Conv it closes.
    """
    d = _Deploying(student, shape=tuple(student.config.input_shape))
    for step in student.config.layer_steps:
        table_entry(_DEPLOY, type(step.spec), "the deployed graph")(d, step)
        d.signal[step.index] = (len(d.out) - 1, d.pool, d.shape)
    return d.out
