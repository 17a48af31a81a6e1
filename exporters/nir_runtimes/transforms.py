r"""Rewrites of a plain student NIR graph into an equivalent one a given importer runs as it ships.

Each function takes a graph written by ``exporters.nir.to_nir_graph`` and returns a new graph that
computes the same spikes under NIR's own semantics; ``nir.NIRGraph`` re-runs nir's type inference
and checks on it. Node names are kept, so layers are named alike in every flavour.

- :func:`sum_pools`: ``AvgPool2d(k)`` becomes ``SumPool2d(k)`` and the next Conv2d/Linear's
  weights take the ``1/k^2``: ``W avg(s) = (W / k^2) sum(s)``, bit for bit when ``k^2`` is a power of two.
- :func:`neurons`: every LIF re-expressed at another ``dt``. For forward Euler
  ``v[t] = (1 - dt/tau) v[t-1] + (r dt/tau) I[t]`` the leak ``lam`` needs ``tau = dt / (1 - lam)``,
  ``r = 1 / (1 - lam)``. ``fold_r`` writes ``r = 1`` and ``v_threshold = theta / r`` instead (the
  potential scaled by ``1/r``: same spikes, reset to 0 unchanged), for importers that ignore ``r``.
  ``steps`` writes ``tau`` in steps for an exact exponential decay ``exp(-1/tau) = lam``.
- :func:`dense`: every Conv2d, pool and Flatten as a dense ``Linear`` on the flattened (C, H, W)
  vector (its matrix is the layer applied to the unit vectors; a conv bias makes it an ``Affine``
  with the bias repeated over H x W), for importers whose convolution
  layout, pooling or per-neuron parameter checks break on 3-D layers.
- :func:`affine`: ``Linear`` as ``Affine`` with a zero bias, for importers that map only ``Affine``.
- :func:`batch_flatten`: ``Flatten(start_dim=0)`` as ``Flatten(start_dim=-3)``: the same node on NIR's
  batch-free ``(C, H, W)``, and one that ``nn.Flatten`` applies past a batch axis.
"""

from __future__ import annotations

import math
from typing import Any

import nir
import numpy as np
import torch

from ...errors import UserError
from ...nir_read import NO_LEAK_STEPS, chain, leak_to_tau


def _chain(graph: nir.NIRGraph) -> list[str]:
    """The node names from Input to Output of a feed-forward graph; refuses branches."""
    try:
        return chain(graph)
    except UserError as err:
        raise UserError(
            f"{err}; runtime flavours are written for feed-forward students only: export the plain file (no --nir-for)"
        ) from err


def _rebuild(
    graph: nir.NIRGraph, nodes: dict[str, nir.NIRNode], metadata: dict[str, Any] | None = None
) -> nir.NIRGraph:
    """A new chain graph of ``nodes`` (in order), type-checked by nir."""
    names = list(nodes)
    edges = list(zip(names[:-1], names[1:], strict=True))
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata={**graph.metadata, **(metadata or {})}, type_check=True)


def sum_pools(graph: nir.NIRGraph) -> nir.NIRGraph:
    """AvgPool2d as SumPool2d, the ``1/k^2`` folded into the next Conv2d or Linear."""
    nodes: dict[str, nir.NIRNode] = {}
    scale = None
    for name in _chain(graph):
        node = graph.nodes[name]
        if isinstance(node, nir.AvgPool2d):
            area = float(np.prod(np.asarray(node.kernel_size)))
            scale = (scale or 1.0) / area
            node = nir.SumPool2d(
                kernel_size=np.asarray(node.kernel_size),
                stride=np.asarray(node.stride),
                padding=np.asarray(node.padding),
            )
        elif isinstance(node, (nir.Conv2d, nir.Linear, nir.Affine)) and scale is not None:
            weight = (np.asarray(node.weight, dtype=np.float64) * scale).astype(np.float32)  # the bias stays
            if isinstance(node, nir.Conv2d):
                node = nir.Conv2d(
                    input_shape=node.input_shape,
                    weight=weight,
                    stride=node.stride,
                    padding=node.padding,
                    dilation=node.dilation,
                    groups=node.groups,
                    bias=node.bias,
                )
            elif isinstance(node, nir.Affine):
                node = nir.Affine(weight=weight, bias=node.bias)
            else:
                node = nir.Linear(weight=weight)
            scale = None
        elif isinstance(node, (nir.LIF, nir.Output)) and scale is not None:
            raise UserError(f"an average pool before node {name!r} has no Conv2d or Linear to fold 1/k^2 into")
        nodes[name] = node
    return _rebuild(graph, nodes)


def neurons(graph: nir.NIRGraph, dt: float, *, fold_r: bool = False, steps: bool = False) -> nir.NIRGraph:
    """Every LIF re-expressed at ``dt`` (see the module docstring); the metadata's ``dt`` follows."""
    leak = float(graph.metadata["leak"])
    if steps:  # exp(-dt/tau) = lam, tau counted in steps of dt
        tau = np.float32(NO_LEAK_STEPS if np.float32(leak) == 1 else -1.0 / math.log(leak)) * np.float32(dt)
        r = np.float32(1.0 / -math.expm1(-dt / float(tau))) if np.float32(leak) != 1 else np.float32(NO_LEAK_STEPS)
    else:
        tau, r = leak_to_tau(leak, dt)
    nodes: dict[str, nir.NIRNode] = {}
    for name in _chain(graph):
        node = graph.nodes[name]
        if isinstance(node, nir.LIF):
            theta = np.asarray(node.v_threshold, dtype=np.float32)
            shape = theta.shape
            node = nir.LIF(
                tau=np.full(shape, tau, dtype=np.float32),
                r=np.full(shape, 1.0 if fold_r else r, dtype=np.float32),
                v_leak=np.zeros(shape, np.float32),
                v_reset=np.zeros(shape, np.float32),
                v_threshold=(theta / np.float32(r)).astype(np.float32) if fold_r else theta,
            )
        nodes[name] = node
    return _rebuild(graph, nodes, {"dt": float(dt)})


def _matrix(op, shape: tuple[int, ...]) -> np.ndarray:
    """``[out, in]`` matrix of the linear map ``op`` on flattened ``shape`` inputs (float64, then float32)."""
    n = int(np.prod(shape))
    with torch.no_grad():
        out = op(torch.eye(n, dtype=torch.float64).reshape(n, *shape))
    return out.reshape(n, -1).T.contiguous().numpy().astype(np.float32)


def dense(graph: nir.NIRGraph) -> nir.NIRGraph:
    """Every layer on flattened vectors: Conv2d and pools as dense Linear nodes, Flatten dropped."""
    import torch.nn.functional as F

    chain = _chain(graph)
    shape = tuple(int(s) for s in np.asarray(graph.nodes[chain[0]].input_type["input"]))
    nodes: dict[str, nir.NIRNode] = {chain[0]: nir.Input(input_type={"input": np.array([int(np.prod(shape))])})}
    for name in chain[1:]:
        node = graph.nodes[name]
        bias = None
        if isinstance(node, nir.Conv2d):
            bias = np.asarray(node.bias, dtype=np.float32) if node.bias is not None and np.any(node.bias) else None
            w = torch.as_tensor(np.asarray(node.weight), dtype=torch.float64)
            stride, padding = tuple(np.atleast_1d(node.stride).tolist()), tuple(np.atleast_1d(node.padding).tolist())
            op = lambda x, w=w, s=stride, p=padding: F.conv2d(x, w, stride=s, padding=p)  # noqa: E731
        elif isinstance(node, (nir.AvgPool2d, nir.SumPool2d)):
            k, s = tuple(np.asarray(node.kernel_size).tolist()), tuple(np.asarray(node.stride).tolist())
            scale = 1.0 if isinstance(node, nir.SumPool2d) else 1.0 / float(np.prod(k))
            op = lambda x, k=k, s=s, c=scale: F.avg_pool2d(x, k, s) * (float(np.prod(k)) * c)  # noqa: E731
        elif isinstance(node, nir.Flatten):
            continue
        elif isinstance(node, nir.LIF):
            nodes[name] = nir.LIF(
                **{
                    key: np.asarray(getattr(node, key)).reshape(-1)
                    for key in ("tau", "r", "v_leak", "v_reset", "v_threshold")
                }
            )
            continue
        elif isinstance(node, (nir.Linear, nir.Affine)):
            nodes[name] = node
            shape = (node.weight.shape[0],)
            continue
        else:
            nodes[name] = node
            continue
        with torch.no_grad():
            shape_out = tuple(op(torch.zeros(1, *shape, dtype=torch.float64)).shape[1:])
        weight = _matrix(op, shape)
        nodes[name] = (
            nir.Linear(weight=weight)
            if bias is None
            else nir.Affine(weight=weight, bias=np.repeat(bias, int(np.prod(shape_out[1:]))))
        )  # (C, H, W) order
        shape = shape_out
    shapes = " ".join(
        f"{n}={','.join(map(str, np.asarray(graph.nodes[n].v_threshold).shape))}"
        for n in chain
        if isinstance(graph.nodes[n], nir.LIF)
    )
    return _rebuild(graph, nodes, {"input_layout": "flat (C, H, W) vector", "layer_shapes": shapes})


def layer_shapes(graph: nir.NIRGraph) -> dict[str, tuple[int, ...]]:
    """The (C, H, W) shape of each LIF node a :func:`dense` graph flattened (none for other graphs)."""
    text = str(graph.metadata.get("layer_shapes", ""))
    return {name: tuple(int(s) for s in shape.split(",")) for name, shape in (p.split("=") for p in text.split())}


def affine(graph: nir.NIRGraph) -> nir.NIRGraph:
    """Linear nodes as Affine with a zero bias."""
    nodes = {
        name: nir.Affine(weight=graph.nodes[name].weight, bias=np.zeros(graph.nodes[name].weight.shape[0], np.float32))
        if isinstance(graph.nodes[name], nir.Linear)
        else graph.nodes[name]
        for name in _chain(graph)
    }
    return _rebuild(graph, nodes)


def batch_flatten(graph: nir.NIRGraph) -> nir.NIRGraph:
    """Flatten dimensions counted from the end (negative), so a literal ``nn.Flatten`` keeps a batch axis."""
    nodes: dict[str, nir.NIRNode] = {}
    for name in _chain(graph):
        node = graph.nodes[name]
        if isinstance(node, nir.Flatten):
            ndim = len(np.asarray(node.input_type["input"]))
            start, end = int(node.start_dim), int(node.end_dim)
            node = nir.Flatten(
                input_type=node.input_type,
                start_dim=start - ndim if start >= 0 else start,
                end_dim=end - ndim if end >= 0 else end,
            )
        nodes[name] = node
    return _rebuild(graph, nodes)
