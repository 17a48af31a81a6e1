"""Exact event counts of one student run on the deployed graph (SPEC section 4).

Counts are taken on ``deployed_layers(student)``: Conv/Linear only, each AvgPool folded into the
layer after it, so every synaptic input is a binary spike and every synaptic event is one
accumulate. Per deployed layer and per sample:

- ``spikes``: spikes the layer's LIF emits over the T steps (0 for the output integrator);
- ``synops``: synaptic events caused by the spikes entering the layer, i.e. every input spike times
  the number of synapses it reaches (borders included: a spike near the edge of a padded conv
  reaches fewer outputs). Equal to summing, over time and output channels, the convolution of the
  spike map with an all-ones kernel of the folded shape;
- ``macs``: dense multiply-accumulates where the input is analog: the first layer under direct
  encoding, counted once per sample (the host computes it once; its result is constant over time);
- ``neuron_updates``: neurons x T.

"Synapse" means a real connection: a kernel tap that falls on the zero padding is no synapse, and
a MAC count is the number of real connections (a dense input that spikes everywhere once makes
``synops == macs``). Counts are integers held in float64 (exact below 2**53).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..student import Conv, DeployedLayer, Linear, StudentConfig, Trace


def _axis_taps(size_in: int, size_out: int, kernel: int, stride: int, padding: int) -> tuple[np.ndarray, np.ndarray]:
    """Along one axis: how many outputs each input position reaches, and how many inputs each output reads."""
    index = np.arange(size_out)[:, None] * stride - padding + np.arange(kernel)[None, :]
    valid = (index >= 0) & (index < size_in)
    reach = np.bincount(index[valid], minlength=size_in)
    return reach.astype(np.int64), valid.sum(axis=1).astype(np.int64)


def conv_reach(in_shape: tuple[int, int, int], out_shape: tuple[int, int, int], kernel: int, stride: int, padding: int) -> np.ndarray:
    """Synapses each input neuron ``[C_in, H, W]`` of a conv reaches (over all output channels)."""
    _, h, w = in_shape
    c_out, ho, wo = out_shape
    rh, _ = _axis_taps(h, ho, kernel, stride, padding)
    rw, _ = _axis_taps(w, wo, kernel, stride, padding)
    return np.broadcast_to(c_out * rh[:, None] * rw[None, :], in_shape).copy()


def conv_fan_in(in_shape: tuple[int, int, int], out_shape: tuple[int, int, int], kernel: int, stride: int, padding: int) -> np.ndarray:
    """Synapses into each output neuron ``[C_out, Ho, Wo]`` of a conv (padding taps excluded)."""
    c_in, h, w = in_shape
    _, ho, wo = out_shape
    _, th = _axis_taps(h, ho, kernel, stride, padding)
    _, tw = _axis_taps(w, wo, kernel, stride, padding)
    return np.broadcast_to(c_in * th[:, None] * tw[None, :], out_shape).copy()


def reach(layer: DeployedLayer) -> np.ndarray:
    """Synapses each input neuron of a deployed layer reaches, shaped like its input."""
    if layer.kind == "conv":
        return conv_reach(layer.in_shape, layer.out_shape, layer.weight.shape[-1], layer.stride, layer.padding)
    return np.full(layer.in_shape, layer.out_shape[0], dtype=np.int64)


def fan_in(layer: DeployedLayer) -> np.ndarray:
    """Synapses into each output neuron of a deployed layer, shaped like its output."""
    if layer.kind == "conv":
        return conv_fan_in(layer.in_shape, layer.out_shape, layer.weight.shape[-1], layer.stride, layer.padding)
    return np.full(layer.out_shape, layer.in_shape[0], dtype=np.int64)


def synapse_count(layer: DeployedLayer) -> int:
    """Real connections of a deployed layer (= its dense MACs on an analog input)."""
    return int(fan_in(layer).sum())


def ann_macs(config: StudentConfig) -> dict[int, int]:
    """Dense MACs of the intermediate ANN, per Conv/Linear (keyed by layer index), on the student's
    own graph: pooled maps as the layers read them, pooling itself costing no MAC."""
    shapes = config.shapes()
    out: dict[int, int] = {}
    shape: tuple[int, ...] = tuple(config.input_shape)
    for i, layer in enumerate(config.layers):
        if isinstance(layer, Conv):
            out[i] = int(conv_fan_in(shape, shapes[i], layer.kernel_size, layer.stride, layer.padding).sum())
        elif isinstance(layer, Linear):
            out[i] = layer.in_features * layer.out_features
        shape = shapes[i]
    return out


@dataclass
class LayerCounts:
    """Per-sample event counts of one deployed layer (arrays of length B, integer-valued float64)."""

    name: str
    kind: str
    neurons: int
    timesteps: int
    spikes: np.ndarray
    synops: np.ndarray
    macs: np.ndarray
    spiking: bool

    @property
    def neuron_updates(self) -> int:
        return self.neurons * self.timesteps

    @property
    def firing_rate(self) -> np.ndarray:
        return self.spikes / (self.neurons * self.timesteps)


def _per_sample(spikes: torch.Tensor) -> torch.Tensor:
    """``[T, B, ...]`` spikes -> per-neuron totals over time ``[B, N]`` in float64."""
    return spikes.detach().to(torch.float64).sum(0).flatten(1)


def count_events(layers: list[DeployedLayer], trace: Trace, timesteps: int) -> list[LayerCounts]:
    """Exact counts of one batch run (``student.run(..., record=True)``) on the deployed graph.

    The input of deployed layer 0 is ``trace.input_spikes`` when present (Poisson, or given
    spikes) and otherwise the analog image (direct encoding: MACs, once per sample); the input of
    layer j > 0 is the spike output of layer j - 1.
    """
    batch = trace.logits.shape[0]
    counts = []
    for j, layer in enumerate(layers):
        zeros = np.zeros(batch)
        source = trace.input_spikes if j == 0 else trace.spikes[layers[j - 1].lif]
        if source is None:
            synops, macs = zeros, np.full(batch, float(synapse_count(layer)))
        else:
            weights = torch.from_numpy(reach(layer).reshape(-1).astype(np.float64))
            synops, macs = (_per_sample(source) @ weights).numpy(), zeros
        spikes = _per_sample(trace.spikes[layer.lif]).sum(1).numpy() if layer.lif is not None else zeros
        neurons = int(np.prod(layer.out_shape))
        counts.append(LayerCounts(layer.name, layer.kind, neurons, timesteps, spikes, synops, macs, layer.lif is not None))
    return counts


def concat_counts(parts: list[list[LayerCounts]]) -> list[LayerCounts]:
    """Join the per-batch counts of the same layers into one per-sample record."""
    first = parts[0]
    return [
        LayerCounts(
            c.name, c.kind, c.neurons, c.timesteps,
            np.concatenate([p[k].spikes for p in parts]),
            np.concatenate([p[k].synops for p in parts]),
            np.concatenate([p[k].macs for p in parts]),
            c.spiking,
        )
        for k, c in enumerate(first)
    ]
