r"""NIR target (docs/semantics.md, 'NIR'): the student as a ``nir.NIRGraph``, run in snnTorch's importer.

The graph is a chain ``Input -> (Conv2d | AvgPool2d | Flatten | Linear | LIF)* -> Output`` built
straight from the student's layers (Dropout is dropped, it is the identity at inference), plus one
branch per residual block: a ``Shortcut`` is a 1x1 ``Conv2d`` node (``shortcut<i>``, zero bias; an
identity shortcut has identity weights) from the node holding its source's output (a LIF, or the
AvgPool after one) into the block's LIF, which thus has two incoming edges; NIR sums them, and
snnTorch's importer (nirtorch's graph executor) adds them before the LIF. The metadata names the
shortcut nodes (``shortcuts``), so that reading a graph back tells branch from chain. It ends
at the last ``Linear``: the output integrator ``u_out[T] = sum_t W_out s_L[t]`` is the sum of the
graph's output over the ``T`` steps, so ``logits = sum_t output[t] / T``. No ``I``/``LI`` node is
written because snnTorch 1.0's importer maps neither. The metadata says so (``output_form``) and
carries what the graph itself cannot: ``dt``, ``timesteps``, ``encoding``, ``input_shape``,
``num_classes``, the student's exact ``leak``, ``arch`` and the shortcut node names.

A layer's bias (a constant current every step) is the ``bias`` of its ``Conv2d`` node (zero for a
bias-free conv), and a ``Linear`` with a bias is an ``Affine`` node: NIR's ``W x + b``, which
snnTorch imports as an ``nn.Linear`` with that bias. Reading back, a Conv2d with any nonzero bias
is a biased Conv; an all-zero bias reads as none (it computes the same).

Neurons follow NIR's LIF ``tau dv/dt = (v_leak - v) + r I`` discretised by forward Euler with
``dt = 1e-4`` (the dt snnTorch's importer assumes)::

    v[t] = (1 - dt/tau) v[t-1] + (r dt/tau) I[t]     with tau = dt / (1 - lam), r = 1 / (1 - lam)
         = lam v[t-1] + I[t]                          v_leak = v_reset = 0, v_threshold = theta

``tau`` is stored in float32 and nudged by a few ulps so that ``1 - dt/tau`` evaluated in float32,
as snnTorch does, gives back ``lam`` bit for bit where a float32 ``tau`` can (for how many leaks:
docs/results.md, "Numbers behind the code's reasons"; otherwise the nearest float32 leak).

``lam = 1`` is written as a LIF with ``tau = dt * 2**64`` and ``r = 2**64`` (leak ``2**-64`` per
step, which rounds to exactly 1 in float32 and float64), not as NIR's ``IF``: snnTorch maps ``IF`` to
``snn.Leaky(beta=0.9, reset_mechanism="subtract", init_hidden=False)`` and requires ``r == 1``, which
is neither an integrate-and-fire neuron nor a module its graph executor can chain.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nir
import numpy as np
import torch

from ..atomic import atomic_path
from ..errors import UserError
from ..inputs import model_input
from ..student import AvgPool, Conv, Dropout, Flatten, Linear, Shortcut, SpikingStudent, StudentConfig, table_entry
from .target import RunResult, Target

FORMAT = "lasnn-deploy-nir/1"
DT = 1e-4  # snnTorch's importer hard-codes this dt for LIF nodes
NO_LEAK_STEPS = 2.0**64  # lam = 1: tau = dt * 2**64, so 1 - dt/tau rounds to exactly 1
OUTPUT_FORM = "linear"  # the graph ends at the last Linear; logits = sum_t output[t] / T
EXPORT_HINT = "re-export it with `lasnn-deploy export MODEL --target nir --out FILE`"


# -- leak <-> (tau, r) -----------------------------------------------------------------------
def importer_leak(tau: np.ndarray, dt: float = DT) -> np.ndarray:
    """The leak ``1 - dt/tau`` evaluated in float32, exactly as snnTorch's importer computes it."""
    return np.float32(1) - np.float32(dt) / np.asarray(tau, dtype=np.float32)


def leak_to_tau(leak: float, dt: float = DT) -> tuple[np.float32, np.float32]:
    """``tau`` and ``r`` (float32) of the forward-Euler mapping (docs/semantics.md, 'NIR') for the shared leak ``lam``.

    ``tau = dt / (1 - lam)`` is moved by at most 16 ulps to the value whose float32 leak equals
    ``lam`` exactly (the nearest one if none does); ``r = tau / dt`` keeps the input gain
    ``r dt / tau`` at 1.
    """
    lam = np.float32(leak)
    if lam == 1:
        return np.float32(dt) * np.float32(NO_LEAK_STEPS), np.float32(NO_LEAK_STEPS)
    tau0 = np.array([dt / (1.0 - float(lam))], dtype=np.float32)
    offsets = np.arange(-16, 17, dtype=np.int32)
    candidates = (tau0.view(np.int32) + offsets).view(np.float32)
    error = np.abs(importer_leak(candidates, dt).astype(np.float64) - float(lam))
    tau = candidates[np.lexsort((np.abs(offsets), error))[0]]
    return tau, np.float32(float(tau) / dt)


# -- export ----------------------------------------------------------------------------------
def _check(student: SpikingStudent) -> None:
    """Raise ``UserError`` naming the layer when NIR (or its importers) cannot express ``student``.

    Finite parameters and a leak in (0, 1] are checked before, by ``Target.check``.
    """
    cfg = student.config
    lifs = cfg.spiking_layers
    if cfg.reset != "hard":
        first = lifs[0] if lifs else 0
        raise UserError(
            f"layer {first}: soft reset cannot be expressed in NIR, which resets to a value; train with --reset hard"
        )
    for k, i in enumerate(lifs):
        theta = float(student.thresholds[k].detach())
        if theta <= 0:
            raise UserError(
                f"layer {i}: threshold {theta} must be a finite positive number for NIR's reset-to-zero LIF"
            )


def _conv_node(
    weight: np.ndarray, input_hw: tuple[int, ...], stride: int, padding: int, bias: np.ndarray | None = None
) -> nir.Conv2d:
    """A Conv2d node; a bias-free conv gets NIR's zero bias (adding 0 is exact in every runtime)."""
    bias = np.zeros(weight.shape[0], dtype=np.float32) if bias is None else bias
    return nir.Conv2d(
        input_shape=input_hw, weight=weight, stride=stride, padding=padding, dilation=1, groups=1, bias=bias
    )


def _bias(module: torch.nn.Module) -> np.ndarray | None:
    return None if module.bias is None else module.bias.detach().cpu().numpy().astype(np.float32)


def _shortcut_weight(spec: Shortcut, module: torch.nn.Module) -> np.ndarray:
    """The 1x1 kernel of a shortcut: its projection, or the identity."""
    if module.proj is None:
        return np.eye(spec.out_channels, dtype=np.float32)[:, :, None, None]
    return module.proj.weight.detach().cpu().numpy().astype(np.float32)


@dataclass
class _Builder:
    """The graph being written: its nodes and edges, the chain's last node, and per layer index the
    node holding that layer's output (``produced``), where a shortcut branch starts."""

    nodes: dict[str, nir.NIRNode]
    shapes: list[tuple[int, ...]]
    edges: list[tuple[str, str]] = field(default_factory=list)
    previous: str = "input"
    produced: dict[int, str] = field(default_factory=dict)
    into_lif: str | None = None  # a branch node waiting for the LIF that follows it

    def add(self, name: str, node: nir.NIRNode) -> None:
        """Append ``node`` to the chain, fed by its last node."""
        self.nodes[name] = node
        self.edges.append((self.previous, name))
        self.previous = name


def _conv_to_nir(b: _Builder, name: str, layer: Conv, module: torch.nn.Module, shape: tuple[int, ...]) -> None:
    weight = module.weight.detach().cpu().numpy().astype(np.float32)
    b.add(name, _conv_node(weight, shape[1:], layer.stride, layer.padding, _bias(module)))


def _linear_to_nir(b: _Builder, name: str, layer: Linear, module: torch.nn.Module, shape: tuple[int, ...]) -> None:
    """``W s + b`` is NIR's Affine, ``W s`` its Linear."""
    weight = module.weight.detach().cpu().numpy().astype(np.float32)
    bias = _bias(module)
    b.add(name, nir.Linear(weight=weight) if bias is None else nir.Affine(weight=weight, bias=bias))


def _avgpool_to_nir(b: _Builder, name: str, layer: AvgPool, module: torch.nn.Module, shape: tuple[int, ...]) -> None:
    k = layer.kernel_size
    b.add(name, nir.AvgPool2d(kernel_size=np.array([k, k]), stride=np.array([k, k]), padding=np.array([0, 0])))


def _flatten_to_nir(b: _Builder, name: str, layer: Flatten, module: torch.nn.Module, shape: tuple[int, ...]) -> None:
    b.add(name, nir.Flatten(input_type={"input": np.array(shape)}, start_dim=0, end_dim=-1))


def _dropout_to_nir(b: _Builder, name: str, layer: Dropout, module: torch.nn.Module, shape: tuple[int, ...]) -> None:
    """No node: Dropout is the identity at inference."""


def _shortcut_to_nir(b: _Builder, name: str, layer: Shortcut, module: torch.nn.Module, shape: tuple[int, ...]) -> None:
    """A branch, not a link of the chain: from its source's node into the block's LIF, a second input."""
    b.nodes[name] = _conv_node(_shortcut_weight(layer, module), b.shapes[layer.source][1:], layer.stride, 0)
    b.edges.append((b.produced[layer.source], name))
    b.into_lif = name


# layer-spec type -> its NIR node(s); the inverse is _FROM_NIR
_TO_NIR: dict[type, Callable[[_Builder, str, Any, torch.nn.Module, tuple[int, ...]], None]] = {
    Conv: _conv_to_nir,
    Linear: _linear_to_nir,
    AvgPool: _avgpool_to_nir,
    Flatten: _flatten_to_nir,
    Dropout: _dropout_to_nir,
    Shortcut: _shortcut_to_nir,
}


def to_nir_graph(student: SpikingStudent) -> nir.NIRGraph:
    """The student as NIR nodes: a chain, plus a branch per shortcut (see the module docstring)."""
    cfg = student.config
    tau, r = leak_to_tau(float(student.leak.detach()))
    thresholds = student.thresholds.detach().cpu().numpy().astype(np.float32)
    lif_of = {i: k for k, i in enumerate(cfg.spiking_layers)}
    b = _Builder({"input": nir.Input(input_type={"input": np.array(cfg.input_shape)})}, cfg.shapes())
    shape = tuple(cfg.input_shape)
    for i, (layer, module) in enumerate(zip(cfg.layers, student.body, strict=True)):
        table_entry(_TO_NIR, type(layer), "the NIR exporter")(b, cfg.layer_name(i), layer, module, shape)
        shape = b.shapes[i]
        if i in lif_of:
            zeros = np.zeros(shape, dtype=np.float32)
            b.add(
                f"lif{i}",
                nir.LIF(
                    tau=np.full(shape, tau),
                    r=np.full(shape, r),
                    v_leak=zeros,
                    v_reset=zeros.copy(),
                    v_threshold=np.full(shape, thresholds[lif_of[i]]),
                ),
            )
            if b.into_lif is not None:
                b.edges.append((b.into_lif, b.previous))
                b.into_lif = None
        b.produced[i] = b.previous
    b.add("output", nir.Output(output_type={"output": np.array([cfg.num_classes])}))
    return nir.NIRGraph(nodes=b.nodes, edges=b.edges, metadata=_metadata(student))


def _metadata(student: SpikingStudent) -> dict[str, Any]:
    cfg = student.config
    return {
        "format": FORMAT,
        "arch": cfg.arch,
        "dt": DT,
        "timesteps": cfg.timesteps,
        "encoding": cfg.encoding,
        "reset": cfg.reset,
        "input_shape": np.array(cfg.input_shape),
        "num_classes": cfg.num_classes,
        "leak": float(student.leak.detach()),
        "output_form": OUTPUT_FORM,
        "shortcuts": " ".join(f"shortcut{i}" for i, l in enumerate(cfg.layers) if isinstance(l, Shortcut)),
        "readout": "logits = sum over the T steps of the Output node / T (the output integrator)",
        "neuron": "LIF, forward Euler at dt: v[t] = (1 - dt/tau) v[t-1] + (r dt/tau) I[t]; reset to v_reset",
    }


def _export(student: SpikingStudent, path: Path) -> Path:
    """Write the NIR graph of a checked student to ``path`` atomically with ``nir.write``."""
    graph = to_nir_graph(student)
    with atomic_path(path) as tmp:
        nir.write(tmp, graph)
    return path


# -- reading ---------------------------------------------------------------------------------
def read_graph(path: str | Path) -> tuple[nir.NIRGraph, dict[str, Any]]:
    """``nir.read`` a graph written by :func:`export`; returns it and its checked run settings."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no NIR file at {path}: {EXPORT_HINT}")
    try:
        graph = nir.read(path)
    except Exception as err:  # h5py and nir raise OSError, KeyError, ValueError, AssertionError...
        raise UserError(f"{path} is not a readable NIR file ({type(err).__name__}: {err}); {EXPORT_HINT}") from err
    return graph, _settings(graph, path)


def _settings(graph: nir.NIRGraph, where: Any) -> dict[str, Any]:
    """Run settings from the graph metadata, as plain Python values; one clear error if absent."""
    meta = graph.metadata if isinstance(graph, nir.NIRGraph) and isinstance(graph.metadata, dict) else {}
    if meta.get("format") != FORMAT:
        raise UserError(
            f"{where} is not a lasnn-deploy NIR graph (metadata format {meta.get('format')!r}, expected {FORMAT!r}), "
            f"so its time steps, encoding and dt are unknown; {EXPORT_HINT}"
        )
    try:
        settings = {
            "arch": str(meta["arch"]),
            "dt": float(meta["dt"]),
            "timesteps": int(meta["timesteps"]),
            "encoding": str(meta["encoding"]),
            "input_shape": tuple(int(s) for s in np.asarray(meta["input_shape"]).reshape(-1)),
            "num_classes": int(meta["num_classes"]),
            "leak": float(meta["leak"]),
            "output_form": str(meta["output_form"]),
        }
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(
            f"{where} has malformed lasnn-deploy metadata ({type(err).__name__}: {err}); {EXPORT_HINT}"
        ) from err
    if settings["output_form"] != OUTPUT_FORM or settings["encoding"] not in ("direct", "poisson"):
        raise UserError(
            f"{where}: unsupported output form {settings['output_form']!r} or encoding "
            f"{settings['encoding']!r}; {EXPORT_HINT}"
        )
    return settings


def _shortcut_names(graph: nir.NIRGraph) -> list[str]:
    """The shortcut nodes the metadata names (none in a feed-forward student's graph)."""
    meta = graph.metadata if isinstance(graph.metadata, dict) else {}
    return str(meta.get("shortcuts", "")).split()


def _chain(graph: nir.NIRGraph, where: Any) -> list[str]:
    """Node names from the Input to the Output, leaving out the shortcut branches."""
    branches = set(_shortcut_names(graph))
    successors: dict[str, list[str]] = {}
    for src, dst in graph.edges:
        if src not in branches and dst not in branches:
            successors.setdefault(src, []).append(dst)
    inputs = [n for n, node in graph.nodes.items() if isinstance(node, nir.Input)]
    if len(inputs) != 1:
        raise UserError(f"{where}: expected one Input node, found {len(inputs)}; {EXPORT_HINT}")
    chain = inputs
    while not isinstance(graph.nodes[chain[-1]], nir.Output):
        nxt = successors.get(chain[-1], [])
        if len(nxt) != 1 or nxt[0] in chain:
            raise UserError(
                f"{where}: node {chain[-1]!r} does not lead to exactly one next node; only a chain "
                "with the shortcut branches its metadata names is supported"
            )
        chain.append(nxt[0])
    return chain


def _layout(graph: nir.NIRGraph, where: Any) -> tuple[list[str], dict[str, str]]:
    """The chain (see :func:`_chain`) and, for each LIF node a shortcut feeds, that shortcut node.

    Each shortcut must be a Conv2d from a node of the chain into a later LIF of it, and the graph
    must hold nothing else: no other node or edge, so what runs is what a student computes.
    """
    chain = _chain(graph, where)
    position = {name: k for k, name in enumerate(chain)}
    into: dict[str, str] = {}
    for name in _shortcut_names(graph):
        ins = [src for src, dst in graph.edges if dst == name]
        outs = [dst for src, dst in graph.edges if src == name]
        ok = (
            isinstance(graph.nodes.get(name), nir.Conv2d)
            and len(ins) == len(outs) == 1
            and ins[0] in position
            and outs[0] in position
            and 0 < position[ins[0]] < position[outs[0]]
            and outs[0] not in into
            and isinstance(graph.nodes[outs[0]], nir.LIF)
        )
        if not ok:
            raise UserError(
                f"{where}: shortcut {name!r} must be a Conv2d node with one edge from the chain (after "
                f"its Input) into one later LIF node; {EXPORT_HINT}"
            )
        into[outs[0]] = name
    n_edges = len(chain) - 1 + 2 * len(into)  # the chain's links, and two per shortcut
    if len(graph.nodes) != len(chain) + len(into) or not len(graph.edges) == len(set(graph.edges)) == n_edges:
        raise UserError(f"{where}: the graph has nodes or edges outside its chain and shortcut branches; {EXPORT_HINT}")
    return chain, into


def _one_value(values: np.ndarray, what: str, where: str) -> float:
    unique = np.unique(np.asarray(values))
    if unique.size != 1:
        raise UserError(f"{where}: {what} differs between neurons; a student shares one value per layer")
    return unique[0].item()


def _pair(value: Any, what: str, where: str) -> int:
    pair = np.broadcast_to(np.asarray(value), (2,))
    if pair[0] != pair[1]:
        raise UserError(f"{where}: {what} {pair.tolist()} is not square; the student supports square ones only")
    return int(pair[0])


def _conv_spec(node: nir.Conv2d, where: str) -> Conv:
    """The student Conv a Conv2d node expresses (with a bias when any is nonzero); refuses what a
    student's Conv has not (dilation, groups, string padding)."""
    plain = not isinstance(node.padding, str) and np.all(np.asarray(node.dilation) == 1) and node.groups == 1
    if not plain:
        raise UserError(f"{where}: only convolutions with integer padding, no dilation and one group are supported")
    return Conv(
        node.weight.shape[1],
        node.weight.shape[0],
        _pair(node.weight.shape[2:], "kernel", where),
        _pair(node.stride, "stride", where),
        _pair(node.padding, "padding", where),
        bias=bool(np.any(node.bias)),
    )


def _shortcut_spec(node: nir.Conv2d, source: int, where: str) -> Shortcut:
    """The Shortcut a shortcut branch's Conv2d expresses: a 1x1 kernel without padding, the identity
    when channels and size do not change (a student has no weights there)."""
    conv = _conv_spec(node, where)
    if conv.bias:
        raise UserError(f"{where}: a shortcut adds no bias (its block's conv carries it); its Conv2d bias must be 0")
    if conv.kernel_size != 1 or conv.padding != 0:
        raise UserError(
            f"{where}: a shortcut must be a 1x1 convolution without padding, got "
            f"{conv.kernel_size}x{conv.kernel_size} with padding {conv.padding}"
        )
    spec = Shortcut(source, conv.in_channels, conv.out_channels, conv.stride)
    if not spec.projects and not np.array_equal(node.weight[:, :, 0, 0], np.eye(spec.out_channels)):
        raise UserError(
            f"{where}: a shortcut that keeps channels and size is the identity in a student, "
            "but its weights are not the identity matrix"
        )
    return spec


@dataclass
class _Reader:
    """What reading a graph's chain collects: layer specs with their weights and biases (by layer
    index), and per LIF node its threshold, float32 tau, leak and the layer it follows."""

    graph: nir.NIRGraph
    dt: float
    into: dict[str, str]  # LIF node -> the shortcut branch feeding it
    layers: list = field(default_factory=list)
    weights: dict[int, np.ndarray] = field(default_factory=dict)
    biases: dict[int, np.ndarray] = field(default_factory=dict)
    thresholds: list[float] = field(default_factory=list)
    leaks: list[float] = field(default_factory=list)
    taus: list[np.float32] = field(default_factory=list)
    lif_after: list[int] = field(default_factory=list)  # index of the layer each LIF node follows
    layer_of: dict[str, int] = field(default_factory=dict)  # chain node -> the layer whose output it holds


def _conv_from_nir(r: _Reader, name: str, node: nir.Conv2d, where: str) -> None:
    r.weights[len(r.layers)] = node.weight
    r.layers.append(_conv_spec(node, where))
    if r.layers[-1].bias:
        r.biases[len(r.layers) - 1] = node.bias


def _linear_from_nir(r: _Reader, name: str, node: nir.Linear | nir.Affine, where: str) -> None:
    r.weights[len(r.layers)] = node.weight
    r.layers.append(Linear(node.weight.shape[1], node.weight.shape[0], bias=isinstance(node, nir.Affine)))
    if isinstance(node, nir.Affine):
        r.biases[len(r.layers) - 1] = node.bias


def _avgpool_from_nir(r: _Reader, name: str, node: nir.AvgPool2d, where: str) -> None:
    k = _pair(node.kernel_size, "kernel", where)
    if _pair(node.stride, "stride", where) != k or _pair(node.padding, "padding", where) != 0:
        raise UserError(f"{where}: only average pools with stride = kernel and no padding are supported")
    r.layers.append(AvgPool(k))


def _flatten_from_nir(r: _Reader, name: str, node: nir.Flatten, where: str) -> None:
    r.layers.append(Flatten())


def _lif_from_nir(r: _Reader, name: str, node: nir.LIF, where: str) -> None:
    if name in r.into:  # the block's Shortcut comes between its last Conv and this LIF
        branch = r.into[name]
        source = r.layer_of[next(src for src, dst in r.graph.edges if dst == branch)]
        r.weights[len(r.layers)] = r.graph.nodes[branch].weight
        r.layers.append(_shortcut_spec(r.graph.nodes[branch], source, f"NIR node {branch!r}"))
    if np.any(node.v_leak != 0) or np.any(node.v_reset != 0):
        raise UserError(f"{where}: v_leak and v_reset must be 0 for a student LIF")
    gain = _one_value(node.r, "r", where) * r.dt / _one_value(node.tau, "tau", where)
    if not np.isclose(gain, 1.0, rtol=1e-5):
        raise UserError(f"{where}: input gain r*dt/tau = {gain} != 1 at dt = {r.dt}; not a student LIF")
    r.taus.append(np.float32(_one_value(node.tau, "tau", where)))
    r.leaks.append(float(importer_leak(np.array([r.taus[-1]]), r.dt)[0]))
    r.thresholds.append(_one_value(node.v_threshold, "v_threshold", where))
    r.lif_after.append(len(r.layers) - 1)


# NIR node type of a chain node -> how it reads back; the inverse of _TO_NIR (a Shortcut comes back
# with the LIF its branch feeds)
_FROM_NIR: dict[type, Callable[[_Reader, str, Any, str], None]] = {
    nir.Conv2d: _conv_from_nir,
    nir.Linear: _linear_from_nir,
    nir.Affine: _linear_from_nir,
    nir.AvgPool2d: _avgpool_from_nir,
    nir.Flatten: _flatten_from_nir,
    nir.LIF: _lif_from_nir,
}


def student_from_nir(source: str | Path | nir.NIRGraph) -> SpikingStudent:
    """Rebuild the student (config, weights, leak, thresholds) from a NIR file or graph.

    Pure reading of the nodes, the inverse of :func:`to_nir_graph` (Dropout layers are not in the
    graph, so they do not come back). The leak is the exact one in the metadata when the LIF nodes'
    ``tau`` is the one :func:`leak_to_tau` gives for it (a file we wrote; about a third of the leaks
    below 0.9 have no float32 ``tau`` that expresses them exactly), else what the nodes express
    (``importer_leak``).
    """
    if isinstance(source, nir.NIRGraph):
        graph, settings = source, _settings(source, "the NIR graph")
    else:
        graph, settings = read_graph(source)
    chain, into = _layout(graph, "the NIR graph")
    r = _Reader(graph, settings["dt"], into)
    for name in chain[1:-1]:
        node, where = graph.nodes[name], f"NIR node {name!r}"
        read = _FROM_NIR.get(type(node))
        if read is None:
            raise UserError(f"{where}: node type {type(node).__name__} is not part of a lasnn-deploy student")
        read(r, name, node, where)
        r.layer_of[name] = len(r.layers) - 1
    layers, weights, biases, thresholds, leaks, taus = r.layers, r.weights, r.biases, r.thresholds, r.leaks, r.taus
    lif_after, dt = r.lif_after, r.dt
    if len(set(leaks)) > 1:
        raise UserError(f"the NIR graph's LIF layers have different leaks {sorted(set(leaks))}; a student shares one")
    config = StudentConfig(
        settings["arch"],
        settings["input_shape"],
        settings["num_classes"],
        tuple(layers),
        timesteps=settings["timesteps"],
        encoding=settings["encoding"],
        reset="hard",
    )
    if lif_after != config.spiking_layers:
        raise UserError(
            f"the NIR graph has LIF nodes after layers {lif_after}, but a student has one after each "
            f"Conv/Linear except the last: {config.spiking_layers}"
        )
    exact = not taus or taus[0] == leak_to_tau(settings["leak"], dt)[0]
    student = SpikingStudent(config, leak=settings["leak"] if exact else leaks[0], thresholds=thresholds)
    with torch.no_grad():
        for i, weight in weights.items():
            module = student.body[i].proj if isinstance(layers[i], Shortcut) else student.body[i]
            if module is not None:  # None: an identity shortcut, checked to be one
                module.weight.copy_(torch.from_numpy(np.asarray(weight, dtype=np.float32)))
        for i, bias in biases.items():
            student.body[i].bias.copy_(torch.from_numpy(np.asarray(bias, dtype=np.float32)))
    return student.eval()


# -- running ---------------------------------------------------------------------------------
def _as_tensor(x: Any) -> torch.Tensor | None:
    """Images or spikes given as numpy arrays or tensors -> float32 CPU tensors (snnTorch runs on CPU)."""
    return None if x is None else torch.as_tensor(x, dtype=torch.float32, device="cpu")


def _input_steps(images: Any, input_spikes: Any, settings: dict[str, Any], where: Path) -> torch.Tensor:
    """The input of every step, ``[T, B, C, H, W]``, checked against the graph's metadata."""
    T, shape = settings["timesteps"], settings["input_shape"]
    spikes, x = _as_tensor(input_spikes), _as_tensor(images)
    if spikes is not None:
        if spikes.dim() != 5 or tuple(spikes.shape[2:]) != shape or spikes.shape[0] != T or spikes.shape[1] == 0:
            raise UserError(
                f"{where} was exported for input spikes [T={T}, B, {', '.join(map(str, shape))}], "
                f"got {list(spikes.shape)}; pass spikes with the exported time steps and input shape"
            )
        return spikes
    if x is None:
        raise UserError(f"{where}: give images [B, {', '.join(map(str, shape))}] or input spikes")
    if x.dim() != 4 or tuple(x.shape[1:]) != shape or x.shape[0] == 0:
        raise UserError(
            f"{where} was exported for images [B, {', '.join(map(str, shape))}], got {list(x.shape)}; "
            "use the data set the student was trained on"
        )
    return model_input(settings["encoding"], T, x).steps(T)  # Poisson: seed 0, as every runtime's fallback


def snntorch_module(graph: nir.NIRGraph) -> torch.nn.Module:
    """snnTorch 1.0's importer (``import_from_nir``) on ``graph``, its progress prints silenced."""
    try:
        from snntorch.import_nir import import_from_nir
    except ImportError as err:
        raise UserError(
            "running a NIR graph needs snnTorch 1.0 (`snntorch==1.0.0`); install it into this environment"
        ) from err
    with contextlib.redirect_stdout(io.StringIO()):
        return import_from_nir(graph)


def _run(path: Path, images: Any = None, input_spikes: Any = None) -> RunResult:
    """Run the file in snnTorch's NIR importer: one sample at a time, ``T`` steps, state reset between.

    Samples go in unbatched (``[C, H, W]``) because the importer builds NIR's batch-free
    ``Flatten(start_dim=0)`` literally, which would flatten a batch axis too. Spikes are read with
    forward hooks on the imported ``snn.Leaky`` modules. A LIF fed by a shortcut is named after
    the shortcut node (``shortcut<i>``, as the student names that layer); the importer's graph
    executor adds the LIF's two inputs before the neuron.
    """
    graph, settings = read_graph(path)
    if settings["dt"] != DT:
        raise UserError(f"{path} uses dt = {settings['dt']}, but snnTorch's importer assumes dt = {DT}; {EXPORT_HINT}")
    steps = _input_steps(images, input_spikes, settings, path)
    chain, into = _layout(graph, path)
    lif_names = [n for n in chain if isinstance(graph.nodes[n], nir.LIF)]
    layer_names = [into.get(n, chain[chain.index(n) - 1]) for n in lif_names]
    net = snntorch_module(graph).eval()
    from snntorch.utils import reset as reset_state  # importable once snntorch_module succeeded

    recorded: dict[str, list[torch.Tensor]] = {n: [] for n in lif_names}
    for n in lif_names:
        net.get_submodule(n).register_forward_hook(lambda m, i, out, n=n: recorded[n].append(out.detach()))
    T, B = steps.shape[:2]
    outputs = []  # per sample [T, K]
    with torch.no_grad():
        for b in range(B):
            reset_state(net)
            outputs.append(torch.stack([net(steps[t, b])[0] for t in range(T)]))
    logits = torch.stack(outputs, 1).mean(0)  # over [T, B, K], as the student averages (same float32 sums)
    spikes = [torch.stack(recorded[n]).unflatten(0, (B, T)).transpose(0, 1).numpy() for n in lif_names]
    return RunResult(logits=logits.numpy(), spikes=spikes, layer_names=layer_names)


class _Unbatched(torch.nn.Module):
    """``module`` on one image at a time, without a batch axis, as snnTorch's importer calls it.

    PyTorch's float32 CPU kernels pick their algorithm (and so their summation order) by input
    shape: a conv on a batch of ``T * B`` images and one on a single ``[C, H, W]`` image round
    most outputs differently in the last bits, and ``nn.Linear`` on one ``[F]`` vector is a
    matrix-vector product. Called per image, the reference's currents are the runtime's bit for bit.
    """

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module = module

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.module(x) for x in h])


Wrap = Callable[[torch.nn.Module], torch.nn.Module]


def _wrap_layer(module: torch.nn.Module, wrap: Wrap) -> torch.nn.Module:
    return wrap(module)


def _wrap_projection(module: torch.nn.Module, wrap: Wrap) -> torch.nn.Module:
    """A shortcut's 1x1 projection, if any; the residual add is a sum of two terms, order-free."""
    if module.proj is not None:
        module.proj = wrap(module.proj)
    return module


def _keep(module: torch.nn.Module, wrap: Wrap) -> torch.nn.Module:
    """No sums to order: a reshape or the identity."""
    return module


# layer-spec type -> its module with the synaptic sums wrapped (runtime_order)
_SYNAPTIC: dict[type, Callable[[torch.nn.Module, Wrap], torch.nn.Module]] = {
    Conv: _wrap_layer,
    Linear: _wrap_layer,
    AvgPool: _wrap_layer,
    Shortcut: _wrap_projection,
    Flatten: _keep,
    Dropout: _keep,
}


def runtime_order(student: SpikingStudent, wrap: Wrap = _Unbatched) -> SpikingStudent:
    """A CPU copy of ``student`` whose synaptic layers run image by image, as in :func:`run`.

    Conv, Linear, AvgPool and shortcut projections are wrapped in ``wrap`` (:class:`_Unbatched`, or
    the NIR runtimes' per-step batches); the LIF recurrence is element-wise and the residual add a sum
    of two terms, so neither depends on the batch. Same weights, same float32 arithmetic: only the
    order of each kernel's sums changes.
    """
    copy = deepcopy(student).cpu().eval()
    for i, layer in enumerate(copy.config.layers):
        copy.body[i] = table_entry(_SYNAPTIC, type(layer), "the NIR reference's order")(copy.body[i], wrap)
    return copy


def _reference(student: SpikingStudent, images: Any = None, input_spikes: Any = None) -> RunResult:
    """What the NIR graph promises: the float32 student on the same input, in snnTorch's order.

    The student (eval mode, ``run(exact=False)``) computed as :func:`runtime_order` does, one image
    and one step at a time: a float32 kernel's rounding depends on the batch it runs on, and one
    last-bit difference at a threshold tie flips a spike (docs/semantics.md, "NIR").
    """
    cfg = student.config
    trace = runtime_order(student).run(_as_tensor(images), input_spikes=_as_tensor(input_spikes), record=True)
    names = [cfg.layer_name(i) for i in cfg.spiking_layers]
    return RunResult(logits=trace.logits.numpy(), spikes=[s.numpy() for s in trace.spikes], layer_names=names)


class NirTarget(Target):
    """The student as a NIR graph (``nir.write``), run in a NIR importer; spike-exact in float32.

    Option ``runtime``: the importer (``exporters.nir_runtimes.RUNTIMES``) that runs the file and whose
    order of computation the reference follows; None: the one a flavoured file was written for, else snnTorch.
    """

    name, suffixes = "nir", (".nir",)
    options = {"runtime": None}
    in_batches = False  # the reference's order: one image at a time (the plain file in snnTorch); see for_file
    _check, _export = staticmethod(_check), staticmethod(_export)

    @classmethod
    def for_file(cls, path: str | Path, runtime: str | None = None) -> NirTarget:
        """The target with the runtime resolved for the file at ``path`` (its own, or the one asked for)."""
        from . import nir_runtimes

        graph = read_graph(path)[0]
        target = cls(runtime=nir_runtimes.runtime_of(graph, runtime, path))
        target.in_batches = nir_runtimes.batched(graph, target.settings["runtime"])
        return target

    def _run(self, path: Path, images: Any, input_spikes: Any) -> RunResult:
        from . import nir_runtimes

        return nir_runtimes.run(path, images, input_spikes, runtime=self.settings["runtime"])

    def _reference(self, student: SpikingStudent, images: Any, input_spikes: Any) -> RunResult:
        if self.settings["runtime"] is None:
            return _reference(student, images, input_spikes)
        from . import nir_runtimes

        return nir_runtimes.reference(student, images, input_spikes, in_batches=self.in_batches)


TARGET = NirTarget()
check, export, run, reference = TARGET.check, TARGET.export, TARGET.run, TARGET.reference
