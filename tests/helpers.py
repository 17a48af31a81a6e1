"""Helpers shared by the tests: small students built in code (so no test needs data files) and a
CLI runner. Tests import them from here, never from conftest or from each other."""

from __future__ import annotations

import dataclasses
import struct
from pathlib import Path

import numpy as np
import torch

from lasnn_deploy.cli import main
from lasnn_deploy.inputs import ModelInput, model_input
from lasnn_deploy.models import build_student
from lasnn_deploy.student import AvgPool, Conv, Dropout, Flatten, Linear, SpikingStudent, StudentConfig


def repeat_steps(x: torch.Tensor, timesteps: int) -> torch.Tensor:
    """The direct encoding's input spikes ``[T, B, C, H, W]``: the analog image at every step."""
    return x.unsqueeze(0).expand(timesteps, *x.shape)


def make_student(
    encoding: str = "direct",
    reset: str = "hard",
    timesteps: int = 4,
    leak: float = 0.9,
    seed: int = 0,
    input_shape=(1, 8, 8),
    bias: bool = False,
) -> SpikingStudent:
    """conv-LIF-avgpool-conv-LIF-avgpool-flatten-linear-LIF-linear with weights that fire 5-40%.

    With ``bias`` every Conv and Linear has a bias of about a third of its layer's threshold.
    """
    c, h, w = input_shape
    layers = (
        Conv(c, 4, 3, 1, 1),
        AvgPool(2),
        Dropout(0.1),
        Conv(4, 6, 3, 1, 1),
        AvgPool(2),
        Flatten(),
        Linear(6 * (h // 4) * (w // 4), 12),
        Linear(12, 5),
    )
    cfg = StudentConfig("test", input_shape, 5, layers, timesteps=timesteps, encoding=encoding, reset=reset)
    torch.manual_seed(seed)
    student = SpikingStudent(with_bias(cfg) if bias else cfg, leak=leak, thresholds=[0.3, 0.2, 0.2])
    with torch.no_grad():
        for m in student.weighted_modules():
            m.weight.mul_(2.0 / 6**0.5)  # PyTorch-default scale: weights that fire 5-40%
        randomise_biases(student, 0.07)
    return student.eval()


def with_bias(config: StudentConfig) -> StudentConfig:
    """``config`` with a bias on every Conv and Linear."""
    layers = tuple(dataclasses.replace(l, bias=True) if isinstance(l, (Conv, Linear)) else l for l in config.layers)
    return config.replace(layers=layers)


@torch.no_grad()
def randomise_biases(student: SpikingStudent, scale: float) -> None:
    """Biases drawn uniformly from [-scale, scale] (seeded by the global generator), so they change spikes."""
    for m in student.weighted_modules():
        if m.bias is not None:
            m.bias.uniform_(-scale, scale)


def small_resnet(seed: int = 0, bias: bool = False) -> SpikingStudent:
    """resnet12 at width 1/8 on 8x8 images: an identity shortcut behind a pool, then projections."""
    torch.manual_seed(seed)
    config = build_student("resnet12", (1, 8, 8), 10, timesteps=6, width=0.125)
    student = SpikingStudent(with_bias(config) if bias else config)
    with torch.no_grad():
        for m in student.weighted_modules():
            m.weight.normal_(0.0, 0.5)
        randomise_biases(student, 0.3)
        student.thresholds.fill_(1.0)
        student.leak.fill_(0.9)
    return student.double().eval()


def train_flags(options: dict) -> list[str]:
    """``train``'s command-line flags for ``make_config`` options: ``--name value``, ``--flag`` / ``--no-flag``."""
    flags: list[str] = []
    for key, value in options.items():
        flag = key.replace("_", "-")
        flags += ([f"--{flag}" if value else f"--no-{flag}"]) if isinstance(value, bool) else [f"--{flag}", str(value)]
    return flags


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """``lasnn-deploy ARGV`` in this process: exit code, stdout, stderr."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit:
        code = exit.code
    out, err = capsys.readouterr()
    return code, out, err


def resnet_student(encoding: str = "direct", bias: bool = False) -> SpikingStudent:
    """``small_resnet`` in float32: an identity shortcut behind a pool, then three projections."""
    return small_resnet(bias=bias).float().with_config(encoding=encoding).eval()


def write_idx(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray) -> None:
    """MNIST's IDX files ``PREFIX-images-idx3-ubyte`` and ``PREFIX-labels-idx1-ubyte`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    n, h, w = images.shape
    (folder / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, h, w) + images.tobytes())
    (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, len(labels)) + labels.tobytes())


def model_in(model, images=None, spikes=None, seed: int = 0) -> ModelInput:
    """The ``ModelInput`` a student (or its config, or a file exported from it) runs on: the given
    spikes, else the images encoded as the student encodes them (Poisson with ``seed``)."""
    cfg = getattr(model, "config", model)
    return model_input(cfg.encoding, cfg.timesteps, images, spikes, seed=seed)


class CountingSet(torch.utils.data.Dataset):
    """A labelled data set that records how many of its samples have been loaded so far."""

    def __init__(self, images, labels):
        self.images, self.labels, self.loaded = images, labels, 0

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        self.loaded = max(self.loaded, i + 1)
        return self.images[i], int(self.labels[i])
