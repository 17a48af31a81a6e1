"""Run a NIR file in Spyx 1.0 (JAX). Runs only as its own process, in Spyx's environment:

    .venv-spyx/bin/python -I spyx_runner.py GRAPH.nir IN.npz OUT.npz

Spyx needs numpy >= 2 (through jax and flax) and Lava numpy < 2, so Spyx lives in .venv-spyx/
(``make spyx``) and nothing in the package imports this file: ``nir_runtimes.spyx`` writes the
graph and the input of every step (``steps``, ``[T, B, N]``) and reads back ``OUT.npz``: the
graph's output per step and, per LIF node, its spikes. ``spyx.nir.from_nir`` runs the graph as it
ships (``dt = 1``) with ``return_all_states=True``; a Spyx LIF emits ``heaviside(V - threshold)`` of
the potential it carried into the step, so its spikes are recomputed from the potentials it returns.
"""

from __future__ import annotations

import sys

import jax.numpy as jnp
import nir
import numpy as np
import spyx.nir


def main(graph_path: str, in_path: str, out_path: str) -> None:
    graph = nir.read(graph_path)
    steps = np.load(in_path)["steps"].astype(np.float32)
    model, (outputs, states) = spyx.nir.from_nir(graph, jnp.asarray(steps), dt=1, return_all_states=True)
    order = [name for name in _chain(graph) if not isinstance(graph.nodes[name], (nir.Input, nir.Output))]
    if len(order) != len(states):
        raise SystemExit(f"spyx built {len(states)} layers for the graph's {len(order)} nodes")
    result = {"outputs": np.asarray(outputs)}
    for name, state in zip(order, states, strict=True):
        node = graph.nodes[name]
        if isinstance(node, nir.LIF):
            v = np.asarray(state)  # potential after each step, [T, B, N]
            carried = np.concatenate([np.zeros_like(v[:1]), v[:-1]])
            result[f"spikes/{name}"] = (carried - np.asarray(node.v_threshold, np.float32) > 0).astype(np.float32)
    np.savez(out_path, **result)


def _chain(graph: nir.NIRGraph) -> list[str]:
    successors = dict(graph.edges)
    chain = [n for n, node in graph.nodes.items() if isinstance(node, nir.Input)]
    while chain[-1] in successors:
        chain.append(successors[chain[-1]])
    return chain


if __name__ == "__main__":
    main(*sys.argv[1:4])
