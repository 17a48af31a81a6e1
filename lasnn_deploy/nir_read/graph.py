"""The layout of a NIR graph a student can be: one chain from the Input to the Output, plus the
shortcut branches our metadata names (each a Conv2d from a node of the chain into a later LIF), and
the name of the student layer each LIF node follows."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import nir

from ..errors import UserError
from .format import EXPORT_HINT, metadata


def where(name: str) -> str:
    """How an error names a node."""
    return f"NIR node {name!r}"


def shortcut_names(graph: nir.NIRGraph) -> tuple[str, ...]:
    """The shortcut nodes our metadata names (none in a feed-forward student's graph or a foreign one)."""
    return tuple(str(metadata(graph).get("shortcuts", "")).split())


def chain(graph: nir.NIRGraph, branches: Collection[str] = ()) -> list[str]:
    """Node names from the one Input to the Output, the ``branches`` left out; refuses subgraphs,
    recurrence, any other branching and nodes off the chain."""
    for name, node in graph.nodes.items():
        if isinstance(node, nir.NIRGraph):
            raise UserError(
                f"{where(name)}: a subgraph (recurrent layers are exported as one) cannot map to a feed-forward student"
            )
    succ: dict[str, list[str]] = {}
    pred: dict[str, list[str]] = {}
    for src, dst in graph.edges:
        for end in (src, dst):
            if end not in graph.nodes:
                raise UserError(f"the NIR graph has an edge to or from {end!r}, which is not one of its nodes")
        if src not in branches and dst not in branches:
            succ.setdefault(src, []).append(dst)
            pred.setdefault(dst, []).append(src)
    for name, ins in pred.items():
        if len(set(ins)) > 1:
            raise UserError(
                f"{where(name)}: {len(set(ins))} incoming edges ({', '.join(sorted(set(ins)))}): "
                "recurrence, or branches other than the shortcuts our metadata names, cannot map to a student"
            )
    inputs = [n for n, node in graph.nodes.items() if isinstance(node, nir.Input)]
    if len(inputs) != 1:
        raise UserError(f"the NIR graph has {len(inputs)} Input nodes; a student has one input")
    names = inputs
    while not isinstance(graph.nodes[names[-1]], nir.Output):
        nxt = sorted(set(succ.get(names[-1], [])))
        if len(nxt) != 1:
            raise UserError(
                f"{where(names[-1])}: leads to {len(nxt)} nodes; a student is one chain from input to output"
            )
        if nxt[0] in names:
            raise UserError(
                f"{where(nxt[0])}: an edge back from {names[-1]!r} (recurrence) cannot map to a feed-forward student"
            )
        names.append(nxt[0])
    extra = sorted(set(graph.nodes) - set(names) - set(branches))
    if extra:
        raise UserError(f"{where(extra[0])}: not on the chain from input to output; a student is one chain")
    return names


def layout(graph: nir.NIRGraph, where: Any, shortcuts: Collection[str] = ()) -> tuple[list[str], dict[str, str]]:
    """The chain (see :func:`chain`) and, for each LIF node a shortcut feeds, that shortcut node.

    Each shortcut must be a Conv2d from a node of the chain into a later LIF of it, and the graph
    must hold nothing else: no other node or edge, so what runs is what a student computes.
    """
    names = chain(graph, shortcuts)
    position = {name: k for k, name in enumerate(names)}
    into: dict[str, str] = {}
    for name in shortcuts:
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
    n_edges = len(names) - 1 + 2 * len(into)  # the chain's links, and two per shortcut
    if len(graph.nodes) != len(names) + len(into) or not len(graph.edges) == len(set(graph.edges)) == n_edges:
        raise UserError(f"{where}: the graph has nodes or edges outside its chain and shortcut branches; {EXPORT_HINT}")
    return names, into


def lif_layers(graph: nir.NIRGraph, where: Any) -> dict[str, str]:
    """Each LIF node of the chain, in order -> the student layer it follows: the shortcut feeding it
    (``shortcut<i>``, as the student names that layer), else the node before it.

    The one place LIF nodes get their layer names: the exporters' traces, the NIR runtimes' spike
    records and the references all read them here.
    """
    names, into = layout(graph, where, shortcut_names(graph))
    return {n: into.get(n, names[k - 1]) for k, n in enumerate(names) if isinstance(graph.nodes[n], nir.LIF)}
