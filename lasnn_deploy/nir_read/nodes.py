"""The node table: each NIR node type a student can hold -> one small function that reads such a
node into the layers being built (``NODES``; the reader looks every node up there once and refuses
the types it lacks). Neurons are read under the exporter's convention (package docstring)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import nir
import numpy as np

from ..errors import UserError
from ..student.layers import AvgPool, Conv, Flatten, LayerSpec, Linear, Shortcut
from .format import HINT, Convention, importer_leak
from .graph import where

UNITY = 1e-5  # an input gain within float32 rounding of 1 is 1 (r = tau/dt written in float32)


def uniform(value: Any, what: str, name: str) -> float:
    """The one value of a per-neuron parameter; refuses heterogeneous ones (a student has one per layer)."""
    values = np.unique(np.asarray(value, dtype=np.float64))
    if values.size != 1:
        raise UserError(
            f"{where(name)}: {what} differs across neurons ({values.size} values); a student has one per layer"
        )
    if not np.isfinite(values[0]):
        raise UserError(f"{where(name)}: {what} is {values[0]}, not a finite number")
    return float(values[0])


def pair(value: Any, what: str, name: str) -> int:
    """One integer from a square kernel/stride/padding given as int or pair."""
    if isinstance(value, str):
        raise UserError(f"{where(name)}: {what} {value!r} by name is not supported; give it in pixels")
    values = np.unique(np.asarray(value).reshape(-1))
    if values.size != 1 or values[0] != int(values[0]):
        raise UserError(f"{where(name)}: {what} {np.asarray(value).tolist()} is not square; a student's is")
    return int(values[0])


@dataclass
class Neuron:
    """A neuron node as a student's LIF layer: leak, input gain, constant drive per step, threshold."""

    lam: float
    gain: float
    drive: float  # constant input per step (from v_leak)
    theta: float
    tau: float | None  # the node's tau as written (None for an IF), to recognise our exact leak


@dataclass
class Builder:
    """What reading a chain collects: layer specs with their weights and biases (by layer index), the
    neurons (with the index of the layer each follows), and the settings the reader was given."""

    graph: nir.NIRGraph
    convention: Convention
    image: tuple[int, ...] | None  # the input shape asked for (ours: the metadata's)
    into: dict[str, str]  # LIF node -> the shortcut branch feeding it
    input_shape: tuple[int, int, int] = (0, 0, 0)
    vector: bool = False  # the Input is a vector, read as the image ``input_shape`` through a Flatten
    layers: list[LayerSpec] = field(default_factory=list)
    weights: dict[int, np.ndarray] = field(default_factory=dict)
    biases: dict[int, np.ndarray] = field(default_factory=dict)
    neurons: list[tuple[int, Neuron, str]] = field(default_factory=list)  # (layer it follows, neuron, node)
    layer_of: dict[str, int] = field(default_factory=dict)  # chain node -> the layer whose output it holds
    scale: float = 1.0  # a SumPool's k^2 waiting for the next weighted layer
    last_weighted: int = -1

    def weighted(
        self, spec: Conv | Linear | Shortcut, weight: np.ndarray, bias: np.ndarray | None, keep: bool = False
    ) -> None:
        """Append a Conv, Linear or Shortcut with its weights; a nonzero bias (any bias with ``keep``)
        makes it a biased layer."""
        weight = np.asarray(weight, dtype=np.float64) * self.scale
        self.scale = 1.0
        if bias is not None and (keep or np.any(np.asarray(bias) != 0)) and not isinstance(spec, Shortcut):
            spec = dataclasses.replace(spec, bias=True)
            self.biases[len(self.layers)] = np.asarray(bias, dtype=np.float64).reshape(-1)
        self.weights[len(self.layers)] = weight
        self.last_weighted = len(self.layers)
        self.layers.append(spec)

    def neuron(self, name: str, n: Neuron) -> None:
        """The LIF layer after the last layer: its gain and drive go into that layer's weights and bias."""
        i = len(self.layers) - 1
        if i < 0 or i != self.last_weighted or (self.neurons and self.neurons[-1][0] == i):
            raise UserError(
                f"{where(name)}: a neuron must directly follow a Conv2d, Linear or Affine node "
                "(a student's LIF layer reads one synaptic layer)"
            )
        if self.neurons and not math.isclose(n.lam, self.neurons[0][1].lam, rel_tol=1e-6):
            first = self.neurons[0][2]
            raise UserError(
                f"{where(name)}: leak {n.lam:.7g} differs from {first!r}'s {self.neurons[0][1].lam:.7g} "
                "(heterogeneous time constants or dt); a student shares one leak"
            )
        layer = self.layers[i]
        if not isinstance(layer, (Conv, Linear)):  # a shortcut: its block's conv shares the LIF's input
            if n.gain != 1.0 or n.drive != 0:
                raise UserError(f"{where(name)}: a LIF fed by a shortcut must have input gain 1 and no v_leak")
        elif n.gain != 1.0:
            self.weights[i] = self.weights[i] * n.gain
            if i in self.biases:
                self.biases[i] = self.biases[i] * n.gain
        if n.drive != 0 and isinstance(layer, (Conv, Linear)):
            out = self.weights[i].shape[0]
            self.biases[i] = self.biases.get(i, np.zeros(out)) + n.drive
            self.layers[i] = dataclasses.replace(layer, bias=True)
        self.neurons.append((i, n, name))


# -- one function per node type --------------------------------------------------------------
def _input(b: Builder, name: str, node: nir.Input) -> None:
    """The batch-free ``[C, H, W]`` (a leading batch axis of 1, which Norse's exporter keeps, is dropped);
    a vector input is read as the image ``b.image`` (by default ``[F, 1, 1]``) through a Flatten."""
    image = b.image
    shape = [int(s) for s in np.asarray(node.input_type.get("input", [])).reshape(-1)]
    shape = shape[1:] if len(shape) in (2, 4) and shape[0] == 1 else shape
    if len(shape) == 1:
        chw = tuple(image) if image is not None else (shape[0], 1, 1)
        if len(chw) != 3 or int(np.prod(chw)) != shape[0]:
            raise UserError(f"{where(name)}: --input-shape {list(chw)} does not hold the {shape[0]} input features")
        b.input_shape, b.vector = (chw[0], chw[1], chw[2]), True
        b.layers.append(Flatten())
    elif len(shape) == 3:
        if image is not None and tuple(image) != tuple(shape):
            raise UserError(f"{where(name)}: --input-shape {list(image)} differs from the graph's input {shape}")
        b.input_shape = (shape[0], shape[1], shape[2])
    else:
        raise UserError(f"{where(name)}: input type {shape} is neither an image [C, H, W] nor a vector")


def conv_spec(node: nir.Conv2d, name: str) -> Conv:
    """The Conv a Conv2d node expresses (bias-free: ``Builder.weighted`` sets it); refuses what a
    student's Conv has not (dilation, groups, string padding)."""
    if np.any(np.asarray(node.dilation) != 1) or int(node.groups) != 1 or np.ndim(node.weight) != 4:
        raise UserError(f"{where(name)}: dilated or grouped convolutions are not supported")
    w = np.asarray(node.weight)
    kernel, stride = pair(w.shape[2:], "kernel", name), pair(node.stride, "stride", name)
    return Conv(w.shape[1], w.shape[0], kernel, stride, pair(node.padding, "padding", name))


def _conv(b: Builder, name: str, node: nir.Conv2d) -> None:
    b.weighted(conv_spec(node, name), node.weight, node.bias)


def _linear(b: Builder, name: str, node: nir.Linear | nir.Affine) -> None:
    """``Linear`` is ``W x``, ``Affine`` ``W x + b``: a student's Linear, biased when ``b`` is nonzero
    (always in our files: our exporter writes an Affine for a biased Linear only)."""
    w = np.asarray(node.weight)
    if w.ndim != 2:
        raise UserError(f"{where(name)}: a {w.ndim}-d weight; a Linear's is [out, in]")
    affine = isinstance(node, nir.Affine)
    b.weighted(Linear(w.shape[1], w.shape[0]), w, node.bias if affine else None, keep=affine and b.convention.own)


def _pool(b: Builder, name: str, node: nir.AvgPool2d | nir.SumPool2d) -> None:
    """An average pool; a sum pool is the same times ``k^2``, folded into the next weighted layer."""
    k = pair(node.kernel_size, "kernel", name)
    if pair(node.stride, "stride", name) != k or pair(node.padding, "padding", name) != 0:
        raise UserError(f"{where(name)}: only pools with stride = kernel and no padding are supported")
    if isinstance(node, nir.SumPool2d):
        b.scale *= k * k
    b.layers.append(AvgPool(k))


def _flatten(b: Builder, name: str, node: nir.Flatten) -> None:
    """Every exporter writes ``start_dim`` batch-free (torch's minus one), even where its Input type kept
    a batch axis; a student's Flatten takes the whole ``[C, H, W]`` map (a vector's is already there)."""
    if b.vector and len(b.layers) == 1:
        return
    start, end = int(node.start_dim), int(node.end_dim)
    if start not in (0, -3) or end not in (-1, 2):
        raise UserError(
            f"{where(name)}: Flatten(start_dim={start}, end_dim={end}) does not flatten the whole "
            f"[C, H, W] map; a student flattens all of it"
        )
    b.layers.append(Flatten())


def shortcut_spec(node: nir.Conv2d, source: int, name: str) -> Shortcut:
    """The Shortcut a shortcut branch's Conv2d expresses: a 1x1 kernel without padding, the identity
    when channels and size do not change (a student has no weights there)."""
    conv = conv_spec(node, name)
    if np.any(np.asarray(node.bias) != 0):
        raise UserError(
            f"{where(name)}: a shortcut adds no bias (its block's conv carries it); its Conv2d bias must be 0"
        )
    if conv.kernel_size != 1 or conv.padding != 0:
        raise UserError(
            f"{where(name)}: a shortcut must be a 1x1 convolution without padding, got "
            f"{conv.kernel_size}x{conv.kernel_size} with padding {conv.padding}"
        )
    spec = Shortcut(source, conv.in_channels, conv.out_channels, conv.stride)
    if not spec.projects and not np.array_equal(node.weight[:, :, 0, 0], np.eye(spec.out_channels)):
        raise UserError(
            f"{where(name)}: a shortcut that keeps channels and size is the identity in a student, "
            "but its weights are not the identity matrix"
        )
    return spec


def neuron_of(node: nir.LIF | nir.IF | nir.CubaLIF, name: str, conv: Convention) -> Neuron:
    """The student LIF a NIR neuron node is under ``conv`` (see the package docstring)."""
    dt = conv.dt
    reset = uniform(node.v_reset, "v_reset", name)
    if reset != 0:
        raise UserError(f"{where(name)}: v_reset = {reset}; a student's neurons reset to 0")
    theta = uniform(node.v_threshold, "v_threshold", name)
    tau = None
    if isinstance(node, nir.IF):
        lam, gain, drive = 1.0, uniform(node.r, "r", name) * (1.0 if conv.norse else dt), 0.0
    else:
        tau = uniform(node.tau_mem if isinstance(node, nir.CubaLIF) else node.tau, "tau", name)
        r, v_leak = uniform(node.r, "r", name), uniform(node.v_leak, "v_leak", name)
        if tau <= 0:
            raise UserError(f"{where(name)}: tau = {tau} must be positive")
        tau = tau / dt if conv.norse else tau  # Norse's to_nir writes dt / tau_mem_inv
        step = (1 - math.exp(-dt / tau)) if conv.exact else dt / tau
        lam = float(importer_leak(np.array([tau]), dt)[0]) if conv.own else 1.0 - step
        if not 0 < lam <= 1:
            raise UserError(
                f"{where(name)}: dt = {dt:.6g} against tau = {tau:.6g} gives leak {lam:.6g}, "
                f"outside (0, 1]: a wrong dt for this file; {HINT}"
            )
        gain, drive = r * step, step * v_leak
        if isinstance(node, nir.CubaLIF):
            tau_syn, w_in = uniform(node.tau_syn, "tau_syn", name), uniform(node.w_in, "w_in", name)
            tau_syn = tau_syn / dt if conv.norse else tau_syn
            if conv.exact or not math.isclose(tau_syn, dt, rel_tol=UNITY):
                raise UserError(
                    f"{where(name)}: CubaLIF synapse tau_syn = {tau_syn} keeps current from step to "
                    f"step at dt = {dt} (it reduces to a student LIF only when tau_syn = dt)"
                )
            gain *= w_in * dt / tau_syn
    if conv.own and (drive != 0 or not math.isclose(gain, 1.0, rel_tol=UNITY)):
        raise UserError(
            f"{where(name)}: input gain r*dt/tau = {gain} at dt = {dt} and drive {drive} from v_leak: our "
            "exporter writes a gain of 1 and no v_leak; not a student LIF"
        )
    if not theta > 0 or not gain > 0:
        raise UserError(f"{where(name)}: threshold {theta} and input gain {gain} must be positive for a student LIF")
    return Neuron(lam, 1.0 if math.isclose(gain, 1.0, rel_tol=UNITY) else gain, drive, theta, tau)


def _neuron(b: Builder, name: str, node: nir.LIF | nir.IF | nir.CubaLIF) -> None:
    """The LIF layer; a shortcut branch feeding this node comes in first, as the layer it follows."""
    if name in b.into:
        branch = b.into[name]
        source = b.layer_of[next(src for src, dst in b.graph.edges if dst == branch)]
        node_in = b.graph.nodes[branch]
        b.weighted(shortcut_spec(node_in, source, branch), node_in.weight, None)
    b.neuron(name, neuron_of(node, name, b.convention))


def _output(b: Builder, name: str, node: nir.Output) -> None:
    """The readout: a graph that ends at a neuron gets an identity Linear after it (logits = its spike
    counts / T); one that ends at a Conv over its whole map (Norse's exporter maps no Flatten) ends
    with Flatten + Linear instead, the same sums."""
    if not b.weights or b.scale != 1.0:
        raise UserError("the NIR graph has no Conv2d/Linear/Affine after its last pool; a student ends with a Linear")
    _conv_readout(b)
    if b.neurons and b.neurons[-1][0] == len(b.layers) - 1:  # ends at a neuron: read its spikes out
        k = b.weights[len(b.layers) - 1].shape[0]
        if not isinstance(b.layers[-1], Linear):
            raise UserError(
                f"{where(b.neurons[-1][2])}: the graph ends at a neuron after a Conv2d; a student's "
                "output is a vector (add a Flatten and Linear readout)"
            )
        b.weighted(Linear(k, k), np.eye(k), None)


def _conv_readout(b: Builder) -> None:
    """A last Conv that reads its whole map into a 1x1 output is Flatten + Linear with the kernel as
    its weight rows: rewrite it so."""
    i = len(b.layers) - 1
    spec = b.layers[i]
    if not isinstance(spec, Conv) or i in {k for k, _, _ in b.neurons}:
        return
    shape: tuple[int, ...] = b.input_shape
    for layer in b.layers[:i]:
        shape = layer.out_shape(shape)
    c, h, w = shape
    if spec.padding != 0 or spec.kernel_size != h or h != w:
        k = spec.kernel_size
        raise UserError(
            f"layer {i} (conv): the graph ends with a {k}x{k} convolution on a {h}x{w} map; a student's "
            "output is a vector (a Linear, or a conv over the whole map)"
        )
    weight = b.weights[i].reshape(spec.out_channels, -1)
    b.layers[i : i + 1] = [Flatten(), Linear(weight.shape[1], spec.out_channels, spec.bias)]
    b.weights = {(k + 1 if k >= i else k): v for k, v in b.weights.items()}
    b.biases = {(k + 1 if k >= i else k): v for k, v in b.biases.items()}
    b.weights[i + 1] = weight


# NIR node type -> how it reads into the student (the inverse of exporters/nir.py's _TO_NIR; a
# Shortcut comes back with the LIF its branch feeds)
NODES: dict[type, Callable[[Builder, str, Any], None]] = {
    nir.Input: _input,
    nir.Conv2d: _conv,
    nir.Linear: _linear,
    nir.Affine: _linear,
    nir.AvgPool2d: _pool,
    nir.SumPool2d: _pool,
    nir.Flatten: _flatten,
    nir.LIF: _neuron,
    nir.IF: _neuron,
    nir.CubaLIF: _neuron,
    nir.Output: _output,
}


def read_node(b: Builder, name: str) -> None:
    """Read chain node ``name`` through its entry in ``NODES``; one line naming a node type it lacks."""
    node = b.graph.nodes[name]
    read = NODES.get(type(node))
    if read is None:
        supported = ", ".join(t.__name__ for t in NODES if t not in (nir.Input, nir.Output))
        raise UserError(
            f"{where(name)}: node type {type(node).__name__} has no student equivalent (supported: {supported})"
        )
    read(b, name, node)
    b.layer_of[name] = len(b.layers) - 1
