"""The per-type tables where exporters and counters map layers: complete, and loud about a gap."""

from __future__ import annotations

import dataclasses

import pytest
from helpers import make_student, small_resnet
from lasnn_deploy.exporters.nir import _TO_NIR, to_nir_graph
from lasnn_deploy.exporters.nir_runtimes.order import _SYNAPTIC
from lasnn_deploy.exporters.onnx import _TO_ONNX
from lasnn_deploy.hw_targets.counting import _FAN_IN, _MACS, _REACH

from lasnn_deploy.nir_read import NODES
from lasnn_deploy.student import (
    LAYER_TYPES,
    Conv,
    Flatten,
    Linear,
    Shortcut,
    SpikingStudent,
    StudentConfig,
    table_entry,
)
from lasnn_deploy.student.deployed import _DEPLOY
from lasnn_deploy.student.module import _ANN, _RUN
from lasnn_deploy.training.conversion import _BEFORE, _SYNAPSES
from lasnn_deploy.training.intermediate import _NORMS


@pytest.mark.parametrize(
    "table",
    [_TO_NIR, _TO_ONNX, _MACS, _SYNAPTIC, _RUN, _ANN, _NORMS, _DEPLOY],
    ids=["nir", "onnx", "macs", "nir_order", "run", "ann", "norms", "deployed"],
)
def test_every_layer_type_has_one_entry(table):
    assert set(table) == set(LAYER_TYPES.values())


@pytest.mark.parametrize("table", [_REACH, _FAN_IN], ids=["reach", "fan_in"])
def test_every_deployed_kind_has_one_entry(table):
    assert set(table) == {"conv", "linear"}


@pytest.mark.parametrize("table", [_BEFORE, _SYNAPSES], ids=["before", "synapses"])
def test_every_spiking_layer_type_has_one_entry(table):
    """Conversion maps the layer types a LIF can follow."""
    config = small_resnet().config
    assert {type(config.layers[i]) for i in config.spiking_layers} == {Conv, Shortcut}
    assert set(table) == {Conv, Linear, Shortcut}  # a hidden Linear is a LIF layer too


def test_an_unmapped_layer_type_is_named():
    @dataclasses.dataclass(frozen=True)
    class Spiral(Conv):
        pass

    with pytest.raises(TypeError, match="the NIR exporter has no entry for layer type Spiral"):
        table_entry(_TO_NIR, Spiral, "the NIR exporter")
    with pytest.raises(TypeError, match="no entry for layer type 'ring'"):
        table_entry(_REACH, "ring", "the synapse count")


def test_a_subclass_is_not_taken_for_its_parent():
    """Exact types: a new layer type derived from Conv gets its own entries, not Conv's silently."""

    @dataclasses.dataclass(frozen=True)
    class Spiral(Conv):
        pass

    config = StudentConfig("t", (1, 4, 4), 2, (Spiral(1, 2, 3, 1, 1), Flatten(), Linear(32, 2)))
    with pytest.raises(TypeError, match="Spiral"):
        to_nir_graph(SpikingStudent(config))


def test_the_nir_reader_has_an_entry_for_every_node_the_nir_exporter_writes():
    """``NODES`` reads back each node type ``_TO_NIR`` writes (Affine and Linear, a shortcut's Conv2d, ...)."""
    students = (small_resnet(bias=True), make_student(bias=True), make_student())
    written = {type(node) for s in students for node in to_nir_graph(s).nodes.values()}
    assert len(written) == 8 and written <= set(NODES), written - set(NODES)
