"""A NIR graph, ours or another library's, read into a student: the chain is walked once, each node
through its entry in the node table (``nodes.NODES``), under the exporter's convention."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import cast

import nir
import numpy as np
import torch

from ..errors import UserError
from ..neurons import Encoding
from ..student.config import StudentConfig
from ..student.layers import Shortcut
from ..student.module import SpikingStudent, check_parameters
from .format import (
    CONVENTIONS,
    EXPORT_HINT,
    FORMAT,
    HINT,
    Convention,
    convention_for,
    leak_to_tau,
    metadata,
    read_file,
    settings_of,
)
from .graph import layout, shortcut_names
from .nodes import Builder, read_node


@dataclass(frozen=True)
class Reading:
    """How to read a graph: the exporter's convention and what the nodes do not say (our files'
    metadata says all of it, including the exact leak and the shortcut branches)."""

    convention: Convention
    timesteps: int = 8
    encoding: Encoding | str = Encoding.DIRECT
    arch: str = "nir-import"
    input_shape: tuple[int, ...] | None = None
    leak: float | None = None  # the exact leak, when the LIF nodes' tau is the one leak_to_tau gives for it
    shortcuts: tuple[str, ...] = ()


def own_reading(graph: nir.NIRGraph, where: object) -> Reading:
    """Our file's reading: the lasnn-deploy convention at its dt, and the rest from its metadata."""
    settings = settings_of(graph, where)
    return Reading(
        replace(CONVENTIONS["lasnn-deploy"], dt=settings["dt"]),
        settings["timesteps"],
        settings["encoding"],
        settings["arch"],
        settings["input_shape"],
        settings["leak"],
        shortcut_names(graph),
    )


def student_from_graph(graph: nir.NIRGraph, reading: Reading) -> SpikingStudent:
    """The student that computes what ``graph`` means under ``reading`` (the package docstring)."""
    if not isinstance(graph, nir.NIRGraph):
        raise UserError(f"expected a NIR graph, got {type(graph).__name__}")
    dt = reading.convention.dt
    if not (dt > 0 and math.isfinite(dt)):
        raise UserError(f"dt = {dt} must be a positive number of seconds (steps for Sinabs); {HINT}")
    names, into = layout(graph, "the NIR graph", reading.shortcuts)
    b = Builder(graph, reading.convention, reading.input_shape, into)
    for name in names:
        read_node(b, name)
    config = StudentConfig(
        reading.arch,
        b.input_shape,
        int(b.weights[len(b.layers) - 1].shape[0]),
        tuple(b.layers),
        timesteps=reading.timesteps,
        encoding=cast(Encoding, reading.encoding),  # StudentConfig checks a string and converts it
        reset="hard",
    )
    lif_after = [i for i, _, _ in b.neurons]
    if lif_after != config.spiking_layers:
        missing = sorted(set(config.spiking_layers) - set(lif_after))
        raise UserError(
            f"the NIR graph has LIF nodes after layers {lif_after}, but a student has one after each Conv/Linear "
            f"except the last: {config.spiking_layers} (the node that becomes layer "
            f"{missing[0] if missing else '?'} has none)"
        )
    first = b.neurons[0][1] if b.neurons else None
    lam = float(np.float32(first.lam)) if first else 1.0
    if reading.leak is not None and (first is None or first.tau == leak_to_tau(reading.leak, dt)[0]):
        lam = reading.leak  # our exact leak (about a third of the leaks below 0.9 have no float32 tau for it)
    student = SpikingStudent(config, leak=lam, thresholds=[n.theta for _, n, _ in b.neurons])
    with torch.no_grad():
        for i, weight in b.weights.items():
            module = student.body[i]
            if isinstance(config.layers[i], Shortcut):
                if not isinstance(module.proj, torch.nn.Module):
                    continue  # an identity shortcut, checked to be one
                module = module.proj
            target = module.get_parameter("weight")
            if tuple(target.shape) != weight.shape:
                raise UserError(
                    f"layer {i} ({config.layers[i].type}): weights {list(weight.shape)} do not fit its "
                    f"input; expected {list(target.shape)}"
                )
            target.copy_(torch.from_numpy(weight.astype(np.float32)))
            if i in b.biases:
                module.get_parameter("bias").copy_(torch.from_numpy(b.biases[i].astype(np.float32)))
    check_parameters(student)
    return student.eval()


def student_from_nir(source: str | os.PathLike[str] | nir.NIRGraph) -> SpikingStudent:
    """Our own NIR file or graph back as the student it was written from (config, weights, leak,
    thresholds; Dropout layers are not in the graph, so they do not come back)."""
    if isinstance(source, nir.NIRGraph):
        return student_from_graph(source, own_reading(source, "the NIR graph"))
    graph = read_file(source, EXPORT_HINT)
    return student_from_graph(graph, own_reading(graph, source))


def student_from_any_nir(
    source: str | os.PathLike[str] | nir.NIRGraph,
    library: str | None = None,
    dt: float | None = None,
    timesteps: int = 8,
    encoding: Encoding | str = Encoding.DIRECT,
    input_shape: tuple[int, ...] | None = None,
) -> SpikingStudent:
    """A student from our own NIR file (exact round trip; unless ``library`` or ``dt`` says otherwise)
    or from another exporter's graph read under ``library``'s convention and/or ``dt``."""
    graph = source if isinstance(source, nir.NIRGraph) else read_file(source)
    if metadata(graph).get("format") == FORMAT and library is None and dt is None:
        return student_from_graph(graph, own_reading(graph, "the NIR graph"))
    arch = f"nir:{Path(source).stem}" if not isinstance(source, nir.NIRGraph) else "nir-import"
    convention = convention_for(graph, library, dt)
    return student_from_graph(graph, Reading(convention, timesteps, encoding, arch, input_shape))


def load_nir_student(path: str | os.PathLike[str]) -> SpikingStudent:
    """A ``.nir`` file given where a model goes: ours, or one whose metadata says its ``dt``; other
    libraries' files need their exporter named, which only ``lasnn-deploy import --from`` does."""
    graph = read_file(path)
    if "dt" not in metadata(graph):
        raise UserError(
            f"{path} does not say its time step (metadata key 'dt'): run `lasnn-deploy import {path} "
            "--from LIBRARY --out RUN` and pass RUN instead"
        )
    return student_from_any_nir(graph)
