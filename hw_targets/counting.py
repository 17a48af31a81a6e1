"""Exact event counts of one student run on the deployed graph (docs/semantics.md, 'Energy counts').

Counts are taken on ``deployed_layers(student)``: Conv/Linear only, each AvgPool folded into the
layer after it, so every synaptic input is a binary spike and every synaptic event is one
accumulate. Per deployed layer and per sample:

- ``spikes``: spikes the layer's LIF emits over the T steps (0 for the output integrator);
- ``synops``: synaptic events caused by the spikes entering the layer, i.e. every input spike times
  the number of synapses it reaches (borders included: a spike near the edge of a padded conv
  reaches fewer outputs). Equal to summing, over time and output channels, the convolution of the
  spike map with an all-ones kernel of the folded shape. A layer that closes a residual block has a
  second input, its shortcut: the spikes of an earlier LIF layer through a 1x1 projection (each
  spike reaches every output channel at its position), or as identity (one synapse per spike, to
  its own channel), a pool before it folded in. Those events are the layer's too
  (``shortcut_synops`` says how many), so a LIF layer's fan-out is its next layer's synapses plus
  those of every shortcut that reads it;
- ``macs``: dense multiply-accumulates where the input is analog: the first layer under direct
  encoding, counted once per sample (the host computes it once; its result is constant over time);
- ``neuron_updates``: neurons x T;
- ``bias_inputs``: neurons x T for a layer with a bias, else 0. A bias is a constant input current
  that every neuron of the layer receives at every step (``u = lam u + W s + b``): an input to the
  neuron, not a synaptic event (no spike carries it), so it is a term of its own.

"Synapse" means a real connection: a kernel tap that falls on the zero padding is no synapse, and
a MAC count is the number of real connections (a dense input that spikes everywhere once makes
``synops == macs``). Counts are integers held in float64 (exact below 2**53).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..student import (
    LAYER_TYPES,
    AvgPool,
    Conv,
    DeployedLayer,
    DeployedShortcut,
    Dropout,
    Flatten,
    Linear,
    Shortcut,
    StudentConfig,
    Trace,
    table_entry,
)


def _axis_taps(size_in: int, size_out: int, kernel: int, stride: int, padding: int) -> tuple[np.ndarray, np.ndarray]:
    """Along one axis: how many outputs each input position reaches, and how many inputs each output reads."""
    index = np.arange(size_out)[:, None] * stride - padding + np.arange(kernel)[None, :]
    valid = (index >= 0) & (index < size_in)
    reach = np.bincount(index[valid], minlength=size_in)
    return reach.astype(np.int64), valid.sum(axis=1).astype(np.int64)


def conv_reach(
    in_shape: tuple[int, ...], out_shape: tuple[int, ...], kernel: int, stride: int, padding: int
) -> np.ndarray:
    """Synapses each input neuron ``[C_in, H, W]`` of a conv reaches (over all output channels)."""
    _, h, w = in_shape
    c_out, ho, wo = out_shape
    rh, _ = _axis_taps(h, ho, kernel, stride, padding)
    rw, _ = _axis_taps(w, wo, kernel, stride, padding)
    return np.broadcast_to(c_out * rh[:, None] * rw[None, :], in_shape).copy()


def conv_fan_in(
    in_shape: tuple[int, ...], out_shape: tuple[int, ...], kernel: int, stride: int, padding: int
) -> np.ndarray:
    """Synapses into each output neuron ``[C_out, Ho, Wo]`` of a conv (padding taps excluded)."""
    c_in, h, w = in_shape
    _, ho, wo = out_shape
    _, th = _axis_taps(h, ho, kernel, stride, padding)
    _, tw = _axis_taps(w, wo, kernel, stride, padding)
    return np.broadcast_to(c_in * th[:, None] * tw[None, :], out_shape).copy()


def reach(layer: DeployedLayer) -> np.ndarray:
    """Synapses each input neuron of a deployed layer's main input reaches, shaped like that input."""
    return table_entry(_REACH, layer.kind, "the synapse count (reach)")(layer)


def _conv_reach(layer: DeployedLayer) -> np.ndarray:
    return conv_reach(layer.in_shape, layer.out_shape, layer.weight.shape[-1], layer.stride, layer.padding)


def _dense_reach(layer: DeployedLayer) -> np.ndarray:
    """Each input reaches every output neuron."""
    return np.full(layer.in_shape, layer.out_shape[0], dtype=np.int64)


def _conv_fan_in(layer: DeployedLayer) -> np.ndarray:
    return conv_fan_in(layer.in_shape, layer.out_shape, layer.weight.shape[-1], layer.stride, layer.padding)


def _dense_fan_in(layer: DeployedLayer) -> np.ndarray:
    """Each output neuron reads every input."""
    return np.full(layer.out_shape, layer.in_shape[0], dtype=np.int64)


# deployed-layer kind -> the synapses of its main input, per input neuron (reach) and per output neuron (fan-in)
_REACH: dict[str, Callable[[DeployedLayer], np.ndarray]] = {"conv": _conv_reach, "linear": _dense_reach}
_FAN_IN: dict[str, Callable[[DeployedLayer], np.ndarray]] = {"conv": _conv_fan_in, "linear": _dense_fan_in}


def is_identity(shortcut: DeployedShortcut) -> bool:
    """Whether a shortcut connects each channel to itself only (identity, maybe through a folded pool).

    Read from its weight, where an identity is the identity matrix over channels; a projection
    connects every channel pair (one whose weights happened to be diagonal would be an identity in effect).
    """
    channels = np.any(shortcut.weight != 0, axis=(2, 3))
    return channels.shape[0] == channels.shape[1] and np.array_equal(channels, np.eye(len(channels), dtype=bool))


def _shortcut_channels(shortcut: DeployedShortcut) -> tuple[int, int]:
    """(output channels each input channel reaches, input channels each output channel reads)."""
    c_out, c_in = shortcut.weight.shape[:2]
    return (1, 1) if is_identity(shortcut) else (c_out, c_in)


def shortcut_reach(layer: DeployedLayer) -> np.ndarray:
    """Synapses each neuron of the shortcut's source reaches through it, shaped like the source."""
    sc = layer.shortcut
    assert sc is not None, "only a layer with a shortcut has a shortcut reach"
    out_channels, _ = _shortcut_channels(sc)
    return conv_reach(sc.in_shape, (out_channels, *layer.out_shape[1:]), sc.weight.shape[-1], sc.stride, 0)


def fan_in(layer: DeployedLayer) -> np.ndarray:
    """Synapses into each output neuron of a deployed layer (main input and shortcut), shaped like its output."""
    fi = table_entry(_FAN_IN, layer.kind, "the synapse count (fan-in)")(layer)
    if layer.shortcut is not None:
        sc = layer.shortcut
        _, in_channels = _shortcut_channels(sc)
        fi = fi + conv_fan_in((in_channels, *sc.in_shape[1:]), layer.out_shape, sc.weight.shape[-1], sc.stride, 0)
    return fi


def synapse_count(layer: DeployedLayer) -> int:
    """Real connections of a deployed layer (= its dense MACs on an analog input)."""
    return int(fan_in(layer).sum())


def _conv_macs(out: dict[int, int], i: int, layer: Conv, shape: tuple[int, ...], shapes: list) -> None:
    out[i] = int(conv_fan_in(shape, shapes[i], layer.kernel_size, layer.stride, layer.padding).sum())


def _linear_macs(out: dict[int, int], i: int, layer: Linear, shape: tuple[int, ...], shapes: list) -> None:
    out[i] = layer.in_features * layer.out_features


def _shortcut_macs(out: dict[int, int], i: int, layer: Shortcut, shape: tuple[int, ...], shapes: list) -> None:
    """A projection counts with the Conv whose current it joins; an identity shortcut is a free addition."""
    if layer.projects:
        out[i - 1] += int(conv_fan_in(shapes[layer.source], shapes[i], 1, layer.stride, 0).sum())


def _no_macs(out: dict[int, int], i: int, layer: Any, shape: tuple[int, ...], shapes: list) -> None:
    """Pooling, flattening and dropout cost no MAC."""


# layer-spec type -> how its dense MACs add to ``ann_macs``'s count
_MACS: dict[type, Callable[[dict[int, int], int, Any, tuple[int, ...], list], None]] = {
    Conv: _conv_macs,
    Linear: _linear_macs,
    Shortcut: _shortcut_macs,
    AvgPool: _no_macs,
    Flatten: _no_macs,
    Dropout: _no_macs,
}


def ann_macs(config: StudentConfig) -> dict[int, int]:
    """Dense MACs of the intermediate ANN, per Conv/Linear (keyed by layer index), on the student's
    own graph: pooled maps as the layers read them, pooling itself costing no MAC. A shortcut's 1x1
    projection counts with the Conv whose current it joins (as on the deployed graph); an identity
    shortcut is an addition, which costs no MAC, like pooling."""
    shapes = config.shapes()
    out: dict[int, int] = {}
    for step in config.layer_steps:
        table_entry(_MACS, type(step.spec), "the ANN MAC count")(out, step.index, step.spec, step.in_shape, shapes)
    return out


@dataclass
class LayerCounts:
    """Per-sample event counts of one deployed layer (arrays of length B, integer-valued float64)."""

    name: str
    kind: str
    neurons: int
    timesteps: int
    spikes: np.ndarray
    synops: np.ndarray  # shortcut events included
    macs: np.ndarray
    spiking: bool
    shortcut_synops: np.ndarray | None = None  # None: the layer has no shortcut
    bias_inputs: int = 0  # per sample: neurons x T when the layer has a bias

    @property
    def convolutional(self) -> bool:
        """Counts of a conv (its events may cost ``synop_conv``) rather than of a dense layer."""
        return LAYER_TYPES[self.kind].convolutional

    @property
    def neuron_updates(self) -> int:
        return self.neurons * self.timesteps

    @property
    def firing_rate(self) -> np.ndarray:
        return self.spikes / (self.neurons * self.timesteps)


def _per_sample(spikes: torch.Tensor) -> torch.Tensor:
    """``[T, B, ...]`` spikes -> per-neuron totals over time ``[B, N]`` in float64."""
    return spikes.detach().to(torch.float64).sum(0).flatten(1)


def lif_spikes(trace: Trace, layer: DeployedLayer) -> torch.Tensor:
    """The spikes ``[T, B, ...]`` of ``layer``'s LIF: what the layers after it read (every layer but the output has one)."""
    if layer.lif is None:
        raise ValueError(f"layer {layer.name} is the output layer: it has no LIF and no layer reads it")
    return trace.spikes[layer.lif]


def count_events(layers: list[DeployedLayer], trace: Trace, timesteps: int) -> list[LayerCounts]:
    """Exact counts of one batch run (``student.run(..., record=True)``) on the deployed graph.

    The input of deployed layer 0 is ``trace.input_spikes`` when present (Poisson, or given
    spikes) and otherwise the analog image (direct encoding: MACs, once per sample); the input of
    layer j > 0 is the spike output of layer j - 1, plus the spikes of its shortcut's source.
    """
    batch = trace.logits.shape[0]
    counts = []
    for j, layer in enumerate(layers):
        zeros = np.zeros(batch)
        source = trace.input_spikes if j == 0 else lif_spikes(trace, layers[j - 1])
        if source is None:
            synops, macs = zeros, np.full(batch, float(synapse_count(layer)))
        else:
            synops, macs = _events(source, reach(layer)), zeros
        shortcut = None
        if layer.shortcut is not None:
            shortcut = _events(lif_spikes(trace, layers[layer.shortcut.producer]), shortcut_reach(layer))
            synops = synops + shortcut
        spikes = _per_sample(trace.spikes[layer.lif]).sum(1).numpy() if layer.lif is not None else zeros
        neurons = int(np.prod(layer.out_shape))
        bias_inputs = neurons * timesteps if layer.bias is not None else 0
        counts.append(
            LayerCounts(
                layer.name,
                layer.kind,
                neurons,
                timesteps,
                spikes,
                synops,
                macs,
                layer.lif is not None,
                shortcut,
                bias_inputs,
            )
        )
    return counts


def _events(spikes: torch.Tensor, reach_of: np.ndarray) -> np.ndarray:
    """Per-sample synaptic events of spikes ``[T, B, ...]``, each reaching ``reach_of`` synapses."""
    return (_per_sample(spikes) @ torch.from_numpy(reach_of.reshape(-1).astype(np.float64))).numpy()
