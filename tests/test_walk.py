"""The one walk over a student's layers (``student.walk``): the steps every reading takes, and ``flow``."""

from __future__ import annotations

import pytest
import torch

from lasnn_deploy.errors import UserError
from lasnn_deploy.student import (
    LAYER_TYPES,
    AvgPool,
    Conv,
    Dropout,
    Flatten,
    Linear,
    Shortcut,
    SpikingStudent,
    StudentConfig,
    deployed_layers,
)
from lasnn_deploy.student.walk import flow, walk

# An identity shortcut that reads a LIF layer's spikes through a pool, then a projection shortcut
# whose source is the first block's output (a Shortcut's LIF), then a hidden Linear and the output.
LAYERS = (
    Conv(2, 4, 3, 1, 1),  # 0
    AvgPool(2),  # 1: read by 5
    Conv(4, 4, 3, 1, 1),  # 2
    Dropout(0.2),  # 3
    Conv(4, 4, 3, 1, 1),  # 4: closes the block, its LIF is 5's
    Shortcut(1, 4, 4, 1),  # 5: read by 8
    Conv(4, 8, 3, 2, 1),  # 6
    Conv(8, 8, 3, 1, 1),  # 7
    Shortcut(5, 4, 8, 2),  # 8
    Flatten(),  # 9
    Linear(32, 16),  # 10
    Linear(16, 3),  # 11: the output layer, no LIF
)
CONFIG = StudentConfig("walked", (2, 8, 8), 3, LAYERS, timesteps=3)

# (name, in_shape, out_shape, lif, saved) of every layer, by hand
EXPECTED = [
    ("conv0", (2, 8, 8), (4, 8, 8), 0, False),
    ("avgpool1", (4, 8, 8), (4, 4, 4), None, True),
    ("conv2", (4, 4, 4), (4, 4, 4), 1, False),
    ("dropout3", (4, 4, 4), (4, 4, 4), None, False),
    ("conv4", (4, 4, 4), (4, 4, 4), None, False),
    ("shortcut5", (4, 4, 4), (4, 4, 4), 2, True),
    ("conv6", (4, 4, 4), (8, 2, 2), 3, False),
    ("conv7", (8, 2, 2), (8, 2, 2), None, False),
    ("shortcut8", (8, 2, 2), (8, 2, 2), 4, False),
    ("flatten9", (8, 2, 2), (32,), None, False),
    ("linear10", (32,), (16,), 5, False),
    ("linear11", (16,), (3,), None, False),
]


def test_the_walk_gives_every_layer_its_shapes_lif_and_readers():
    steps = CONFIG.layer_steps
    assert [(s.name, s.in_shape, s.out_shape, s.lif, s.saved) for s in steps] == EXPECTED
    assert [s.index for s in steps] == list(range(len(LAYERS))) and [s.spec for s in steps] == list(LAYERS)
    assert CONFIG.spiking_layers == [0, 2, 5, 6, 8, 10]
    assert CONFIG.shortcut_sources == {1, 5}
    assert [CONFIG.source_lif(i) for i in (0, 1, 3, 5, 9)] == [0, 0, None, 2, None]


def test_the_walk_names_a_layer_that_does_not_fit():
    with pytest.raises(UserError, match=r"layer 1 \(linear\): linear expects \[9\] input, got \[8\]"):
        walk((2, 2, 2), (Flatten(), Linear(9, 3)))


def test_flow_carries_values_through_lifs_and_shortcuts():
    """Each layer once, in order; a LIF where the walk put one; a shortcut reads its source's output after its LIF."""

    def through(step, x, saved):
        read = "".join(f"+{saved[s]}" for s in step.spec.sources)
        return f"{step.name}({x}{read})"

    def fire(step, k, x):
        return f"lif{k}[{x}]"

    out = flow(CONFIG.layer_steps, "in", through, fire)
    pooled = "avgpool1(lif0[conv0(in)])"
    block1 = f"lif2[shortcut5(conv4(dropout3(lif1[conv2({pooled})]))+{pooled})]"
    block2 = f"lif4[shortcut8(conv7(lif3[conv6({block1})])+{block1})]"
    assert out == f"linear11(lif5[linear10(flatten9({block2}))])"


def test_every_reading_sees_the_walks_shapes():
    """The float run, its intermediate ANN and the exact run record one map per LIF step, of that step's shape."""
    torch.manual_seed(0)
    student = SpikingStudent(CONFIG).eval()
    x = torch.rand(2, *CONFIG.input_shape)
    lif_shapes = [s.out_shape for s in CONFIG.layer_steps if s.lif is not None]
    for exact in (False, True):
        trace = student.run(x, record=True, exact=exact)
        assert [tuple(s.shape) for s in trace.spikes] == [(3, 2, *shape) for shape in lif_shapes]
    logits, acts = student.forward_ann(x, record=True)
    assert [tuple(a.shape) for a in acts] == [(2, *shape) for shape in lif_shapes] and logits.shape == (2, 3)


def test_every_layer_type_states_its_roles():
    """What readings ask a layer instead of its type's name; a deployed layer or its counts carry the spec's."""
    roles = {
        t.type: (t.has_synapses, t.makes_current, t.joins_previous, t.is_pool, t.convolutional)
        for t in LAYER_TYPES.values()
    }
    assert roles == {
        "conv": (True, True, False, False, True),
        "linear": (True, True, False, False, False),
        "avgpool": (False, False, False, True, False),
        "flatten": (False, False, False, False, False),
        "dropout": (False, False, False, False, False),
        "shortcut": (False, True, True, False, False),
    }
    assert [l.sources for l in LAYERS] == [(1,) if i == 5 else (5,) if i == 8 else () for i in range(len(LAYERS))]
    deployed = deployed_layers(SpikingStudent(CONFIG))
    assert [(d.name, d.convolutional) for d in deployed] == [
        ("conv0", True),
        ("conv2", True),
        ("conv4", True),
        ("conv6", True),
        ("conv7", True),
        ("linear10", False),
        ("linear11", False),
    ]
