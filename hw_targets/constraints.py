"""Deployability on constrained hardware: cores per layer, chips, and the limits a network breaks.

Mapping assumptions (Loihi-1 style; see docs/energy.md):

- every deployed layer (pools folded) gets cores of its own, and its neurons fill them greedily in
  the flattened (C, H, W) order, as many per core as all three limits allow: compartments, synaptic
  memory and input axons;
- no weight sharing: a conv stores every real synapse of every output neuron (Loihi 1 keeps
  synapses per destination core and has no convolution support), each synapse costing exactly
  ``weight_bits`` of synaptic memory (a lower bound: Loihi's synapse formats add index bits);
- the input axons of a core are the distinct presynaptic neurons its neurons read (the union of
  their receptive fields for a conv, all inputs for a linear layer);
- a layer that closes a residual block has a second axon group, its shortcut's source population
  (another LIF layer's spikes): its fan-in, synapses and axons are those of its conv plus those of
  the shortcut (a 1x1 projection reads every source channel at one position; an identity reads one
  channel, over the folded pool's window when a pool lies between);
- the first layer under direct encoding reads no spikes: the host computes it and drives its
  neurons through their bias, so it needs compartments but no synapses or axons; Poisson input
  spikes come from the host and need no cores either;
- the output integrator is one compartment per class that never fires.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..student import DeployedLayer
from .counting import fan_in, is_identity
from .profile import Limits


@dataclass
class LayerMapping:
    """How one deployed layer maps onto cores."""

    name: str
    neurons: int
    synapses: int  # stored on chip (0 when the host computes the layer)
    max_fan_in: int
    neurons_per_core: int
    cores: int
    limited_by: str  # the limit that sets neurons_per_core: "compartments" | "synaptic memory" | "input axons" | "none"


@dataclass
class Deployment:
    """Cores, chips and violations of a network on one constrained profile."""

    weight_bits: int
    layers: list[LayerMapping]
    cores: int
    chips: int
    violations: list[str] = field(default_factory=list)


class _ConvAxons:
    """Counts the distinct neurons of one input (an axon group) read by a run of consecutive output
    neurons through a conv; ``identity``: output channel c reads input channel c only."""

    def __init__(
        self, in_shape: tuple[int, ...], out_shape: tuple[int, ...], k: int, s: int, p: int, identity: bool = False
    ):
        c_in, h, w = in_shape
        _, ho, wo = out_shape
        self.rows = self._touch(h, ho, k, s, p)  # [Ho, H]: output row reads input row
        self.cols = self._touch(w, wo, k, s, p)
        self.c_in, self.plane, self.identity = c_in, ho * wo, identity
        self.whole_plane = self._touched(np.arange(self.plane))

    @staticmethod
    def _touch(size_in: int, size_out: int, k: int, s: int, p: int) -> np.ndarray:
        index = np.arange(size_out)[:, None] * s - p + np.arange(k)[None, :]
        touch = np.zeros((size_out, size_in), dtype=np.int64)
        for o in range(size_out):
            valid = index[o][(index[o] >= 0) & (index[o] < size_in)]
            touch[o, valid] = 1
        return touch

    def _touched(self, positions: np.ndarray) -> int:
        """Input positions of one channel read by the output positions ``positions`` of one plane."""
        mask = np.zeros(self.plane, dtype=np.int64)
        mask[positions] = 1
        mask = mask.reshape(self.rows.shape[0], self.cols.shape[0])
        return int(np.count_nonzero(self.rows.T @ mask @ self.cols))

    def axons(self, start: int, stop: int) -> int:
        if not self.identity:  # every output channel reads every input channel: union over the planes
            return self._touched(np.arange(start, min(stop, start + self.plane)) % self.plane) * self.c_in
        total = 0
        for c in range(start // self.plane, (stop - 1) // self.plane + 1):
            a, b = max(start, c * self.plane), min(stop, (c + 1) * self.plane)
            total += self.whole_plane if b - a == self.plane else self._touched(np.arange(a, b) % self.plane)
        return total


class _DenseAxons:
    """Every output neuron of a linear layer reads every input."""

    def __init__(self, inputs: int):
        self.inputs = inputs

    def axons(self, start: int, stop: int) -> int:
        return self.inputs


class _Footprint:
    """Counts the distinct input neurons read by a run of consecutive output neurons of a layer: its
    main input's, plus its shortcut's (spikes of another population, so another axon group)."""

    def __init__(self, layer: DeployedLayer):
        self.groups: list[_ConvAxons | _DenseAxons]
        if layer.convolutional:
            self.groups = [
                _ConvAxons(layer.in_shape, layer.out_shape, layer.weight.shape[-1], layer.stride, layer.padding)
            ]
        else:
            self.groups = [_DenseAxons(layer.in_shape[0])]
        sc = layer.shortcut
        if sc is not None:
            self.groups.append(
                _ConvAxons(sc.in_shape, layer.out_shape, sc.weight.shape[-1], sc.stride, 0, is_identity(sc))
            )

    def axons(self, start: int, stop: int) -> int:
        return sum(g.axons(start, stop) for g in self.groups)


def _fits(
    n: int, fi: np.ndarray, footprint: _Footprint | None, mem_bits: float, axon_limit: int, bits: int
) -> str | None:
    """None if chunks of ``n`` consecutive neurons fit every core, else the limit that breaks."""
    total = len(fi)
    per_chunk = np.add.reduceat(fi, np.arange(0, total, n)) * bits
    if per_chunk.max(initial=0) > mem_bits:
        return "synaptic memory"
    if footprint is not None and any(footprint.axons(a, min(a + n, total)) > axon_limit for a in range(0, total, n)):
        return "input axons"
    return None


def map_layer(
    layer: DeployedLayer, limits: Limits, weight_bits: int, host_computed: bool
) -> tuple[LayerMapping, list[str]]:
    """Neurons per core and cores of one layer, with the violations that no split can fix."""
    neurons = int(np.prod(layer.out_shape))
    compartments = int(limits.compartments_per_core.value)
    mem_bits = int(limits.synaptic_memory_per_core_bytes.value) * 8
    axon_limit = int(limits.input_axons_per_core.value)
    fi = np.zeros(neurons, dtype=np.int64) if host_computed else fan_in(layer).reshape(-1)
    max_fi = int(fi.max(initial=0))
    violations = []
    if max_fi and not limits.weight_bits_min <= weight_bits <= limits.weight_bits_max:
        violations.append(
            f"{layer.name}: {weight_bits}-bit weights, the hardware stores {limits.weight_bits_min} to {limits.weight_bits_max} bits"
        )
    if max_fi > axon_limit:
        violations.append(f"{layer.name}: fan-in {max_fi} exceeds {axon_limit} input axons per core")
    if max_fi * weight_bits > mem_bits:
        violations.append(
            f"{layer.name}: one neuron's {max_fi} synapses x {weight_bits} bits exceed {mem_bits // 8} bytes of synaptic memory per core"
        )
    # Limits that a single neuron already breaks cannot constrain the split; count cores without them.
    mem = mem_bits if max_fi * weight_bits <= mem_bits else math.inf
    footprint = _Footprint(layer) if max_fi and max_fi <= axon_limit else None
    n = min(compartments, neurons)
    limited = "compartments" if neurons > compartments else "none"
    if _fits(n, fi, footprint, mem, axon_limit, weight_bits):
        lo, hi = 1, n  # bisection for the largest n that fits: lo always fits, hi never does
        while lo < hi - 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if _fits(mid, fi, footprint, mem, axon_limit, weight_bits) is None else (lo, mid)
        broken = _fits(hi, fi, footprint, mem, axon_limit, weight_bits)
        assert broken is not None, "the bisection keeps hi a size that does not fit"
        n, limited = lo, broken
    return LayerMapping(layer.name, neurons, int(fi.sum()), max_fi, n, math.ceil(neurons / n), limited), violations


def map_to_cores(
    layers: list[DeployedLayer], limits: Limits, *, weight_bits: int = 8, direct_encoding: bool
) -> Deployment:
    """Map the deployed graph onto cores and chips of a constrained profile (assumptions above)."""
    mapped, violations = [], []
    for j, layer in enumerate(layers):
        m, v = map_layer(layer, limits, weight_bits, host_computed=direct_encoding and j == 0)
        mapped.append(m)
        violations += v
    cores = sum(m.cores for m in mapped)
    return Deployment(weight_bits, mapped, cores, math.ceil(cores / int(limits.cores_per_chip.value)), violations)


def reset_interval(timesteps: int, source: str) -> dict:
    """Whether one sample's window of ``timesteps`` steps can be a chip's reset interval when resets
    need a power of two (Loihi 2's, ``source``): the Lava export resets every layer each T steps."""
    ok = timesteps > 0 and timesteps & (timesteps - 1) == 0
    fix = "" if ok else f"; train or run at T = {1 << timesteps.bit_length()} or {1 << (timesteps.bit_length() - 1)}"
    return {
        "steps": timesteps,
        "power_of_two": ok,
        "note": f"reset interval T = {timesteps} is {'' if ok else 'not '}a power of two ({source}){fix}",
    }
