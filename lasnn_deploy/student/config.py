"""``StudentConfig``: a student's architecture (an ordered tuple of layer specs) and run settings.

A LIF layer follows every Conv/Linear except the last, so pooling always acts on spikes (or on
the input image) and the last Linear feeds the non-spiking output integrator. A ``Shortcut`` right
after a Conv makes a residual block: it adds an earlier layer's spikes (through a 1x1 convolution
when the shape changes) to that Conv's current, and the Conv's LIF fires after the sum.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from ..errors import UserError
from ..neurons import Encoding, Reset
from .layers import (
    LAYER_TYPES,
    Conv,
    LayerSpec,
    Linear,
    Shortcut,
    _checked_int,
    layer_from_dict,
    layer_to_dict,
)
from .walk import LayerStep, walk


@dataclass(frozen=True)
class StudentConfig:
    """Architecture and run settings of a student SNN (docs/semantics.md, 'The float student')."""

    arch: str
    input_shape: tuple[int, int, int]
    num_classes: int
    layers: tuple[LayerSpec, ...]
    timesteps: int = 8
    encoding: Encoding = Encoding.DIRECT
    reset: Reset = "hard"

    def __post_init__(self) -> None:
        if not isinstance(self.arch, str):
            raise UserError(f"arch must be a string, got {self.arch!r}")
        shape = self.input_shape
        if isinstance(shape, (str, bytes)) or not isinstance(shape, (tuple, list)) or len(shape) != 3:
            raise UserError(f"input_shape must be [C, H, W], got {shape!r}")
        object.__setattr__(self, "input_shape", tuple(_checked_int(s, "input_shape entries", 1) for s in shape))
        object.__setattr__(self, "num_classes", _checked_int(self.num_classes, "num_classes", 1))
        if not isinstance(self.layers, (tuple, list)) or not all(
            isinstance(l, tuple(LAYER_TYPES.values())) for l in self.layers
        ):
            raise UserError(f"layers must be a sequence of layer specs, got {self.layers!r}")
        object.__setattr__(self, "layers", tuple(self.layers))
        if self.encoding not in tuple(Encoding):
            raise UserError(f"encoding must be 'direct' or 'poisson', got {self.encoding!r}")
        object.__setattr__(self, "encoding", Encoding(self.encoding))
        if self.reset not in ("hard", "soft"):
            raise UserError(f"reset must be 'hard' or 'soft', got {self.reset!r}")
        check_timesteps(self.timesteps)
        weighted = [i for i, l in enumerate(self.layers) if l.has_synapses]
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
            raise UserError(
                f"{where}source {spec.source} must be a layer before the block's last Conv (index < {i - 1})"
            )
        if self.source_lif(spec.source) is None:
            raise UserError(f"{where}source {spec.source} must be a spiking layer's output, or an average pool of one")
        shapes = self.shapes()
        c, h, w = shapes[spec.source]
        target = shapes[i - 1]
        if c != spec.in_channels:
            raise UserError(f"{where}in_channels {spec.in_channels} != the {c} channels of source layer {spec.source}")
        if target != (spec.out_channels, (h - 1) // spec.stride + 1, (w - 1) // spec.stride + 1):
            raise UserError(
                f"{where}source layer {spec.source} [{c}, {h}, {w}] at stride {spec.stride} does not give "
                f"the block's output {list(target)}"
            )

    @cached_property
    def layer_steps(self) -> tuple[LayerStep, ...]:
        """Every layer with its shapes, its LIF layer and whether a shortcut reads it (``walk.walk``)."""
        return walk(self.input_shape, self.layers)

    def shapes(self) -> list[tuple[int, ...]]:
        """Batch-free output shape of every layer, in order."""
        return [step.out_shape for step in self.layer_steps]

    @property
    def spiking_layers(self) -> list[int]:
        """Indices of the layers that a LIF layer follows: every Conv/Linear but the last, except that
        a Conv closing a residual block hands its LIF to the ``Shortcut`` after it."""
        return [step.index for step in self.layer_steps if step.lif is not None]

    def source_lif(self, index: int) -> int | None:
        """The LIF layer (index among the spiking layers) whose spikes layer ``index`` outputs,
        directly or through average pools; None when its output is not a LIF layer's spikes."""
        while self.layers[index].is_pool and index > 0:
            index -= 1
        return self.layer_steps[index].lif

    @property
    def shortcut_sources(self) -> set[int]:
        """Indices of the layers whose output a later ``Shortcut`` adds back."""
        return {step.index for step in self.layer_steps if step.saved}

    def layer_name(self, index: int) -> str:
        """The name of layer ``index`` in every export and report (``conv0``, ``linear5``)."""
        return self.layer_steps[index].name

    def replace(self, **changes: Any) -> StudentConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "layers": [layer_to_dict(l) for l in self.layers],
            "timesteps": self.timesteps,
            "encoding": self.encoding.value,
            "reset": self.reset,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StudentConfig:
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
