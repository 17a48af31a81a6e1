"""Student SNN architectures, as ``StudentConfig`` builders sized to the data (docs/semantics.md, 'The float student').

Every student follows the conversion-friendly rules of LaSNN (Sec. III-A3) and of Rathi et al.'s
hybrid-conversion VGGs: 3x3 convolutions with padding 1 and no bias, no batch norm, 2x2 average
pooling, dropout 0.2 after a conv that no pool follows and 0.5 after every hidden Linear. A LIF
layer follows every Conv/Linear but the last (``StudentConfig`` implies it).

A pool is placed only where it divides the feature map evenly (28 -> 14 -> 7, then no more), because
the exports fold each pool into the next layer exactly and refuse a pool that leaves a remainder.

``VGG-N`` counts weight layers: N - 1 - len(hidden) convolutions, the hidden Linears, the output
Linear. The convolution plans follow Rathi et al. (VGG9, VGG16); VGG5 and VGG7 are their shallower
kin. ResNet12 follows Rathi et al.'s spiking ResNets: a stem of three 3x3 convolutions and a pool,
then four basic blocks (64, 128, 256, 512 channels, strides 1, 2, 2, 2; conv-LIF-dropout-conv, plus
the block input through a ``Shortcut``, then LIF), then the output Linear: 3 + 8 + 1 weight layers.

``width`` scales every channel and hidden-unit count (at least 1), so the same shape can be trained
small on a CPU; ``dropout`` replaces both dropout rates (0 removes the Dropout layers); ``bias`` gives
every Conv and Linear a bias (the place of a batch norm folded in at conversion).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import cast

from ..errors import UserError
from ..neurons import Encoding, Reset
from ..student import AvgPool, Conv, Dropout, Flatten, LayerSpec, Linear, Shortcut, StudentConfig

POOL = "A"
CONV_DROPOUT = 0.2
HIDDEN_DROPOUT = 0.5
Plan = Sequence[int | str]


def _scaled(n: int, width: float) -> int:
    return max(1, int(round(n * width)))


def plan_layers(
    input_shape: Sequence[int],
    num_classes: int,
    convs: Plan,
    hidden: Sequence[int] = (),
    *,
    width: float = 1.0,
    conv_dropout: float = CONV_DROPOUT,
    hidden_dropout: float = HIDDEN_DROPOUT,
) -> tuple[LayerSpec, ...]:
    """Layer specs from a VGG-style plan: ints are 3x3 convs (channels), ``"A"`` a 2x2 average pool."""
    if width <= 0:
        raise UserError(f"student width must be positive, got {width}")
    channels, h, w = (int(s) for s in input_shape)
    layers: list[LayerSpec] = []
    for item in convs:
        if item == POOL:
            if h % 2 or w % 2:
                continue  # a pool here would not divide the map; the exports could not fold it
            if layers and isinstance(layers[-1], Dropout):
                layers.pop()  # Rathi et al.: a pool takes the place of the dropout after a conv
            layers.append(AvgPool(2))
            h, w = h // 2, w // 2
            continue
        out = _scaled(int(item), width)
        layers.append(Conv(channels, out, 3, 1, 1))
        if conv_dropout > 0:
            layers.append(Dropout(conv_dropout))
        channels = out
    layers.append(Flatten())
    features = channels * h * w
    for units in hidden:
        units = _scaled(units, width)
        layers.append(Linear(features, units))
        if hidden_dropout > 0:
            layers.append(Dropout(hidden_dropout))
        features = units
    layers.append(Linear(features, num_classes))
    return tuple(layers)


LayerPlan = Callable[[Sequence[int], int, float, float | None], tuple[LayerSpec, ...]]
StudentBuilder = Callable[..., StudentConfig]


def _builder(arch: str, plan: LayerPlan, doc: str) -> StudentBuilder:
    """A student builder: options checked, layers from ``plan(input_shape, num_classes, width, dropout)``."""

    def build(
        input_shape: Sequence[int],
        num_classes: int,
        *,
        timesteps: int = 8,
        encoding: Encoding = Encoding.DIRECT,
        reset: Reset = "hard",
        width: float = 1.0,
        dropout: float | None = None,
        bias: bool = False,
    ) -> StudentConfig:
        if dropout is not None and not 0 <= dropout < 1:
            raise UserError(f"student dropout must be in [0, 1), got {dropout}")
        layers = plan(input_shape, num_classes, width, dropout)
        if bias:  # every Conv and Linear gets a per-channel bias (where a folded batch norm goes)
            layers = tuple(dataclasses.replace(l, bias=True) if isinstance(l, (Conv, Linear)) else l for l in layers)
        shape = cast(tuple[int, int, int], tuple(input_shape))  # StudentConfig checks that it is [C, H, W]
        return StudentConfig(arch, shape, num_classes, layers, timesteps, encoding, reset)

    build.__name__ = arch.replace("-", "_")
    build.__doc__ = doc
    return build


def _vgg(arch: str, convs: Plan, hidden: Sequence[int], conv_dropout: float, hidden_dropout: float) -> StudentBuilder:
    """A VGG-style student (``plan_layers``); ``dropout`` replaces both rates when given."""

    def plan(
        input_shape: Sequence[int], num_classes: int, width: float, dropout: float | None
    ) -> tuple[LayerSpec, ...]:
        return plan_layers(
            input_shape,
            num_classes,
            convs,
            hidden,
            width=width,
            conv_dropout=conv_dropout if dropout is None else dropout,
            hidden_dropout=hidden_dropout if dropout is None else dropout,
        )

    return _builder(arch, plan, f"The {arch} student: convs {list(convs)}, hidden Linears {list(hidden)}.")


RESNET12_STEM = (64, 64, 64)
RESNET12_BLOCKS = ((64, 1), (128, 2), (256, 2), (512, 2))  # (channels, stride) of each basic block


def resnet_layers(
    input_shape: Sequence[int],
    num_classes: int,
    stem: Sequence[int],
    blocks: Sequence[tuple[int, int]],
    *,
    width: float = 1.0,
    dropout: float = CONV_DROPOUT,
) -> tuple[LayerSpec, ...]:
    """Layer specs of a spiking ResNet: stem convs, a pool (if it divides the map), basic blocks, Linear."""
    if width <= 0:
        raise UserError(f"student width must be positive, got {width}")
    channels, h, w = (int(s) for s in input_shape)
    layers: list[LayerSpec] = []
    for k, units in enumerate(stem):
        out = _scaled(units, width)
        layers.append(Conv(channels, out, 3, 1, 1))
        if dropout > 0 and k < len(stem) - 1:
            layers.append(Dropout(dropout))
        channels = out
    if h % 2 == 0 and w % 2 == 0:
        layers.append(AvgPool(2))
        h, w = h // 2, w // 2
    for units, stride in blocks:
        out, source = _scaled(units, width), len(layers) - 1
        layers.append(Conv(channels, out, 3, stride, 1))
        if dropout > 0:
            layers.append(Dropout(dropout))
        layers.append(Conv(out, out, 3, 1, 1))
        layers.append(Shortcut(source, channels, out, stride))
        channels, h, w = out, (h - 1) // stride + 1, (w - 1) // stride + 1
    layers += [Flatten(), Linear(channels * h * w, num_classes)]
    return tuple(layers)


def _resnet12_plan(
    input_shape: Sequence[int], num_classes: int, width: float, dropout: float | None
) -> tuple[LayerSpec, ...]:
    return resnet_layers(
        input_shape,
        num_classes,
        RESNET12_STEM,
        RESNET12_BLOCKS,
        width=width,
        dropout=CONV_DROPOUT if dropout is None else dropout,
    )


STUDENTS: dict[str, StudentBuilder] = {
    # conv16-LIF-pool-conv32-LIF-pool-linear: seconds per epoch on a CPU, for tests and the demo.
    "tiny": _vgg("tiny", [16, POOL, 32, POOL], [], 0.0, 0.0),
    # A dense MLP (Flatten-Linear 256-LIF-Linear): the all-to-all case for energy models.
    "mlp": _vgg("mlp", [], [256], 0.0, HIDDEN_DROPOUT),
    # LaSNN Table I / II "3Conv, 2Linear".
    "3conv2linear": _vgg("3conv2linear", [64, POOL, 128, POOL, 256, POOL], [1024], CONV_DROPOUT, HIDDEN_DROPOUT),
    "vgg5": _vgg("vgg5", [64, POOL, 128, 128, POOL], [1024], CONV_DROPOUT, HIDDEN_DROPOUT),
    "vgg7": _vgg("vgg7", [64, 64, POOL, 128, 128, POOL, 256, POOL], [1024], CONV_DROPOUT, HIDDEN_DROPOUT),
    "vgg9": _vgg(
        "vgg9", [64, POOL, 128, 256, POOL, 256, 512, POOL, 512, POOL, 512], [1024], CONV_DROPOUT, HIDDEN_DROPOUT
    ),
    "vgg16": _vgg(
        "vgg16",
        [64, 64, POOL, 128, 128, POOL, 256, 256, 256, POOL, 512, 512, 512, POOL, 512, 512, 512],
        [4096, 4096],
        CONV_DROPOUT,
        HIDDEN_DROPOUT,
    ),
    "resnet12": _builder(
        "resnet12",
        _resnet12_plan,
        "The resnet12 student: stem convs [64, 64, 64], pool, blocks 64/1, 128/2, 256/2, 512/2, Linear.",
    ),
}


def build_student(
    name: str,
    input_shape: Sequence[int],
    num_classes: int,
    **options,
) -> StudentConfig:
    """The student ``name`` from ``STUDENTS`` sized to the data; one clear error for an unknown name."""
    if name not in STUDENTS:
        raise UserError(f"unknown student {name!r}: choose one of {', '.join(STUDENTS)}")
    return STUDENTS[name](input_shape, num_classes, **options)
