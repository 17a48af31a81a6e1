"""The student SNN, described once as data, and the PyTorch module built from that description.

``StudentConfig`` is the architecture (an ordered tuple of layer specs) plus the run settings
(time steps, encoding, reset). ``SpikingStudent`` holds the weights, the shared leak and the
per-layer thresholds. Every other target (ONNX, NIR, netx HDF5, the energy model) reads these two
through ``deployed_layers``; none of them reaches into training code.

A LIF layer follows every Conv/Linear except the last, so pooling always acts on spikes (or on
the input image) and the last Linear feeds the non-spiking output integrator. A ``Shortcut`` right
after a Conv makes a residual block: it adds an earlier layer's spikes (through a 1x1 convolution
when the shape changes) to that Conv's current, and the Conv's LIF fires after the sum.
"""

from __future__ import annotations

import dataclasses
import json
import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .atomic import atomic_path
from .errors import UserError
from .neurons import Encoding, Reset, encode, lif_multistep

FORMAT = "lasnn-deploy-student/1"
STUDENT_FILE = "student.safetensors"


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


@dataclass(frozen=True)
class Conv:
    """Convolution; with ``bias`` its per-channel ``b`` is a constant input current every step."""

    in_channels: int
    out_channels: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    bias: bool = False
    type: ClassVar[str] = "conv"

    def __post_init__(self) -> None:
        _check_fields(self, in_channels=1, out_channels=1, kernel_size=1, stride=1, padding=0)
        _check_bias(self)


@dataclass(frozen=True)
class Linear:
    """Fully connected layer; with ``bias`` its ``b`` is a constant input current every step."""

    in_features: int
    out_features: int
    bias: bool = False
    type: ClassVar[str] = "linear"

    def __post_init__(self) -> None:
        _check_fields(self, in_features=1, out_features=1)
        _check_bias(self)


@dataclass(frozen=True)
class AvgPool:
    kernel_size: int  # stride equals the kernel size
    type: ClassVar[str] = "avgpool"

    def __post_init__(self) -> None:
        _check_fields(self, kernel_size=1)


@dataclass(frozen=True)
class Flatten:
    type: ClassVar[str] = "flatten"


@dataclass(frozen=True)
class Dropout:
    p: float
    type: ClassVar[str] = "dropout"

    def __post_init__(self) -> None:
        if isinstance(self.p, bool) or not isinstance(self.p, numbers.Real) or not 0 <= self.p < 1:
            raise UserError(f"dropout p must be a number in [0, 1), got {self.p!r}")


@dataclass(frozen=True)
class Shortcut:
    """Residual connection closing a block (Rathi et al. 2020's spiking ResNet basic block).

    Adds the output of layer ``source`` (spikes of a LIF layer, or an average pool of them) to the
    current of the Conv just before this spec; the LIF that would follow that Conv fires after the
    sum. The source passes through a 1x1 convolution of ``stride`` when ``in_channels !=
    out_channels`` or ``stride > 1`` (the projection shortcut), and as it is otherwise.
    """

    source: int
    in_channels: int
    out_channels: int
    stride: int = 1
    type: ClassVar[str] = "shortcut"

    def __post_init__(self) -> None:
        _check_fields(self, source=0, in_channels=1, out_channels=1, stride=1)

    @property
    def projects(self) -> bool:
        return self.in_channels != self.out_channels or self.stride != 1


LayerSpec = Union[Conv, Linear, AvgPool, Flatten, Dropout, Shortcut]
LAYER_TYPES: dict[str, type] = {c.type: c for c in (Conv, Linear, AvgPool, Flatten, Dropout, Shortcut)}


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


def out_shape(layer: LayerSpec, shape: tuple[int, ...], where: str = "") -> tuple[int, ...]:
    """Shape after ``layer`` of a batch-free input ``shape``; raises on mismatch."""
    if isinstance(layer, Conv):
        if len(shape) != 3 or shape[0] != layer.in_channels:
            raise UserError(f"{where}conv expects [{layer.in_channels}, H, W] input, got {list(shape)}")
        h, w = ((s + 2 * layer.padding - layer.kernel_size) // layer.stride + 1 for s in shape[1:])
        if h < 1 or w < 1:
            raise UserError(f"{where}a {layer.kernel_size}x{layer.kernel_size} kernel does not fit a padded "
                            f"{shape[1] + 2 * layer.padding}x{shape[2] + 2 * layer.padding} map")
        return (layer.out_channels, h, w)
    if isinstance(layer, Linear):
        if len(shape) != 1 or shape[0] != layer.in_features:
            raise UserError(f"{where}linear expects [{layer.in_features}] input, got {list(shape)}")
        return (layer.out_features,)
    if isinstance(layer, AvgPool):
        if len(shape) != 3:
            raise UserError(f"{where}avgpool needs a [C, H, W] input, got {list(shape)}")
        if layer.kernel_size > min(shape[1:]):
            raise UserError(f"{where}a {layer.kernel_size}x{layer.kernel_size} pool does not fit a {shape[1]}x{shape[2]} map")
        return (shape[0], shape[1] // layer.kernel_size, shape[2] // layer.kernel_size)
    if isinstance(layer, Flatten):
        return (int(np.prod(shape)),)
    return shape


@dataclass(frozen=True)
class StudentConfig:
    """Architecture and run settings of a student SNN (SPEC sections 1 and 5)."""

    arch: str
    input_shape: tuple[int, int, int]
    num_classes: int
    layers: tuple[LayerSpec, ...]
    timesteps: int = 8
    encoding: Encoding = "direct"
    reset: Reset = "hard"

    def __post_init__(self) -> None:
        if not isinstance(self.arch, str):
            raise UserError(f"arch must be a string, got {self.arch!r}")
        shape = self.input_shape
        if isinstance(shape, (str, bytes)) or not isinstance(shape, (tuple, list)) or len(shape) != 3:
            raise UserError(f"input_shape must be [C, H, W], got {shape!r}")
        object.__setattr__(self, "input_shape", tuple(_checked_int(s, "input_shape entries", 1) for s in shape))
        object.__setattr__(self, "num_classes", _checked_int(self.num_classes, "num_classes", 1))
        if not isinstance(self.layers, (tuple, list)) or not all(isinstance(l, tuple(LAYER_TYPES.values())) for l in self.layers):
            raise UserError(f"layers must be a sequence of layer specs, got {self.layers!r}")
        object.__setattr__(self, "layers", tuple(self.layers))
        if self.encoding not in ("direct", "poisson"):
            raise UserError(f"encoding must be 'direct' or 'poisson', got {self.encoding!r}")
        if self.reset not in ("hard", "soft"):
            raise UserError(f"reset must be 'hard' or 'soft', got {self.reset!r}")
        check_timesteps(self.timesteps)
        weighted = [i for i, l in enumerate(self.layers) if isinstance(l, (Conv, Linear))]
        if not weighted or not isinstance(self.layers[weighted[-1]], Linear):
            raise UserError("a student must end with a Linear layer (the output integrator's input)")
        if self.shapes()[-1] != (self.num_classes,):
            raise UserError(f"the student's output shape {list(self.shapes()[-1])} != [{self.num_classes}] classes")
        for i, layer in enumerate(self.layers):
            if isinstance(layer, Shortcut):
                self._check_shortcut(i, layer)

    def _check_shortcut(self, i: int, spec: Shortcut) -> None:
        """A shortcut closes a Conv's block and reads spikes that exist on hardware, of the right shape."""
        where = f"layer {i} (shortcut): "
        if i == 0 or not isinstance(self.layers[i - 1], Conv):
            raise UserError(f"{where}a shortcut must directly follow the Conv whose current it adds to")
        if spec.source >= i - 1:
            raise UserError(f"{where}source {spec.source} must be a layer before the block's last Conv (index < {i - 1})")
        if self.source_lif(spec.source) is None:
            raise UserError(f"{where}source {spec.source} must be a spiking layer's output, or an average pool of one")
        shapes = self.shapes()
        c, h, w = shapes[spec.source]
        target = shapes[i - 1]
        if c != spec.in_channels:
            raise UserError(f"{where}in_channels {spec.in_channels} != the {c} channels of source layer {spec.source}")
        if target != (spec.out_channels, (h - 1) // spec.stride + 1, (w - 1) // spec.stride + 1):
            raise UserError(f"{where}source layer {spec.source} [{c}, {h}, {w}] at stride {spec.stride} does not give "
                            f"the block's output {list(target)}")

    def shapes(self) -> list[tuple[int, ...]]:
        """Batch-free output shape of every layer, in order."""
        shapes, shape = [], tuple(self.input_shape)
        for i, layer in enumerate(self.layers):
            shape = out_shape(layer, shape, where=f"layer {i} ({layer.type}): ")
            shapes.append(shape)
        return shapes

    @property
    def spiking_layers(self) -> list[int]:
        """Indices of the layers that a LIF layer follows: every Conv/Linear but the last, except that
        a Conv closing a residual block hands its LIF to the ``Shortcut`` after it."""
        weighted = [i for i, l in enumerate(self.layers) if isinstance(l, (Conv, Linear, Shortcut))][:-1]
        closes_block = {i - 1 for i, l in enumerate(self.layers) if isinstance(l, Shortcut)}
        return [i for i in weighted if i not in closes_block]

    def source_lif(self, index: int) -> int | None:
        """The LIF layer (index among the spiking layers) whose spikes layer ``index`` outputs,
        directly or through average pools; None when its output is not a LIF layer's spikes."""
        while isinstance(self.layers[index], AvgPool) and index > 0:
            index -= 1
        lifs = self.spiking_layers
        return lifs.index(index) if index in lifs else None

    @property
    def shortcut_sources(self) -> set[int]:
        """Indices of the layers whose output a later ``Shortcut`` adds back."""
        return {l.source for l in self.layers if isinstance(l, Shortcut)}

    def replace(self, **changes: Any) -> "StudentConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "layers": [layer_to_dict(l) for l in self.layers],
            "timesteps": self.timesteps,
            "encoding": self.encoding,
            "reset": self.reset,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "StudentConfig":
        if not isinstance(d, dict):
            raise UserError(f"the student description must be a mapping, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise UserError(f"unknown keys in student description: {sorted(unknown)}")
        d = dict(d)
        layers = d.get("layers", [])
        if not isinstance(layers, list):
            raise UserError(f"layers in the student description must be a list, got {layers!r}")
        d["layers"] = tuple(layer_from_dict(l) for l in layers)
        return cls(**d)


MAX_TIMESTEPS = 10_000


def check_timesteps(timesteps: int) -> int:
    if not isinstance(timesteps, int) or isinstance(timesteps, bool) or not 1 <= timesteps <= MAX_TIMESTEPS:
        raise UserError(f"time steps must be an integer in 1..{MAX_TIMESTEPS}, got {timesteps!r}")
    return timesteps


@dataclass
class Trace:
    """What one run of the student produced: logits ``[B, K]`` and the spikes of every LIF layer."""

    logits: torch.Tensor
    spikes: list[torch.Tensor] = field(default_factory=list)  # each [T, B, ...]
    input_spikes: torch.Tensor | None = None  # [T, B, C, H, W]; None for direct encoding
    outputs: torch.Tensor | None = None  # [T, B, K]: the readout's input current per step; logits are their mean


class ResidualAdd(nn.Module):
    """``current + proj(source)``: the sum a block's last LIF integrates (``proj`` is a 1x1 conv or identity).

    One module, so a forward hook on it sees the whole input current of that LIF layer.
    """

    def __init__(self, spec: Shortcut):
        super().__init__()
        self.stride = spec.stride
        self.proj = nn.Conv2d(spec.in_channels, spec.out_channels, 1, spec.stride, bias=False) if spec.projects else None

    def forward(self, current: torch.Tensor, source: torch.Tensor, exact: bool = False) -> torch.Tensor:
        if self.proj is None:
            return current + source.to(current.dtype)
        if exact:
            return current + F.conv2d(source.double(), self.proj.weight.double(), stride=self.stride)
        return current + self.proj(source)


def _torch_layer(layer: LayerSpec) -> nn.Module:
    if isinstance(layer, Shortcut):
        return ResidualAdd(layer)
    if isinstance(layer, Conv):
        return nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                         bias=layer.bias)
    if isinstance(layer, Linear):
        return nn.Linear(layer.in_features, layer.out_features, bias=layer.bias)
    if isinstance(layer, AvgPool):
        return nn.AvgPool2d(layer.kernel_size)
    if isinstance(layer, Flatten):
        return nn.Flatten()
    return nn.Identity()  # Dropout: masks are drawn in forward, shared over time


class SpikingStudent(nn.Module):
    """Student SNN (float reference of SPEC section 1) that also runs as its intermediate ANN.

    ``forward`` runs the SNN for ``T`` steps and returns logits ``u_out[T] / T``; ``forward_ann``
    runs the same weights with ReLU in place of every LIF layer (the intermediate ANN).
    """

    def __init__(self, config: StudentConfig, leak: float = 1.0, thresholds: list[float] | None = None):
        super().__init__()
        self.config = config
        self.body = nn.ModuleList(_torch_layer(l) for l in config.layers)
        n = len(config.spiking_layers)
        self.leak = nn.Parameter(torch.tensor(float(leak)))
        self.thresholds = nn.Parameter(torch.tensor(thresholds if thresholds is not None else [1.0] * n, dtype=torch.float32))
        self._lif_index = {layer: k for k, layer in enumerate(config.spiking_layers)}
        for module in self.weighted_modules():
            # He init (fan-in, ReLU gain) as Rathi et al.: without batch norm or bias, PyTorch's default
            # shrinks the signal ~2.5x per layer (vgg16's ANN output std 6e-8, resnet12's ANN stuck at chance)
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    # -- running -----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, timesteps: int | None = None, seed: int = 0) -> torch.Tensor:
        return self.run(x, timesteps=timesteps, seed=seed).logits

    def run(
        self,
        x: torch.Tensor | None = None,
        *,
        input_spikes: torch.Tensor | None = None,
        timesteps: int | None = None,
        seed: int = 0,
        record: bool = False,
        exact: bool = False,
    ) -> Trace:
        """Run the SNN on images ``x`` (encoded per the config) or on given ``input_spikes``.

        Under direct encoding the input is the same at every step, so the layers before the first
        LIF run once on ``[B, ...]`` and their result is repeated over time (exact, and T times
        cheaper). Afterwards every layer runs on ``[T * B, ...]`` at once.

        ``exact=True`` computes every synaptic current (conv, pool, linear) in float64 and rounds
        it once to the neuron's float32: the result no longer depends on the order in which a
        kernel adds its terms, so another runtime that does the same (the ONNX export) produces
        the same spikes bit for bit. Plain float32 kernels of two libraries disagree in the last
        bit, which flips a spike whenever ``u`` lies within a rounding step of ``theta``.
        """
        T = check_timesteps(timesteps or self.config.timesteps)
        if input_spikes is not None:
            h, static, T = input_spikes, False, input_spikes.shape[0]
        elif self.config.encoding == "direct":
            h, static = x, True
        else:
            h, static = encode(x, T, "poisson", seed), False
        trace = Trace(logits=torch.empty(0), input_spikes=None if static else h)
        sources, saved = self.config.shortcut_sources, {}
        for i, (spec, module) in enumerate(zip(self.config.layers, self.body)):
            if isinstance(spec, Dropout):
                h = self._dropout(h, spec.p, static)
                continue
            if exact:
                h = h.double()
            if isinstance(spec, Shortcut):  # source and current are both [T, B, ...]: a LIF lies behind each
                h = module(h.flatten(0, 1), saved[spec.source].flatten(0, 1), exact).unflatten(0, (T, -1))
            elif static:
                h = self._synapses(spec, module, h, exact)
            else:
                h = self._synapses(spec, module, h.flatten(0, 1), exact).unflatten(0, (T, -1))
            k = self._lif_index.get(i)
            if k is not None:
                if static:
                    h, static = h.unsqueeze(0).expand(T, *h.shape), False
                h = lif_multistep(h.to(self.leak.dtype), self.leak, self.thresholds[k], self.config.reset)
                if record:
                    trace.spikes.append(h)
            if i in sources:
                saved[i] = h
        trace.outputs = None if static else h.to(self.leak.dtype)
        trace.logits = (h if static else h.mean(0)).to(self.leak.dtype)
        return trace

    @staticmethod
    def _synapses(spec: LayerSpec, module: nn.Module, h: torch.Tensor, exact: bool) -> torch.Tensor:
        """One layer's synaptic operation plus its bias ``W*s + b``; in float64 with float64 weights when ``exact``."""
        if not exact or not isinstance(spec, (Conv, Linear)):
            return module(h)
        weight = module.weight.double()
        bias = None if module.bias is None else module.bias.double()
        if isinstance(spec, Conv):
            return F.conv2d(h, weight, bias, stride=spec.stride, padding=spec.padding)
        return F.linear(h, weight, bias)

    def _dropout(self, h: torch.Tensor, p: float, static: bool) -> torch.Tensor:
        if not self.training or p == 0:
            return h
        mask_shape = h.shape if static else h.shape[1:]
        mask = F.dropout(torch.ones(mask_shape, device=h.device, dtype=h.dtype), p, True)
        return h * mask

    def forward_ann(self, x: torch.Tensor, record: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Intermediate ANN: same weights, ReLU after every spiking layer. Returns logits, activations."""
        acts, sources, saved = [], self.config.shortcut_sources, {}
        for i, (spec, module) in enumerate(zip(self.config.layers, self.body)):
            if isinstance(spec, Dropout):
                x = F.dropout(x, spec.p, self.training)
                continue
            x = module(x, saved[spec.source]) if isinstance(spec, Shortcut) else module(x)
            if i in self._lif_index:
                x = F.relu(x)
                if record:
                    acts.append(x)
            if i in sources:
                saved[i] = x
        return x, acts

    # -- parameters --------------------------------------------------------------------------
    @torch.no_grad()
    def clamp_parameters_(self, min_threshold: float = 1e-3) -> None:
        """Keep the leak in (0, 1] and thresholds positive after an optimiser step."""
        self.leak.clamp_(min_threshold, 1.0)
        self.thresholds.clamp_(min=min_threshold)

    def weighted_modules(self) -> list[nn.Module]:
        """Every module with a weight, in layer order: Conv, Linear and shortcut projections."""
        weighted = [m.proj if isinstance(m, ResidualAdd) else m for m in self.body]
        return [m for m in weighted if isinstance(m, (nn.Conv2d, nn.Linear))]

    def with_config(self, **changes: Any) -> "SpikingStudent":
        """A copy that shares nothing, with run settings changed (e.g. ``timesteps``)."""
        other = SpikingStudent(self.config.replace(**changes))
        other.load_state_dict(self.state_dict())
        return other


# -- files -----------------------------------------------------------------------------------
def resolve_student_path(path: str | os.PathLike) -> Path:
    """A run folder or a student file -> the student file; one clear error if neither."""
    path = Path(path)
    if path.is_dir():
        path = path / STUDENT_FILE
    if not path.is_file():
        raise UserError(f"no student at {path}: pass a run folder from `lasnn-deploy train --out` or its {STUDENT_FILE}")
    return path


def save_student(student: SpikingStudent, path: str | os.PathLike) -> Path:
    """Write weights and description as one safetensors file (atomic; loads without code)."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        path = path / STUDENT_FILE
    tensors = {k: v.detach().cpu().contiguous() for k, v in student.state_dict().items()}
    meta = {"format": FORMAT, "config": json.dumps(student.config.to_dict())}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


def load_student(path: str | os.PathLike) -> SpikingStudent:
    """Load a student from a run folder or a ``.safetensors`` file; never executes code."""
    from safetensors import SafetensorError, safe_open

    path = resolve_student_path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise UserError(f"{path} is not a readable student file ({err}); re-create it with `lasnn-deploy train`") from None
    if meta.get("format") != FORMAT:
        raise UserError(f"{path} is not a lasnn-deploy student (format {meta.get('format')!r}, expected {FORMAT!r})")
    try:
        config = StudentConfig.from_dict(json.loads(meta["config"]))
    except (KeyError, TypeError, json.JSONDecodeError) as err:
        raise UserError(f"{path} has a malformed student description ({err})") from None
    _check_tensor_shapes(config, tensors, path)  # before building: a description may ask for any size
    student = SpikingStudent(config)
    student.load_state_dict(tensors)
    return student.eval()


def parameter_shapes(config: StudentConfig) -> dict[str, tuple[int, ...]]:
    """Name and shape of every tensor of a ``SpikingStudent`` built from ``config``."""
    shapes: dict[str, tuple[int, ...]] = {}
    for i, layer in enumerate(config.layers):
        if isinstance(layer, Conv):
            shapes[f"body.{i}.weight"] = (layer.out_channels, layer.in_channels, layer.kernel_size, layer.kernel_size)
        elif isinstance(layer, Linear):
            shapes[f"body.{i}.weight"] = (layer.out_features, layer.in_features)
        if isinstance(layer, (Conv, Linear)) and layer.bias:
            shapes[f"body.{i}.bias"] = (shapes[f"body.{i}.weight"][0],)
        elif isinstance(layer, Shortcut) and layer.projects:
            shapes[f"body.{i}.proj.weight"] = (layer.out_channels, layer.in_channels, 1, 1)
    return {**shapes, "leak": (), "thresholds": (len(config.spiking_layers),)}


def _check_tensor_shapes(config: StudentConfig, tensors: dict[str, torch.Tensor], path: Path) -> None:
    expected = parameter_shapes(config)
    for name in sorted(set(expected) | set(tensors)):
        if name not in tensors:
            raise UserError(f"{path}: tensor {name!r} is missing; the file does not match its description")
        if name not in expected:
            raise UserError(f"{path}: unexpected tensor {name!r}; the file does not match its description")
        if tuple(tensors[name].shape) != expected[name] or not tensors[name].is_floating_point():
            raise UserError(f"{path}: tensor {name!r} is {tensors[name].dtype} {list(tensors[name].shape)}, "
                            f"the description needs a float tensor {list(expected[name])}")


def check_parameters(student: SpikingStudent) -> None:
    """Refuse a student whose weights, leak or thresholds are not finite, or whose leak is outside (0, 1].

    Such a student (a diverged training run, a hand-edited file) computes nothing meaningful,
    and every export or comparison of it would be noise.
    """
    for name, tensor in student.state_dict().items():
        if not torch.isfinite(tensor).all():
            raise UserError(f"the student's {name!r} contains NaN or inf (a diverged or damaged run); retrain it")
    leak = float(student.leak.detach())
    if not 0 < leak <= 1:
        raise UserError(f"the student's leak {leak} is outside (0, 1] (SPEC section 1); retrain it")


def check_images(config: StudentConfig, images: torch.Tensor, labels: torch.Tensor | None = None) -> None:
    """Refuse data of another shape or with more classes than the student was built for."""
    expected = [int(s) for s in config.input_shape]
    if images.dim() != 4 or list(images.shape[1:]) != expected or len(images) == 0:
        raise UserError(f"the student expects images [N, {', '.join(map(str, expected))}] but the data gives "
                        f"{list(images.shape)}; use the data set the student was trained on")
    if labels is not None and len(labels) and int(labels.max()) >= config.num_classes:
        raise UserError(f"the data has label {int(labels.max())} but the student has {config.num_classes} classes; "
                        "use the data set the student was trained on")


# -- the deployed graph ----------------------------------------------------------------------
@dataclass
class DeployedShortcut:
    """A residual input of a deployed layer: spikes of deployed layer ``source`` through a conv.

    An identity shortcut is a 1x1 conv with identity weights; a pool between the source's LIF and
    the shortcut is folded in like any other (kernel and stride times the pool).
    """

    weight: np.ndarray  # [out, in, k, k], float64
    source: int  # index into the deployed layers of the LIF population read
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
        return f"{self.kind}{self.source}"


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
    weights = {i: m.weight.detach().double().cpu().numpy() for i, m in enumerate(student.body) if isinstance(cfg.layers[i], (Conv, Linear))}
    biases = {i: m.bias.detach().double().cpu().numpy() for i, m in enumerate(student.body)
              if isinstance(cfg.layers[i], (Conv, Linear)) and m.bias is not None}
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
            out.append(DeployedLayer("linear", w, in_shape, shapes[i], lif=lif.get(i), source=i,
                                     flatten_before=flatten and len(shape) == 3, bias=biases.get(i)))
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
