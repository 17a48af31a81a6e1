"""The network ``train_throughput.py`` times, built three ways with the same initial weights: ``ours``
(``SpikingStudent``), ``snntorch`` (``snntorch.Leaky`` neurons, a Python loop over time) and ``ann``
(the same layers with ReLU). The choices and why are in ``train_throughput.py``'s docstring.
"""

from __future__ import annotations

from collections.abc import Callable

import snntorch as snn
import torch
from torch import nn

from lasnn_deploy.models import build_student
from lasnn_deploy.neurons import GAMMA
from lasnn_deploy.student import AvgPool, Conv, Flatten, Linear, SpikingStudent, StudentConfig

INPUT_SHAPE = (3, 32, 32)
CLASSES = 10
LEAK = 0.95
THRESHOLD = 1.0
VARIANTS = ("ours", "snntorch", "ann")
WEIGHT_SCALE = 3.0  # on PyTorch's default init: every LIF layer fires (about 20, 17, 13, 9 % at T = 8)


class LinearSurrogate(torch.autograd.Function):
    """snnTorch ``spike_grad``: Heaviside of ``mem - theta``, the contract's linear surrogate backward.

    snnTorch passes the shifted potential ``mem - theta``; its gradient reaches the threshold
    through that subtraction, which gives ``ds/dtheta = -ds/du`` as our ``SpikeFn`` does.
    """

    @staticmethod
    def forward(ctx, mem_shift: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(mem_shift, theta)
        return (mem_shift > 0).to(mem_shift.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        mem_shift, theta = ctx.saved_tensors
        return grad * GAMMA * torch.clamp(1.0 - mem_shift.abs() / theta, min=0.0), None


class SpikeGrad:
    """A ``spike_grad`` callable that reads the threshold of the neuron it belongs to."""

    def __init__(self) -> None:
        self.neuron: nn.Module | None = None

    def __call__(self, mem_shift: torch.Tensor) -> torch.Tensor:
        return LinearSurrogate.apply(mem_shift, self.neuron.threshold.detach())


def snntorch_leaky(leak: float, theta: float) -> nn.Module:
    spike_grad = SpikeGrad()
    neuron = snn.Leaky(
        beta=leak,
        threshold=theta,
        spike_grad=spike_grad,
        learn_beta=True,
        learn_threshold=True,
        reset_mechanism="zero",
        reset_delay=False,
    )
    spike_grad.neuron = neuron
    return neuron


def torch_layers(config: StudentConfig, activation: Callable[[], nn.Module]) -> nn.ModuleList:
    """The student's layers as torch modules, ``activation()`` after every spiking layer."""
    layers = nn.ModuleList()
    for i, spec in enumerate(config.layers):
        if isinstance(spec, Conv):
            layers.append(
                nn.Conv2d(spec.in_channels, spec.out_channels, spec.kernel_size, spec.stride, spec.padding, bias=False)
            )
        elif isinstance(spec, Linear):
            layers.append(nn.Linear(spec.in_features, spec.out_features, bias=False))
        elif isinstance(spec, AvgPool):
            layers.append(nn.AvgPool2d(spec.kernel_size))
        elif isinstance(spec, Flatten):
            layers.append(nn.Flatten())
        if i in config.spiking_layers:
            layers.append(activation())
    return layers


def copy_weights(src: SpikingStudent, layers: nn.ModuleList) -> None:
    weighted = [m for m in layers if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        for a, b in zip(src.weighted_modules(), weighted, strict=True):
            b.weight.copy_(a.weight)


class SnnTorchNet(nn.Module):
    """The student written the snnTorch way: a Python loop over time, every layer per step."""

    def __init__(self, config: StudentConfig):
        super().__init__()
        self.timesteps = config.timesteps
        self.layers = torch_layers(config, lambda: snntorch_leaky(LEAK, THRESHOLD))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mems = {i: m.reset_mem() for i, m in enumerate(self.layers) if isinstance(m, snn.Leaky)}
        out = []
        for _ in range(self.timesteps):
            h = x
            for i, layer in enumerate(self.layers):
                if i in mems:
                    h, mems[i] = layer(h, mems[i])
                else:
                    h = layer(h)
            out.append(h)
        return torch.stack(out).mean(0)


class AnnNet(nn.Module):
    """The same layers with ReLU, on the ``T x B`` images at once (logits averaged over T)."""

    def __init__(self, config: StudentConfig):
        super().__init__()
        self.timesteps = config.timesteps
        self.layers = nn.Sequential(*torch_layers(config, lambda: nn.ReLU(inplace=True)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T, B = self.timesteps, x.shape[0]
        return self.layers(x.repeat(T, 1, 1, 1)).unflatten(0, (T, B)).mean(0)


def build_variants(config: StudentConfig, device: torch.device) -> dict[str, nn.Module]:
    torch.manual_seed(0)
    ours = SpikingStudent(config, leak=LEAK, thresholds=[THRESHOLD] * len(config.spiking_layers))
    with torch.no_grad():
        for module in ours.weighted_modules():
            module.weight.mul_(WEIGHT_SCALE)
    snntorch_net, ann = SnnTorchNet(config), AnnNet(config)
    copy_weights(ours, snntorch_net.layers)
    copy_weights(ours, ann.layers)
    return {"ours": ours.to(device).train(), "snntorch": snntorch_net.to(device).train(), "ann": ann.to(device).train()}


def vgg5(timesteps: int, width: float) -> StudentConfig:
    return build_student("vgg5", INPUT_SHAPE, CLASSES, timesteps=timesteps, dropout=0.0, width=width)
