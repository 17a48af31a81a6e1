"""Layer specs: one frozen dataclass per layer type, each knowing its output shape, its tensors and its
torch module (like ``nir``'s one dataclass per node with shape inference on the node).

Index convention: ``source`` anywhere in the student (``Shortcut.source``, ``DeployedLayer.source``)
is an index into ``StudentConfig.layers``; ``layer_name`` gives the one name a layer has in every
export and report.
"""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError


def _checked_int(value: Any, what: str, minimum: int) -> int:
    """``value`` as an int if it is an integer >= ``minimum``; else ``UserError`` naming ``what``."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
        raise UserError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_fields(spec: Any, **minimums: int) -> None:
    """Frozen layer specs: every named field an integer >= its minimum (files may hold anything)."""
    for name, minimum in minimums.items():
        object.__setattr__(spec, name, _checked_int(getattr(spec, name), f"{spec.type} {name}", minimum))


def _check_bias(spec: Any) -> None:
    if not isinstance(spec.bias, bool):
        raise UserError(f"{spec.type} bias must be true or false, got {spec.bias!r}")


def layer_name(kind: str, index: int) -> str:
    """The name of layer ``index`` of type ``kind`` (``conv0``, ``linear5``) in every export and report."""
    return f"{kind}{index}"


class _Spec:
    """What every layer spec has: its roles (class attributes, all off here) and the defaults of a
    layer without tensors that keeps its input's shape.

    Readings of the student ask a spec for its role, never for its type name, so a new layer type
    states its roles once, here in its class.
    """

    has_synapses: ClassVar[bool] = False
    """A weight from every input to its output neurons (Conv, Linear): a layer of the deployed graph,
    with a bias when asked, a batch norm in the intermediate ANN, a float64 sum in the exact run."""
    makes_current: ClassVar[bool] = False
    """Its output is a synaptic current (Conv, Linear, Shortcut), which a LIF layer integrates unless it
    is the output layer's or the next layer ``joins_previous``."""
    joins_previous: ClassVar[bool] = False
    """Adds its current to that of the layer just before it and takes over that layer's LIF (Shortcut)."""
    is_pool: ClassVar[bool] = False
    """Averages its input map (AvgPool): a shortcut may read a LIF layer's spikes through it, and the
    deployed graph folds it into the next layer."""
    convolutional: ClassVar[bool] = False
    """Weights shared over a ``[C, H, W]`` map, a bias per channel (Conv), rather than all-to-all (Linear)."""

    @property
    def sources(self) -> tuple[int, ...]:
        """Earlier layers (indices into ``StudentConfig.layers``) whose output this layer reads besides its input."""
        return ()

    def out_shape(self, shape: tuple[int, ...], where: str = "") -> tuple[int, ...]:
        return shape

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        return {}


@dataclass(frozen=True)
class Conv(_Spec):
    """Convolution; with ``bias`` its per-channel ``b`` is a constant input current every step."""

    in_channels: int
    out_channels: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    bias: bool = False
    type: ClassVar[str] = "conv"
    has_synapses: ClassVar[bool] = True
    makes_current: ClassVar[bool] = True
    convolutional: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _check_fields(self, in_channels=1, out_channels=1, kernel_size=1, stride=1, padding=0)
        _check_bias(self)

    def out_shape(self, shape: tuple[int, ...], where: str = "") -> tuple[int, ...]:
        if len(shape) != 3 or shape[0] != self.in_channels:
            raise UserError(f"{where}conv expects [{self.in_channels}, H, W] input, got {list(shape)}")
        h, w = ((s + 2 * self.padding - self.kernel_size) // self.stride + 1 for s in shape[1:])
        if h < 1 or w < 1:
            raise UserError(
                f"{where}a {self.kernel_size}x{self.kernel_size} kernel does not fit a padded "
                f"{shape[1] + 2 * self.padding}x{shape[2] + 2 * self.padding} map"
            )
        return (self.out_channels, h, w)

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        weight: dict[str, tuple[int, ...]] = {
            "weight": (self.out_channels, self.in_channels, self.kernel_size, self.kernel_size)
        }
        return {**weight, "bias": (self.out_channels,)} if self.bias else weight

    def build(self) -> nn.Module:
        return nn.Conv2d(
            self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding, bias=self.bias
        )


@dataclass(frozen=True)
class Linear(_Spec):
    """Fully connected layer; with ``bias`` its ``b`` is a constant input current every step."""

    in_features: int
    out_features: int
    bias: bool = False
    type: ClassVar[str] = "linear"
    has_synapses: ClassVar[bool] = True
    makes_current: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _check_fields(self, in_features=1, out_features=1)
        _check_bias(self)

    def out_shape(self, shape: tuple[int, ...], where: str = "") -> tuple[int, ...]:
        if len(shape) != 1 or shape[0] != self.in_features:
            raise UserError(f"{where}linear expects [{self.in_features}] input, got {list(shape)}")
        return (self.out_features,)

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        weight: dict[str, tuple[int, ...]] = {"weight": (self.out_features, self.in_features)}
        return {**weight, "bias": (self.out_features,)} if self.bias else weight

    def build(self) -> nn.Module:
        return nn.Linear(self.in_features, self.out_features, bias=self.bias)


@dataclass(frozen=True)
class AvgPool(_Spec):
    kernel_size: int  # stride equals the kernel size
    type: ClassVar[str] = "avgpool"
    is_pool: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _check_fields(self, kernel_size=1)

    def out_shape(self, shape: tuple[int, ...], where: str = "") -> tuple[int, ...]:
        if len(shape) != 3:
            raise UserError(f"{where}avgpool needs a [C, H, W] input, got {list(shape)}")
        if self.kernel_size > min(shape[1:]):
            raise UserError(
                f"{where}a {self.kernel_size}x{self.kernel_size} pool does not fit a {shape[1]}x{shape[2]} map"
            )
        return (shape[0], shape[1] // self.kernel_size, shape[2] // self.kernel_size)

    def build(self) -> nn.Module:
        return nn.AvgPool2d(self.kernel_size)


@dataclass(frozen=True)
class Flatten(_Spec):
    type: ClassVar[str] = "flatten"

    def out_shape(self, shape: tuple[int, ...], where: str = "") -> tuple[int, ...]:
        return (int(np.prod(shape)),)

    def build(self) -> nn.Module:
        return nn.Flatten()


@dataclass(frozen=True)
class Dropout(_Spec):
    p: float
    type: ClassVar[str] = "dropout"

    def __post_init__(self) -> None:
        if isinstance(self.p, bool) or not isinstance(self.p, numbers.Real) or not 0 <= self.p < 1:
            raise UserError(f"dropout p must be a number in [0, 1), got {self.p!r}")

    def build(self) -> nn.Module:
        return nn.Identity()  # masks are drawn in SpikingStudent.run, shared over time


@dataclass(frozen=True)
class Shortcut(_Spec):
    """Residual connection closing a block (Rathi et al. 2020's spiking ResNet basic block).

    Adds the output of layer ``source`` (an index into ``StudentConfig.layers``: spikes of a LIF
    layer, or an average pool of them) to the current of the Conv just before this spec; the LIF
    that would follow that Conv fires after the sum. The source passes through a 1x1 convolution of
    ``stride`` when ``in_channels != out_channels`` or ``stride > 1`` (the projection shortcut), and
    as it is otherwise.
    """

    source: int
    in_channels: int
    out_channels: int
    stride: int = 1
    type: ClassVar[str] = "shortcut"
    makes_current: ClassVar[bool] = True
    joins_previous: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _check_fields(self, source=0, in_channels=1, out_channels=1, stride=1)

    @property
    def projects(self) -> bool:
        return self.in_channels != self.out_channels or self.stride != 1

    @property
    def sources(self) -> tuple[int, ...]:
        return (self.source,)

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"proj.weight": (self.out_channels, self.in_channels, 1, 1)} if self.projects else {}

    def build(self) -> nn.Module:
        return ResidualAdd(self)


class ResidualAdd(nn.Module):
    """``current + proj(source)``: the sum a block's last LIF integrates (``proj`` is a 1x1 conv or identity).

    One module, so a forward hook on it sees the whole input current of that LIF layer.
    """

    def __init__(self, spec: Shortcut):
        super().__init__()
        self.stride = spec.stride
        self.proj = (
            nn.Conv2d(spec.in_channels, spec.out_channels, 1, spec.stride, bias=False) if spec.projects else None
        )

    def forward(self, current: torch.Tensor, source: torch.Tensor, exact: bool = False) -> torch.Tensor:
        if self.proj is None:
            return current + source.to(current.dtype)
        if exact:
            return current + F.conv2d(source.double(), self.proj.weight.double(), stride=self.stride)
        return current + self.proj(source)


LayerSpec = Conv | Linear | AvgPool | Flatten | Dropout | Shortcut
LAYER_TYPES: dict[str, type[LayerSpec]] = {c.type: c for c in (Conv, Linear, AvgPool, Flatten, Dropout, Shortcut)}


def table_entry(table: dict[Any, Any], key: Any, place: str) -> Any:
    """The entry of ``table`` for ``key``: a layer-spec type (or a deployed layer's ``kind``) -> how
    ``place`` maps it.

    Each place that maps layers keeps one such table, so a new layer type is one entry per table;
    a key without an entry raises a ``TypeError`` naming it and the place.
    """
    try:
        return table[key]
    except KeyError as err:
        name = key.__name__ if isinstance(key, type) else repr(key)
        raise TypeError(f"{place} has no entry for layer type {name}; add one to its table") from err


def layer_to_dict(layer: LayerSpec) -> dict[str, Any]:
    """The layer as JSON data; ``bias`` only when true, so bias-free files stay as they were."""
    d = {"type": layer.type, **dataclasses.asdict(layer)}
    if d.get("bias") is False:
        del d["bias"]
    return d


def layer_from_dict(d: dict[str, Any]) -> LayerSpec:
    if not isinstance(d, dict):
        raise UserError(f"a layer in the student description must be a mapping, got {d!r}")
    d = dict(d)
    kind = d.pop("type", None)
    if kind not in LAYER_TYPES:
        raise UserError(f"unknown layer type {kind!r} in student description; known: {sorted(LAYER_TYPES)}")
    return LAYER_TYPES[kind](**d)
