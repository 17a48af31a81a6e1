"""Teacher ANNs (LaSNN stage 1): ordinary networks with bias and batch norm.

Every teacher's ``forward(x)`` returns ``(logits, [low, mid, high])``: three feature maps
``[B, C, H, W]`` taken at the end of an early, a middle and the last stage, before that stage's
pooling, for the layer-wise attention distillation. Inputs are images in [0, 1]
with any channel count; the batch norm after the first convolution does the input normalisation,
so none is applied in front of it.

- ``small-cnn``: three conv-BN-ReLU stages (16, 32, 64 channels) with 2x2 max pooling between
  them and a Linear on the flattened last map; quick to train on a CPU.
- ``resnet20``: He et al.'s CIFAR ResNet (3 stages of 3 basic blocks, 16/32/64 channels); the
  projection shortcut (1x1 conv + BN) where the shape changes.
- ``vgg16-bn``: the CIFAR form of VGG16 with batch norm (13 convs, max pooling where the map
  divides, global average pooling, one Linear); features after stages 1, 3 and 5.
- ``densenet121``: torchvision's ``densenet121(weights=None)`` with a small-image stem (3x3
  stride-1 ``conv0``, no ``pool0``); features after dense blocks 1 and 2 and after ``norm5``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError

Features = list[torch.Tensor]


def _conv_bn(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def _pool_if_even(x: torch.Tensor) -> torch.Tensor:
    """2x2 max pooling where the map divides evenly, else the map unchanged."""
    return F.max_pool2d(x, 2) if x.shape[-1] % 2 == 0 and x.shape[-2] % 2 == 0 else x


class SmallCNN(nn.Module):
    def __init__(self, input_shape: Sequence[int], num_classes: int, widths: Sequence[int] = (16, 32, 64)):
        super().__init__()
        stages, cin = [], input_shape[0]
        h, w = input_shape[1:]
        for i, cout in enumerate(widths):
            stages.append(nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)))
            if i and h % 2 == 0 and w % 2 == 0:
                h, w = h // 2, w // 2
            cin = cout
        self.stages = nn.ModuleList(stages)
        self.fc = nn.Linear(cin * h * w, num_classes)  # flattened, not pooled: learns fast on small images

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Features]:
        feats = []
        for i, stage in enumerate(self.stages):
            x = stage(_pool_if_even(x) if i else x)
            feats.append(x)
        return self.fc(torch.flatten(x, 1)), feats


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            *_conv_bn(cin, cout, stride), nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        )
        self.shortcut = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


class ResNet20(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, blocks: int = 3, widths: Sequence[int] = (16, 32, 64)):
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn(in_channels, widths[0]))
        stages, cin = [], widths[0]
        for i, cout in enumerate(widths):
            layers = [BasicBlock(cin if j == 0 else cout, cout, 2 if (i and j == 0) else 1) for j in range(blocks)]
            stages.append(nn.Sequential(*layers))
            cin = cout
        self.stages = nn.ModuleList(stages)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Features]:
        x = self.stem(x)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)), feats


VGG16_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


class VGG16BN(nn.Module):
    FEATURE_STAGES = (0, 2, 4)

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        stages, cin = [], in_channels
        for widths in VGG16_STAGES:
            layers: list[nn.Module] = []
            for cout in widths:
                layers += [nn.Conv2d(cin, cout, 3, 1, 1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
                cin = cout
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Features]:
        feats = []
        for i, stage in enumerate(self.stages):
            x = stage(_pool_if_even(x) if i else x)
            if i in self.FEATURE_STAGES:
                feats.append(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)), feats


class DenseNet121(nn.Module):
    FEATURE_BLOCKS = ("denseblock1", "denseblock2")

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        from torchvision.models import densenet121

        net = densenet121(weights=None, num_classes=num_classes)
        net.features.conv0 = nn.Conv2d(in_channels, net.features.conv0.out_channels, 3, 1, 1, bias=False)
        net.features.pool0 = nn.Identity()
        self.features = net.features
        self.classifier = net.classifier

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Features]:
        feats = []
        for name, module in self.features.named_children():
            x = module(x)
            if name in self.FEATURE_BLOCKS:
                feats.append(x)
        x = F.relu(x)
        feats.append(x)
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)), feats


TeacherBuilder = Callable[[Sequence[int], int], nn.Module]

TEACHERS: dict[str, TeacherBuilder] = {
    "small-cnn": lambda shape, k: SmallCNN(shape, k),
    "resnet20": lambda shape, k: ResNet20(shape[0], k),
    "vgg16-bn": lambda shape, k: VGG16BN(shape[0], k),
    "densenet121": lambda shape, k: DenseNet121(shape[0], k),
}


def build_teacher(name: str, input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """The teacher ``name`` for ``[C, H, W]`` inputs and ``num_classes``; a clear error if unknown."""
    if name not in TEACHERS:
        raise UserError(f"unknown teacher {name!r}: choose one of {', '.join(TEACHERS)}")
    return TEACHERS[name](tuple(input_shape), num_classes)
