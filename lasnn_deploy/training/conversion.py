"""ANN-to-SNN conversion by spike-based threshold balancing (Sengupta et al. 2019; LaSNN stage 2).

Our reading, step by step:

1. The intermediate ANN's weights are kept as they are (no weight normalisation); the leak is
   set to 1, so every neuron is an integrate-and-fire neuron at conversion.
2. The spiking layers are balanced one at a time, first to last. For layer ``l`` the student SNN
   runs its ``T`` steps on a few fixed training batches, with layers ``1..l-1`` already holding
   their balanced thresholds, and the input current ``i_l[t] = W_l (x) s_{l-1}[t]`` of layer ``l``
   is recorded at every step (Sengupta et al.'s spike-based balancing: the statistic is taken on
   the spikes the converted earlier layers really emit, not on ANN activations).
3. ``theta_l`` is the maximum of that current over neurons, steps and samples, or, with a
   percentile ``p < 100``, the largest over the batches of each batch's p-th percentile (a high
   percentile ignores rare outliers and fires more at small ``T``; Rathi et al. 2020 balance the
   same way before hybrid fine-tuning).
4. A layer whose current never exceeds zero keeps a tiny positive threshold, as the SNN's
   thresholds must stay positive.
5. The output layer's weights (the non-spiking readout) are multiplied by ``Lambda_L``. A
   converted layer fires at about ``a_l / Lambda_l`` of its ANN activation, with ``Lambda_l =
   theta_1 ... theta_l`` along a chain, so without this the integrated logits are ``Lambda_L``
   times smaller than the ANN's. Scaling the readout changes no spike and no prediction (the
   converted accuracy is that of threshold balancing alone), but CE and KD fine-tuning then
   start from logits of the right scale (what that changed on MNIST: docs/results.md, "Numbers
   behind the code's reasons").
   This step is ours; Sengupta et al. read out spike counts, where the scale does not matter.

Residual blocks (our reading; Hu et al. 2018 normalise shortcuts for the same reason): the block's
LIF sums its second conv, which reads the first LIF's spikes (rate ``a / Lambda_1``), and the
shortcut, which reads the block input (rate ``a / Lambda_in``, ``Lambda_1 = Lambda_in theta_1``).
The ANN adds the two at one scale, so before that LIF is balanced the second conv's weights are
multiplied by ``Lambda_1 / Lambda_in``; both branches then arrive in units of ``1 / Lambda_in``, the
identity shortcut stays an identity, and the block's LIF gets ``Lambda = Lambda_in theta``.

Biases (a batch norm folded in, ``training.intermediate``): a layer reading spikes at rate
``a / Lambda_in`` gets ``W a / Lambda_in + b``, so before it is balanced its bias is divided by
``Lambda_in`` (the block input's for a block's conv); the current is then the ANN's ``W a + b`` in
units of ``1 / Lambda_in``, and balancing goes on as without bias. The output layer's bias stays: its
weights are scaled by ``Lambda_L`` instead.

A QCFS intermediate ANN (``clips`` given) needs no statistic: its clip ``lam_l`` is the largest
activation of layer ``l``, so ``theta_l = lam_l / Lambda_in`` and ``Lambda_l = lam_l``. Its shift
(a half-threshold starting charge) is added as ``theta_l / (2T)`` to the bias every step. A
hard-reset-rate ANN (``--intermediate rate``) converts the same way without the shift: its activation
already is the rate of a neuron that starts at zero.

Bias calibration (``calibrate_biases``; Li et al. 2021, "A free lunch from ANN", bias correction):
a deep hard-reset student fires later and less than its ANN, layer after layer (a layer cannot fire
before its inputs have), so after conversion each layer's bias, first to last, gets the mean
per-channel shortfall ``mean(a_ANN - Lambda_l r_SNN)`` of its rate (in units of ``1 / Lambda_in``),
measured on the balancing batches with the layers before it already corrected. The pipeline keeps
the calibrated student only when it scores better on the validation split.

Dropout is off (eval mode) while balancing, and Poisson inputs are drawn from a seed per batch.
Under several processes (torchrun) each takes some of the whole batches, and the per-batch
percentiles are reduced by an exact maximum over the processes, so the thresholds are those of one
process balancing on all the batches.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch

from ..modes import eval_mode
from ..student import Conv, Linear, Shortcut, SpikingStudent, StudentConfig, table_entry
from . import distributed

MIN_THRESHOLD = 1e-3
Batches = Sequence[torch.Tensor] | Mapping[int, torch.Tensor]  # a mapping gives each batch's index (its seed offset)


class _CurrentCaptured(Exception):
    """Raised from a forward hook to stop the run once the balanced layer's input is known."""

    def __init__(self, current: torch.Tensor):
        super().__init__()
        self.current = current


def percentile(values: torch.Tensor, p: float) -> float:
    """The ``p``-th percentile (nearest rank) of all entries; ``p = 100`` is the maximum."""
    flat = values.detach().flatten()
    if p >= 100:
        return float(flat.max())
    k = min(flat.numel(), max(1, math.ceil(p / 100 * flat.numel())))
    return float(flat.float().kthvalue(k).values)


@torch.no_grad()
def layer_input_current(student: SpikingStudent, layer: int, x: torch.Tensor, seed: int) -> torch.Tensor:
    """The current entering LIF layer ``layer`` (index among spiking layers) for images ``x``.

    Shape ``[T * B, ...]``, or ``[B, ...]`` when the layer sees the same current at every step
    (the first layer under direct encoding).
    """
    module = student.body[student.config.spiking_layers[layer]]

    def hook(_module, _inputs, output):
        raise _CurrentCaptured(output)

    handle = module.register_forward_hook(hook)
    try:
        student.run(x, seed=seed)
    except _CurrentCaptured as captured:
        return captured.current
    finally:
        handle.remove()
    raise RuntimeError("the balanced layer was never reached")  # unreachable for a valid student


@torch.no_grad()
def convert(
    student: SpikingStudent,
    batches: Batches,
    percentile_value: float = 100.0,
    seed: int = 0,
    clips: Sequence[float] | None = None,
    shift: bool = True,
) -> list[float]:
    """Threshold balancing (or learned ``clips``, with QCFS's ``shift`` or without), then the readout
    scaled by the last LIF layer's ``Lambda``."""
    thresholds = balance_thresholds(student, batches, percentile_value, seed, clips, shift)
    readout = student.weighted_modules()[-1]
    assert isinstance(readout, (torch.nn.Conv2d, torch.nn.Linear))  # what weighted_modules holds
    readout.weight.mul_(rate_scales(student.config, thresholds)[-1])
    return thresholds


@torch.no_grad()
def calibrate_biases(
    student: SpikingStudent, ann_activations: Sequence[dict[int, torch.Tensor]], batches: Batches, seed: int = 0
) -> list[float]:
    """Add to every LIF layer's bias its mean per-channel rate shortfall against the ANN (module docstring).

    ``ann_activations[b][k]`` is the ANN's activation of LIF layer ``k`` on batch ``b``; returns the
    mean absolute correction of each layer in ANN units (0 for a layer without a bias).
    """
    items = list(batches.items() if isinstance(batches, Mapping) else enumerate(batches))
    config = student.config
    scales = rate_scales(config, student.thresholds.tolist())
    corrections: list[float] = []
    with eval_mode(student):
        for k, i in enumerate(config.spiking_layers):
            synapses = student.body[i - 1 if config.layers[i].joins_previous else i]
            assert isinstance(
                synapses, (torch.nn.Conv2d, torch.nn.Linear)
            )  # a LIF layer's current, or a block's last conv
            bias = synapses.bias
            if bias is None:
                corrections.append(0.0)
                continue
            gap = torch.zeros_like(bias)
            for position, (b, x) in enumerate(items):  # each batch's per-channel mean shortfall, summed
                rate = student.run(x, seed=seed + b, record=True).spikes[k].mean(0) * scales[k]
                gap += (ann_activations[position][k] - rate).transpose(0, 1).flatten(1).mean(1)
            *sums, count = distributed.reduce_sums([*gap.tolist(), len(items)])  # every process's batches
            gap = torch.tensor(sums, dtype=bias.dtype, device=bias.device) / count
            before = table_entry(_BEFORE, type(config.layers[i]), "bias calibration")(config, k, i)
            bias.add_(gap / (scales[before] if before >= 0 else 1.0))
            corrections.append(float(gap.abs().mean()))
    return corrections


def _chain_before(config: StudentConfig, k: int, i: int) -> int:
    """A Conv or Linear LIF reads the LIF layer before it (``-1``: the input)."""
    return k - 1


def _block_before(config: StudentConfig, k: int, i: int) -> int:
    """A block's LIF (a ``Shortcut``) continues from the LIF layer that feeds the block."""
    block = config.layers[i]
    assert isinstance(block, Shortcut)  # _BEFORE's entry for Shortcut
    source = config.source_lif(block.source)
    assert source is not None  # a block adds spikes (StudentConfig checks it)
    return source


def _chain_synapses(student: SpikingStudent, k: int, i: int, scales: Sequence[float]) -> torch.nn.Module:
    """A Conv or Linear LIF: its own layer's synapses."""
    return student.body[i]


def _block_synapses(student: SpikingStudent, k: int, i: int, scales: Sequence[float]) -> torch.nn.Module:
    """A block's LIF: the block's last conv, rescaled so that both branches are in units of the block
    input's rate first (``Lambda_{k-1} / Lambda_before``)."""
    synapses = student.body[i - 1]
    assert isinstance(synapses, torch.nn.Conv2d)  # a block ends in a conv (StudentConfig checks it)
    synapses.weight.mul_(scales[k - 1] / scales[_block_before(student.config, k, i)])
    return synapses


# layer-spec type of a LIF layer -> the LIF layer whose rate its input is in (rate_scales, balancing)
_BEFORE: dict[type, Callable[[StudentConfig, int, int], int]] = {
    Conv: _chain_before,
    Linear: _chain_before,
    Shortcut: _block_before,
}
# layer-spec type of a LIF layer -> the module whose bias balancing rescales (and any rescaling first)
_SYNAPSES: dict[type, Callable[[SpikingStudent, int, int, Sequence[float]], torch.nn.Module]] = {
    Conv: _chain_synapses,
    Linear: _chain_synapses,
    Shortcut: _block_synapses,
}


def rate_scales(config: StudentConfig, thresholds: Sequence[float]) -> list[float]:
    """``Lambda`` of every LIF layer: a converted layer fires at ``a / Lambda`` of its ANN activation.

    Along a chain ``Lambda_k = Lambda_{k-1} theta_k``; a block's LIF (a ``Shortcut``) continues from
    the block input's ``Lambda`` (see the module docstring). Input: ``Lambda = 1``. With fewer
    thresholds than LIF layers (balancing in progress), the scales of the first ones.
    """
    scales: list[float] = []
    for k, i in enumerate(config.spiking_layers[: len(thresholds)]):
        before = table_entry(_BEFORE, type(config.layers[i]), "threshold balancing")(config, k, i)
        scales.append((scales[before] if before >= 0 else 1.0) * thresholds[k])
    return scales


@torch.no_grad()
def balance_thresholds(
    student: SpikingStudent,
    batches: Batches,
    percentile_value: float = 100.0,
    seed: int = 0,
    clips: Sequence[float] | None = None,
    shift: bool = True,
) -> list[float]:
    """Set the leak to 1 and every ``theta_l`` layer by layer (steps 1-4 of the module docstring).

    With ``clips`` (a QCFS or rate ANN's, one per LIF layer) the thresholds come from them, not from
    the batches; ``shift`` adds QCFS's half-threshold charge to the biases.

    Batch ``b`` draws its Poisson input from ``seed + b``; ``b`` is its position in a sequence, or
    its key in a mapping (this process's share of the batches under torchrun).
    """
    items = list(batches.items() if isinstance(batches, Mapping) else enumerate(batches))
    with eval_mode(student):
        student.leak.fill_(1.0)
        thresholds: list[float] = []
        config = student.config
        for layer, index in enumerate(config.spiking_layers):
            spec_type = type(config.layers[index])
            scales = rate_scales(config, thresholds)
            before = table_entry(_BEFORE, spec_type, "threshold balancing")(config, layer, index)
            synapses = table_entry(_SYNAPSES, spec_type, "threshold balancing")(student, layer, index, scales)
            if synapses.bias is not None:
                synapses.bias.div_(scales[before] if before >= 0 else 1.0)
            if clips is not None:
                theta = max(float(clips[layer]) / (scales[before] if before >= 0 else 1.0), MIN_THRESHOLD)
                if shift and synapses.bias is not None:
                    synapses.bias.add_(theta / (2 * config.timesteps))
                student.thresholds[layer] = theta
                thresholds.append(theta)
                continue
            peak = max(
                (percentile(layer_input_current(student, layer, x, seed + b), percentile_value) for b, x in items),
                default=-math.inf,
            )
            theta = max(distributed.all_max(peak), MIN_THRESHOLD)
            student.thresholds[layer] = theta
            thresholds.append(theta)
    return thresholds
