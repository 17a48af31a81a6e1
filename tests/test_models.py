"""Student architectures (sizes, conversion rules, exportable pools) and teacher outputs."""

from __future__ import annotations

import pytest
import torch

from lasnn_deploy.errors import UserError
from lasnn_deploy.models import STUDENTS, TEACHERS, build_student, build_teacher
from lasnn_deploy.student import AvgPool, Conv, Dropout, Linear, Shortcut, SpikingStudent, deployed_layers

SHAPES = [(1, 28, 28), (3, 32, 32), (1, 16, 16)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", list(STUDENTS))
def test_every_student_fits_the_data_and_folds_its_pools(name, shape):
    cfg = build_student(name, shape, 7, timesteps=3, width=0.125)
    assert cfg.arch == name and cfg.input_shape == shape and cfg.timesteps == 3
    assert cfg.shapes()[-1] == (7,)
    student = SpikingStudent(cfg)
    assert all(m.bias is None for m in student.weighted_modules())
    # every pool divides its map, so the exports' exact folding accepts the student
    assert len(deployed_layers(student)) == sum(isinstance(l, (Conv, Linear)) for l in cfg.layers)
    for layer, before in zip(cfg.layers, [shape] + cfg.shapes()[:-1], strict=True):  # each layer and its input
        if isinstance(layer, AvgPool):
            assert before[1] % 2 == 0 and before[2] % 2 == 0
    assert student(torch.rand(2, *shape)).shape == (2, 7)


@pytest.mark.parametrize("name, depth", [("vgg5", 5), ("vgg7", 7), ("vgg9", 9), ("vgg16", 16), ("3conv2linear", 5)])
def test_vgg_depth_counts_weight_layers(name, depth):
    cfg = build_student(name, (3, 32, 32), 10)
    assert sum(isinstance(l, (Conv, Linear)) for l in cfg.layers) == depth
    assert (
        sum(isinstance(l, AvgPool) for l in cfg.layers)
        == {"vgg5": 2, "vgg7": 3, "vgg9": 4, "vgg16": 4, "3conv2linear": 3}[name]
    )
    # 0.2 after a conv that no pool follows, 0.5 after hidden Linears (Rathi et al.)
    expected = {0.5} if name == "3conv2linear" else {0.2, 0.5}  # every conv of 3conv2linear is pooled
    assert {l.p for l in cfg.layers if isinstance(l, Dropout)} == expected


def test_resnet12_has_a_three_conv_stem_four_blocks_and_twelve_weight_layers():
    cfg = build_student("resnet12", (3, 32, 32), 10)
    assert sum(isinstance(l, (Conv, Linear)) for l in cfg.layers) == 12
    assert [l.type for l in cfg.layers[:6]] == ["conv", "dropout", "conv", "dropout", "conv", "avgpool"]
    shortcuts = [l for l in cfg.layers if isinstance(l, Shortcut)]
    assert [(s.out_channels, s.stride, s.projects) for s in shortcuts] == [
        (64, 1, False),
        (128, 2, True),
        (256, 2, True),
        (512, 2, True),
    ]
    assert cfg.shapes()[-3] == (512, 2, 2) and len(cfg.spiking_layers) == 11


def test_tiny_student_layout_and_options():
    cfg = build_student("tiny", (1, 28, 28), 10)
    assert [l.type for l in cfg.layers] == ["conv", "avgpool", "conv", "avgpool", "flatten", "linear"]
    assert (
        cfg.layers[0].out_channels == 16
        and cfg.layers[2].out_channels == 32
        and cfg.layers[-1].in_features == 32 * 7 * 7
    )
    wide = build_student("vgg5", (1, 28, 28), 10, width=0.5, dropout=0.0)
    assert wide.layers[0].out_channels == 32 and not any(isinstance(l, Dropout) for l in wide.layers)
    # 28 -> 14 -> 7: the third pool of 3conv2linear would leave a remainder and is left out
    assert sum(isinstance(l, AvgPool) for l in build_student("3conv2linear", (1, 28, 28), 10).layers) == 2


def test_unknown_names_are_user_errors():
    with pytest.raises(UserError, match="resnet12"):
        build_student("resnet18", (3, 32, 32), 10)
    with pytest.raises(UserError, match="choose one of"):
        build_teacher("alexnet", (3, 32, 32), 10)


@pytest.mark.parametrize(
    "name", [n if n != "densenet121" else pytest.param(n, marks=pytest.mark.slow) for n in TEACHERS]
)
def test_teachers_return_logits_and_three_feature_maps(name):
    torch.manual_seed(0)
    teacher = build_teacher(name, (1, 16, 16), 5).eval()
    logits, feats = teacher(torch.rand(2, 1, 16, 16))
    assert logits.shape == (2, 5)
    assert len(feats) == 3 and all(f.dim() == 4 and f.shape[0] == 2 for f in feats)
    sizes = [f.shape[-1] for f in feats]
    assert sizes[0] == 16 and sizes == sorted(sizes, reverse=True)  # low, mid, high
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in teacher.modules())


@pytest.mark.slow
def test_densenet_teacher_has_a_small_image_stem():
    teacher = build_teacher("densenet121", (3, 32, 32), 10)
    conv0 = teacher.features.conv0
    assert conv0.kernel_size == (3, 3) and conv0.stride == (1, 1) and conv0.in_channels == 3
    assert isinstance(teacher.features.pool0, torch.nn.Identity)
