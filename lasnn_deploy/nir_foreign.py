r"""NIR in: a graph written by another library's NIR exporter becomes a student (``lasnn-deploy import``
writes it into a run folder, ``nir_import.py``).

The inverse of ``exporters/nir.py`` for graphs we did not write. A student is a feed-forward chain
of Conv/Linear layers (bias allowed), average pools and one flatten, with one LIF layer after every
Conv/Linear but the last; all LIF layers share one leak ``lam``, each has one threshold and resets
to 0. The chain ``Input -> ... -> Output`` is read node by node:

- ``Conv2d`` (square kernel, stride and padding; no dilation or groups) -> ``Conv``; ``Linear`` and
  ``Affine`` -> ``Linear`` (a nonzero ``bias`` sets ``bias=True``).
- ``AvgPool2d`` (stride = kernel, no padding) -> ``AvgPool``. ``SumPool2d`` is the same pool times
  ``k^2``; the factor is folded into the next Conv/Linear's weights.
- ``Flatten`` of the whole batch-free ``[C, H, W]`` map -> ``Flatten``. Exporters write
  ``start_dim`` batch-free (torch's ``start_dim - 1``: 0), also where the Input type kept a batch
  axis of 1 (``[1, C, H, W]``, which is dropped).
- ``LIF``, ``IF`` and ``CubaLIF`` -> the LIF layer after the preceding Conv/Linear. NIR gives an
  ODE; each exporter meant one discretisation at one ``dt`` (``CONVENTIONS``). Forward Euler
  (snnTorch, SpikingJelly, Norse)::

      LIF      tau dv/dt = (v_leak - v) + r I     v[t] = (1 - dt/tau) v[t-1] + (r dt/tau) I[t]
                                                         + (dt/tau) v_leak
      IF       dv/dt = r I                         v[t] = v[t-1] + (r dt) I[t]
      CubaLIF  tau_syn dI/dt = -I + w_in x         I[t] = (1 - dt/tau_syn) I[t-1] + (w_in dt/tau_syn) x[t]

  Sinabs counts ``tau`` in steps (``dt = 1``) and decays exactly: ``lam = exp(-dt/tau)``, input
  gain ``r (1 - lam)`` (its ``norm_input``). Norse 1.1.0 writes ``tau = dt / tau_mem_inv`` (so the
  time constant is ``tau / dt``) and an ``IF``'s ``r = 1`` for a gain of 1 per step. So ``lam`` is
  ``1 - dt/tau`` (or ``exp(-dt/tau)``), the input gain ``g`` multiplies the preceding layer's
  weights and bias (skipped when it is 1 to float32 rounding, as every exporter that writes
  ``r = tau/dt`` means), and a constant drive
  ``(dt/tau) v_leak`` joins the bias. A CubaLIF reduces to a LIF only when its synapse keeps no
  current from one step to the next (``tau_syn = dt``, snnTorch's ``alpha = 0``); then
  ``g = w_in r dt / tau_mem``.

Refused, with one line naming the node and the reason: recurrence (a cycle, a subgraph, a node with
two inputs), per-neuron or per-layer differences in ``tau`` (a student shares one leak), a leak
outside (0, 1] (a wrong ``dt``), ``v_reset != 0``, a synapse that does not reduce, and any other
node. A graph that ends at a neuron is read out through an identity ``Linear`` added after it, so
the logits are the output neurons' spike counts divided by ``T``; one that ends at a Conv over its
whole map (Norse's exporter maps no Flatten) ends with Flatten + Linear instead. A vector input is
read as an image of ``input_shape`` (default ``[F, 1, 1]``) with a Flatten first.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nir
import numpy as np
import torch

from .errors import UserError
from .neurons import Encoding
from .nir_read import FORMAT, student_from_nir
from .student.config import StudentConfig
from .student.layers import AvgPool, Conv, Flatten, Linear
from .student.module import SpikingStudent, check_parameters


@dataclass(frozen=True)
class Convention:
    """How an exporter meant its neurons: the time step and how ``tau`` turns into a leak."""

    dt: float
    exact: bool = False  # True: lam = exp(-dt/tau) (Sinabs); False: forward Euler, lam = 1 - dt/tau
    norse: bool = False  # Norse 1.1.0 writes tau = dt * tau_mem and an IF's r = 1 as a gain of 1 per step


CONVENTIONS = {
    "snntorch": Convention(1e-4),  # snntorch.export_nir hard-codes dt = 1e-4
    "spikingjelly": Convention(1e-4),  # nir_exchange.export_to_nir(dt=1e-4) default
    "norse": Convention(1e-3, norse=True),  # norse.torch.utils.export_nir.to_nir(dt=0.001) default
    "sinabs": Convention(1.0, exact=True),  # sinabs writes tau in steps; LIF decays by exp(-1/tau)
}
UNITY = 1e-5  # an input gain within float32 rounding of 1 is 1 (r = tau/dt written in float32)
HINT = "pass --from snntorch|norse|sinabs|spikingjelly (the exporter) or --dt SECONDS"


def _where(name: str) -> str:
    return f"NIR node {name!r}"


def _uniform(value: Any, what: str, name: str) -> float:
    """The one value of a per-neuron parameter; refuses heterogeneous ones (a student has one per layer)."""
    values = np.unique(np.asarray(value, dtype=np.float64))
    if values.size != 1:
        raise UserError(
            f"{_where(name)}: {what} differs across neurons ({values.size} values); a student has one per layer"
        )
    if not np.isfinite(values[0]):
        raise UserError(f"{_where(name)}: {what} is {values[0]}, not a finite number")
    return float(values[0])


def _pair(value: Any, what: str, name: str) -> int:
    """One integer from a square kernel/stride/padding given as int or pair."""
    if isinstance(value, str):
        raise UserError(f"{_where(name)}: padding {value!r} by name is not supported; give it in pixels")
    values = np.unique(np.asarray(value).reshape(-1))
    if values.size != 1 or values[0] != int(values[0]):
        raise UserError(f"{_where(name)}: {what} {np.asarray(value).tolist()} is not square; a student's is")
    return int(values[0])


@dataclass
class _Neuron:
    lam: float
    gain: float
    drive: float  # constant input per step (from v_leak)
    theta: float


def _neuron(node: nir.NIRNode, name: str, conv: Convention) -> _Neuron:
    """The student LIF a NIR neuron node is under ``conv`` (see the module docstring)."""
    dt = conv.dt
    reset = _uniform(node.v_reset, "v_reset", name)
    if reset != 0:
        raise UserError(f"{_where(name)}: v_reset = {reset}; a student's neurons reset to 0")
    theta = _uniform(node.v_threshold, "v_threshold", name)
    if isinstance(node, nir.IF):
        lam, gain, drive = 1.0, _uniform(node.r, "r", name) * (1.0 if conv.norse else dt), 0.0
    else:
        tau = _uniform(node.tau_mem if isinstance(node, nir.CubaLIF) else node.tau, "tau", name)
        r, v_leak = _uniform(node.r, "r", name), _uniform(node.v_leak, "v_leak", name)
        if tau <= 0:
            raise UserError(f"{_where(name)}: tau = {tau} must be positive")
        tau = tau / dt if conv.norse else tau  # Norse's to_nir writes dt / tau_mem_inv
        step = (1 - math.exp(-dt / tau)) if conv.exact else dt / tau
        lam = 1.0 - step
        if not 0 < lam <= 1:
            raise UserError(
                f"{_where(name)}: dt = {dt:.6g} against tau = {tau:.6g} gives leak {lam:.6g}, "
                f"outside (0, 1]: a wrong dt for this file; {HINT}"
            )
        gain, drive = r * step, step * v_leak
        if isinstance(node, nir.CubaLIF):
            tau_syn, w_in = _uniform(node.tau_syn, "tau_syn", name), _uniform(node.w_in, "w_in", name)
            tau_syn = tau_syn / dt if conv.norse else tau_syn
            if conv.exact or not math.isclose(tau_syn, dt, rel_tol=UNITY):
                raise UserError(
                    f"{_where(name)}: CubaLIF synapse tau_syn = {tau_syn} keeps current from step to "
                    f"step at dt = {dt} (it reduces to a student LIF only when tau_syn = dt)"
                )
            gain *= w_in * dt / tau_syn
    if not theta > 0 or not gain > 0:
        raise UserError(f"{_where(name)}: threshold {theta} and input gain {gain} must be positive for a student LIF")
    return _Neuron(lam, 1.0 if math.isclose(gain, 1.0, rel_tol=UNITY) else gain, drive, theta)


NEURONS = (nir.LIF, nir.IF, nir.CubaLIF)


def _chain(graph: nir.NIRGraph) -> list[str]:
    """Node names from the one Input to the Output; refuses branches, recurrence and subgraphs."""
    for name, node in graph.nodes.items():
        if isinstance(node, nir.NIRGraph):
            raise UserError(
                f"{_where(name)}: a subgraph (recurrent layers are exported as one) cannot map to a "
                "feed-forward student"
            )
    succ: dict[str, list[str]] = {}
    pred: dict[str, list[str]] = {}
    for src, dst in graph.edges:
        for end in (src, dst):
            if end not in graph.nodes:
                raise UserError(f"the NIR graph has an edge to or from {end!r}, which is not one of its nodes")
        succ.setdefault(src, []).append(dst)
        pred.setdefault(dst, []).append(src)
    for name, ins in pred.items():
        if len(set(ins)) > 1:
            raise UserError(
                f"{_where(name)}: {len(set(ins))} incoming edges ({', '.join(sorted(set(ins)))}): "
                "recurrence or branches cannot map to a feed-forward student"
            )
    inputs = [n for n, node in graph.nodes.items() if isinstance(node, nir.Input)]
    if len(inputs) != 1:
        raise UserError(f"the NIR graph has {len(inputs)} Input nodes; a student has one input")
    chain = inputs
    while not isinstance(graph.nodes[chain[-1]], nir.Output):
        nxt = sorted(set(succ.get(chain[-1], [])))
        if len(nxt) != 1:
            raise UserError(
                f"{_where(chain[-1])}: leads to {len(nxt)} nodes; a student is one chain from input to output"
            )
        if nxt[0] in chain:
            raise UserError(
                f"{_where(nxt[0])}: an edge back from {chain[-1]!r} (recurrence) cannot map to a feed-forward student"
            )
        chain.append(nxt[0])
    extra = sorted(set(graph.nodes) - set(chain))
    if extra:
        raise UserError(f"{_where(extra[0])}: not on the chain from input to output; a student is one chain")
    return chain


def _input_shape(node: nir.Input, name: str, image: tuple[int, ...] | None) -> tuple[tuple[int, int, int], bool]:
    """The batch-free ``[C, H, W]`` (a leading batch axis of 1, which Norse's exporter keeps, is dropped)
    and whether the input is a vector (read as the image ``image``, by default ``[F, 1, 1]``)."""
    shape = [int(s) for s in np.asarray(node.input_type.get("input", [])).reshape(-1)]
    batched = len(shape) in (2, 4) and shape[0] == 1
    shape = shape[1:] if batched else shape
    if len(shape) == 1:
        chw = tuple(image) if image is not None else (shape[0], 1, 1)
        if int(np.prod(chw)) != shape[0]:
            raise UserError(f"{_where(name)}: --input-shape {list(chw)} does not hold the {shape[0]} input features")
        return chw, True  # type: ignore[return-value]
    if len(shape) == 3:
        if image is not None and tuple(image) != tuple(shape):
            raise UserError(f"{_where(name)}: --input-shape {list(image)} differs from the graph's input {shape}")
        return (shape[0], shape[1], shape[2]), False
    raise UserError(f"{_where(name)}: input type {shape} is neither an image [C, H, W] nor a vector")


def _flatten_ok(node: nir.Flatten, name: str) -> None:
    """Every exporter writes ``start_dim`` batch-free (torch's minus one), even where its Input type kept
    a batch axis; a student's Flatten takes the whole ``[C, H, W]`` map."""
    start, end = int(node.start_dim), int(node.end_dim)
    if start not in (0, -3) or end not in (-1, 2):
        raise UserError(
            f"{_where(name)}: Flatten(start_dim={start}, end_dim={end}) does not flatten the whole "
            f"[C, H, W] map; a student flattens all of it"
        )


class _Builder:
    """Collects layers, weights and neurons while walking the chain."""

    def __init__(self) -> None:
        self.layers: list = []
        self.weights: dict[int, np.ndarray] = {}
        self.biases: dict[int, np.ndarray] = {}
        self.neurons: list[tuple[int, _Neuron, str]] = []  # (index of the layer it follows, neuron, node name)
        self.scale = 1.0  # a SumPool's k^2 waiting for the next weighted layer
        self.last_weighted = -1

    def weighted(self, spec: Any, weight: np.ndarray, bias: np.ndarray | None) -> None:
        weight = np.asarray(weight, dtype=np.float64) * self.scale
        self.scale = 1.0
        if bias is not None and np.any(np.asarray(bias) != 0):
            spec = dataclasses.replace(spec, bias=True)
            self.biases[len(self.layers)] = np.asarray(bias, dtype=np.float64).reshape(-1)
        self.weights[len(self.layers)] = weight
        self.last_weighted = len(self.layers)
        self.layers.append(spec)

    def neuron(self, name: str, n: _Neuron) -> None:
        i = len(self.layers) - 1
        if i < 0 or i != self.last_weighted or (self.neurons and self.neurons[-1][0] == i):
            raise UserError(
                f"{_where(name)}: a neuron must directly follow a Conv2d, Linear or Affine node "
                "(a student's LIF layer reads one synaptic layer)"
            )
        if self.neurons and not math.isclose(n.lam, self.neurons[0][1].lam, rel_tol=1e-6):
            first = self.neurons[0][2]
            raise UserError(
                f"{_where(name)}: leak {n.lam:.7g} differs from {first!r}'s {self.neurons[0][1].lam:.7g} "
                "(heterogeneous time constants or dt); a student shares one leak"
            )
        if n.gain != 1.0:
            self.weights[i] = self.weights[i] * n.gain
            if i in self.biases:
                self.biases[i] = self.biases[i] * n.gain
        if n.drive != 0:
            out = self.weights[i].shape[0]
            self.biases[i] = self.biases.get(i, np.zeros(out)) + n.drive
            self.layers[i] = dataclasses.replace(self.layers[i], bias=True)
        self.neurons.append((i, n, name))


def _conv_readout(b: _Builder, input_shape: tuple[int, int, int]) -> None:
    """A last Conv that reads its whole map into a 1x1 output (Norse's exporter maps no Flatten) is the
    same sums as Flatten + Linear with the kernel as its weight rows: rewrite it so."""
    i = len(b.layers) - 1
    spec = b.layers[i]
    if not isinstance(spec, Conv) or i in {k for k, _, _ in b.neurons}:
        return
    c, h, w = _shape_before(input_shape, b.layers[:i])
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


def _shape_before(input_shape: tuple[int, int, int], layers: list) -> tuple[int, ...]:
    shape: tuple[int, ...] = tuple(input_shape)
    for layer in layers:
        shape = layer.out_shape(shape)
    return shape


def student_from_foreign_nir(
    graph: nir.NIRGraph,
    convention: Convention,
    timesteps: int = 8,
    encoding: Encoding | str = Encoding.DIRECT,
    arch: str = "nir-import",
    input_shape: tuple[int, ...] | None = None,
) -> SpikingStudent:
    """The student that computes what ``graph`` means under ``convention`` (module docstring)."""
    if not isinstance(graph, nir.NIRGraph):
        raise UserError(f"expected a NIR graph, got {type(graph).__name__}")
    if not (convention.dt > 0 and math.isfinite(convention.dt)):
        raise UserError(f"dt = {convention.dt} must be a positive number of seconds (steps for Sinabs); {HINT}")
    chain = _chain(graph)
    shape, vector = _input_shape(graph.nodes[chain[0]], chain[0], input_shape)
    b = _Builder()
    if vector:
        b.layers.append(Flatten())
    for name in chain[1:-1]:
        node = graph.nodes[name]
        if isinstance(node, nir.Conv2d):
            if np.any(np.asarray(node.dilation) != 1) or int(node.groups) != 1 or np.ndim(node.weight) != 4:
                raise UserError(f"{_where(name)}: dilated or grouped convolutions are not supported")
            w = np.asarray(node.weight)
            b.weighted(
                Conv(
                    w.shape[1],
                    w.shape[0],
                    _pair(w.shape[2:], "kernel", name),
                    _pair(node.stride, "stride", name),
                    _pair(node.padding, "padding", name),
                ),
                w,
                node.bias,
            )
        elif isinstance(node, (nir.Linear, nir.Affine)):
            w = np.asarray(node.weight)
            if w.ndim != 2:
                raise UserError(f"{_where(name)}: a {w.ndim}-d weight; a Linear's is [out, in]")
            b.weighted(Linear(w.shape[1], w.shape[0]), w, node.bias if isinstance(node, nir.Affine) else None)
        elif isinstance(node, (nir.AvgPool2d, nir.SumPool2d)):
            k = _pair(node.kernel_size, "kernel", name)
            if _pair(node.stride, "stride", name) != k or _pair(node.padding, "padding", name) != 0:
                raise UserError(f"{_where(name)}: only pools with stride = kernel and no padding are supported")
            if isinstance(node, nir.SumPool2d):
                b.scale *= k * k
            b.layers.append(AvgPool(k))
        elif isinstance(node, nir.Flatten):
            if not (vector and len(b.layers) == 1):  # a vector's flatten is already there
                _flatten_ok(node, name)
                b.layers.append(Flatten())
        elif isinstance(node, NEURONS):
            b.neuron(name, _neuron(node, name, convention))
        else:
            raise UserError(
                f"{_where(name)}: node type {type(node).__name__} has no student equivalent (supported: "
                "Conv2d, Linear, Affine, AvgPool2d, SumPool2d, Flatten, LIF, IF, CubaLIF)"
            )
    if not b.weights or b.scale != 1.0:
        raise UserError("the NIR graph has no Conv2d/Linear/Affine after its last pool; a student ends with a Linear")
    _conv_readout(b, shape)
    if b.neurons and b.neurons[-1][0] == len(b.layers) - 1:  # ends at a neuron: read its spikes out
        k = b.weights[len(b.layers) - 1].shape[0]
        if not isinstance(b.layers[-1], Linear):
            raise UserError(
                f"{_where(b.neurons[-1][2])}: the graph ends at a neuron after a Conv2d; a student's "
                "output is a vector (add a Flatten and Linear readout)"
            )
        b.weighted(Linear(k, k), np.eye(k), None)
    lam = b.neurons[0][1].lam if b.neurons else 1.0
    config = StudentConfig(
        arch,
        shape,
        int(b.weights[len(b.layers) - 1].shape[0]),
        tuple(b.layers),
        timesteps=timesteps,
        encoding=encoding,
        reset="hard",
    )
    lif_after = [i for i, _, _ in b.neurons]
    if lif_after != config.spiking_layers:
        missing = sorted(set(config.spiking_layers) - set(lif_after))
        raise UserError(
            f"the Conv2d/Linear node that becomes layer {missing[0] if missing else '?'} has no neuron "
            "after it; a student has a LIF layer after every Conv/Linear but the last"
        )
    student = SpikingStudent(config, leak=float(np.float32(lam)), thresholds=[n.theta for _, n, _ in b.neurons])
    with torch.no_grad():
        for i, weight in b.weights.items():
            module = student.body[i]
            if tuple(module.weight.shape) != weight.shape:
                raise UserError(
                    f"layer {i} ({config.layers[i].type}): weights {list(weight.shape)} do not fit its "
                    f"input; expected {list(module.weight.shape)}"
                )
            module.weight.copy_(torch.from_numpy(weight.astype(np.float32)))
            if i in b.biases:
                module.bias.copy_(torch.from_numpy(b.biases[i].astype(np.float32)))
    check_parameters(student)
    return student.eval()


def read_nir(path: str | os.PathLike) -> nir.NIRGraph:
    """``nir.read`` with one clear line for a missing, truncated or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no NIR file at {path}")
    try:
        return nir.read(path)
    except Exception as err:  # h5py and nir raise OSError, KeyError, ValueError, TypeError...
        raise UserError(f"{path} is not a readable NIR file ({type(err).__name__}: {err}); re-export it") from err


def convention_for(graph: nir.NIRGraph, library: str | None, dt: float | None) -> Convention:
    """The convention from ``library`` and/or ``dt``, else the graph metadata's ``dt``; refuses if none says."""
    if library is not None and library not in CONVENTIONS:
        raise UserError(f"unknown exporter {library!r}: choose one of {', '.join(CONVENTIONS)}")
    base = CONVENTIONS.get(library or "", Convention(float("nan")))
    if dt is None:
        meta = graph.metadata if isinstance(graph.metadata, dict) else {}
        if library is None and "dt" not in meta:
            raise UserError(f"the NIR graph does not say its time step (metadata key 'dt'); {HINT}")
        try:
            dt = base.dt if library is not None else float(np.asarray(meta["dt"]).reshape(-1)[0])
        except (TypeError, ValueError, IndexError) as err:
            raise UserError(f"the NIR graph's metadata 'dt' = {meta.get('dt')!r} is not a number; {HINT}") from err
    return dataclasses.replace(base, dt=float(dt))


def student_from_any_nir(
    source: str | os.PathLike | nir.NIRGraph,
    library: str | None = None,
    dt: float | None = None,
    timesteps: int = 8,
    encoding: Encoding | str = Encoding.DIRECT,
    input_shape: tuple[int, ...] | None = None,
) -> SpikingStudent:
    """A student from our own NIR file (exact round trip) or a foreign exporter's graph."""
    graph = source if isinstance(source, nir.NIRGraph) else read_nir(source)
    meta = graph.metadata if isinstance(graph.metadata, dict) else {}
    if meta.get("format") == FORMAT and library is None and dt is None:
        return student_from_nir(graph)
    arch = f"nir:{Path(source).stem}" if not isinstance(source, nir.NIRGraph) else "nir-import"
    return student_from_foreign_nir(graph, convention_for(graph, library, dt), timesteps, encoding, arch, input_shape)


def load_nir_student(path: str | os.PathLike) -> SpikingStudent:
    """A ``.nir`` file given where a model goes: ours, or one whose metadata says its ``dt``; other
    libraries' files need their exporter named, which only ``lasnn-deploy import --from`` does."""
    graph = read_nir(path)
    meta = graph.metadata if isinstance(graph.metadata, dict) else {}
    if "dt" not in meta:
        raise UserError(
            f"{path} does not say its time step (metadata key 'dt'): run `lasnn-deploy import {path} "
            "--from LIBRARY --out RUN` and pass RUN instead"
        )
    return student_from_any_nir(graph)
