"""Accuracy and spike counts of a student on a data split (the ``evaluate`` command)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .data import sample_count
from .errors import UserError
from .inputs import batches
from .loihi_quant import quantise, run_quantised
from .modes import eval_mode
from .student import SpikingStudent, check_images


@torch.no_grad()
def evaluate_student(
    student: SpikingStudent,
    dataset: Dataset,
    *,
    batch_size: int = 256,
    seed: int = 0,
    progress: bool = False,
    desc: str = "evaluate",
    loihi: bool = False,
) -> dict[str, float]:
    """``test_accuracy`` (fraction), ``spikes_per_sample`` (all LIF layers, all steps) and ``loss``
    (mean cross-entropy of the logits, which breaks ties between equally accurate students).

    ``loihi=True`` runs the student's Loihi-quantised mode (8-bit weights, integer neurons: what
    the Lava export computes) instead of the float student, to show what quantisation costs.

    Poisson spikes of sample ``i`` come from seed ``seed + i`` (as in ``validate`` and
    ``energy``), so a rerun, or another batch size, sees the same spikes.
    """
    if sample_count(dataset) == 0:
        raise UserError("no samples to evaluate: the data split is empty")
    check_images(student.config, dataset[0][0].unsqueeze(0))
    with eval_mode(student):
        correct, spikes, loss, total = 0, 0.0, 0.0, 0
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
        T = student.config.timesteps  # another T: student.with_config(timesteps=T), the one rule (inputs.py)
        net = quantise(student) if loihi else None
        for batch in tqdm(
            batches(student.config.encoding, T, loader, seed=seed), desc=desc, leave=False, disable=not progress
        ):
            given, y = batch.input, batch.labels
            if net is not None:
                trace = run_quantised(net, given.images, input_spikes=given.spikes)
            else:
                trace = student.run(given.images, input_spikes=given.spikes, record=True)
            correct += int((trace.logits.argmax(1) == y).sum())
            spikes += float(sum(s.sum() for s in trace.spikes))
            loss += float(F.cross_entropy(trace.logits.double(), y, reduction="sum"))
            total += len(y)
    return {
        "test_accuracy": correct / total,
        "spikes_per_sample": spikes / total,
        "loss": loss / total,
        "samples": total,
    }


@torch.no_grad()
def evaluate_ann(model: torch.nn.Module, dataset: Dataset, *, batch_size: int = 256) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of an ANN whose forward returns logits (or a tuple starting with them)."""
    with eval_mode(model):
        correct, loss, total = 0, 0.0, 0
        for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            out = model(x)
            logits = out[0] if isinstance(out, tuple) else out
            correct += int((logits.argmax(1) == y).sum())
            loss += float(F.cross_entropy(logits.double(), y, reduction="sum"))
            total += len(y)
    return correct / total, loss / total
