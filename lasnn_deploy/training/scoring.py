"""What the stages measure: accuracy, loss and spikes on a data set shared out over the processes,
and the guard that stops a stage ending near chance."""

from __future__ import annotations

import copy
import math

from torch import nn
from torch.utils.data import Subset

from .. import evaluation
from ..errors import UserError
from ..student import SpikingStudent
from . import distributed
from .datasets import SizedSet
from .loop import Score
from .run import Run


def _test_part(run: Run, dataset: SizedSet) -> Subset | None:
    """This process's contiguous share of ``dataset``, in whole evaluation batches (None: no share)."""
    size, count = run.config.eval_batch_size, len(dataset)
    mine = distributed.share(-(-count // size))
    return Subset(dataset, range(mine.start * size, min(count, mine.stop * size))) if mine else None


def evaluate_snn(run: Run, student: SpikingStudent, desc: str, dataset: SizedSet | None = None) -> dict[str, float]:
    """``evaluation.evaluate_student`` on ``dataset`` (the test set by default); the processes share it and sum
    their integer counts.

    Poisson spikes of a test sample are seeded by its index in the whole set, so a share gives the
    figures of one process evaluating everything.
    """
    model = student if run.device.type == "cpu" else copy.deepcopy(student).cpu()
    cfg, part, sums = run.config, _test_part(run, run.test_set if dataset is None else dataset), [0.0, 0.0, 0.0, 0.0]
    if part is not None:
        result = evaluation.evaluate_student(
            model,
            part,
            batch_size=cfg.eval_batch_size,
            seed=cfg.seed + part.indices[0],  # the share's first sample's index in the whole set
            progress=run.show,
            desc=desc,
        )
        n = result["samples"]
        sums = [round(result["test_accuracy"] * n), round(result["spikes_per_sample"] * n), result["loss"] * n, n]
    correct, spikes, loss, total = distributed.reduce_sums(sums)
    return {"test_accuracy": correct / total, "spikes_per_sample": spikes / total, "loss": loss / total}


def validation_score(run: Run, student: SpikingStudent) -> Score:
    result = evaluate_snn(run, student, "validation", run.val_set)
    return Score(result["test_accuracy"], result["loss"], result["spikes_per_sample"])


def evaluate_ann(run: Run, model: nn.Module, dataset: SizedSet | None = None) -> Score:
    """(accuracy, mean cross-entropy) on ``dataset`` (the test set by default), shared as ``evaluate_snn``."""
    model = model if run.device.type == "cpu" else copy.deepcopy(model).cpu()
    part, sums = _test_part(run, run.test_set if dataset is None else dataset), [0.0, 0.0, 0.0]
    if part is not None:
        accuracy, loss = evaluation.evaluate_ann(model, part, batch_size=run.config.eval_batch_size)
        sums = [round(accuracy * len(part)), loss * len(part), len(part)]
    correct, loss, total = distributed.reduce_sums(sums)
    return Score(correct / total, loss / total)


CHANCE_HINTS = {
    "teacher": "a lower --teacher-lr or more --teacher-steps",
    "ann": "--intermediate bn or rate (batch norm), a lower --ann-lr or more --ann-steps",
    "conversion": "--intermediate rate (an ANN that converts to the hard reset) or a larger --timesteps",
    "finetune": "a lower --student-lr, or --method conversion to keep the converted student",
}


def check_above_chance(stage: str, accuracy: float, samples: int, classes: int) -> None:
    """``UserError`` when ``stage``'s validation accuracy is not clearly above chance (docs/semantics.md).

    Near chance means within three binomial standard errors of ``1 / classes`` on ``samples`` images:
    a stage there has learned nothing the split can tell from guessing.
    """
    chance = 1.0 / classes
    if accuracy <= chance + 3.0 * math.sqrt(chance * (1.0 - chance) / samples):
        raise UserError(
            f"the {stage} stage ended near chance: validation accuracy {accuracy:.4f} against chance {chance:.4f} "
            f"on {samples} images; try {CHANCE_HINTS[stage]} (finished stages stay in the run folder and are reused)"
        )


def guard(run: Run, stage: str, accuracy: float) -> None:
    if run.config.chance_guard:
        check_above_chance(stage, accuracy, len(run.val_set), run.info.num_classes)
