"""Reading lasnn-deploy's own NIR files: the format's constants, the leak <-> (tau, r) mapping, the
graph's run settings (metadata), its layout (the chain and the shortcut branches) and the student it
holds (the inverse of ``exporters/nir.py``'s writer; docs/semantics.md, 'NIR').

It sits below the student file (``load_student`` reads a ``.nir`` through it) and below the export
targets and NIR runtimes, which read the files they run through it: it imports only the student's
layer, config and module modules.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nir
import numpy as np
import torch

from .errors import UserError
from .neurons import Encoding
from .student.config import StudentConfig
from .student.layers import AvgPool, Conv, Flatten, Linear, Shortcut
from .student.module import SpikingStudent

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
    return graph, settings_of(graph, path)


def settings_of(graph: nir.NIRGraph, where: Any) -> dict[str, Any]:
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
    if settings["output_form"] != OUTPUT_FORM or settings["encoding"] not in tuple(Encoding):
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


def layout(graph: nir.NIRGraph, where: Any) -> tuple[list[str], dict[str, str]]:
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


def lif_layers(graph: nir.NIRGraph, where: Any) -> dict[str, str]:
    """Each LIF node of the chain, in order -> the student layer it follows: the shortcut feeding it
    (``shortcut<i>``, as the student names that layer), else the node before it."""
    chain, into = layout(graph, where)
    return {n: into.get(n, chain[k - 1]) for k, n in enumerate(chain) if isinstance(graph.nodes[n], nir.LIF)}


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
        graph, settings = source, settings_of(source, "the NIR graph")
    else:
        graph, settings = read_graph(source)
    chain, into = layout(graph, "the NIR graph")
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
