"""The one walk over a student's layer specs: each layer's shapes, the LIF layer after it, whether a
shortcut reads it (``walk``), and the one loop that carries a value through the layers (``flow``).

Every reading of the student (the float run, the intermediate ANNs, the ONNX graph, the deployed
graph, the MAC count) takes these steps rather than deriving shapes, LIF indices and shortcut
sources again; what a layer does is its reader's per-type table, what a layer is its spec's roles.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from .layers import LayerSpec, layer_name

V = TypeVar("V")


@dataclass(frozen=True)
class LayerStep:
    """One layer as every reading of the student sees it."""

    index: int  # into StudentConfig.layers
    spec: LayerSpec
    in_shape: tuple[int, ...]  # batch-free
    out_shape: tuple[int, ...]
    lif: int | None  # the LIF layer (index among the spiking layers) that integrates the output; None: no LIF
    saved: bool  # a later layer reads this layer's output (a Shortcut's source)

    @property
    def name(self) -> str:
        """The layer's name in every export and report (``conv0``, ``linear5``)."""
        return layer_name(self.spec.type, self.index)


def walk(input_shape: tuple[int, ...], layers: Sequence[LayerSpec]) -> tuple[LayerStep, ...]:
    """The steps of ``layers`` read from an input of ``input_shape``; a layer that does not fit its
    input raises ``UserError`` naming it.

    A LIF layer follows every layer that ``makes_current`` but the last (the output integrator's
    input), except one whose next layer ``joins_previous``: that one's LIF comes after the join.
    """
    currents = [i for i, l in enumerate(layers) if l.makes_current]
    spiking = [i for i in currents[:-1] if not (i + 1 < len(layers) and layers[i + 1].joins_previous)]
    lif = {i: k for k, i in enumerate(spiking)}
    read = {s for l in layers for s in l.sources}
    steps, shape = [], tuple(input_shape)
    for i, spec in enumerate(layers):
        out = spec.out_shape(shape, where=f"layer {i} ({spec.type}): ")
        steps.append(LayerStep(i, spec, shape, out, lif.get(i), i in read))
        shape = out
    return tuple(steps)


def flow(
    steps: Sequence[LayerStep],
    x: V,
    through: Callable[[LayerStep, V, Mapping[int, V]], V],
    fire: Callable[[LayerStep, int, V], V],
) -> V:
    """Carry ``x`` through the layers: ``through(step, x, saved)`` gives a layer's output (``saved``:
    the outputs of the layers a shortcut reads, by index), then ``fire(step, k, output)`` where LIF
    layer ``k`` follows. Returns the last layer's output."""
    saved: dict[int, V] = {}
    for step in steps:
        x = through(step, x, saved)
        if step.lif is not None:
            x = fire(step, step.lif, x)
        if step.saved:
            saved[step.index] = x
    return x
