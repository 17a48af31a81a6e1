"""``train(config) -> run folder``: the LaSNN stages, reuse of finished stages, resume, metrics.

Stages, each seeded on its own so that skipping one (reused or resumed) leaves the others as
they would have been:

1. teacher ANN (only for kd, hetero-kd, lasnn, lasnn-grad; none with ``--teacher ann``) -> ``RUN/teacher.safetensors``
2. intermediate ANN = the student's weights with ReLU -> ``RUN/ann.safetensors``
3. conversion by threshold balancing -> ``RUN/converted.safetensors`` (a student file)
4. fine-tuning by the method (none for ``conversion``) -> ``RUN/student.safetensors``

then ``RUN/metrics.json`` (docs/semantics.md, 'Files the commands write'). Every choice is made on a validation split carved from
the training images (``validation_fraction``, a draw seeded by the run's seed; its size and seed
are in metrics.json): the intermediate ANN's best epoch, the balancing percentile (when not given)
and the fine-tuned student's best epoch, with an early stop after ``patience`` epochs without a
better one. The test set is only measured, never used for a choice. ``RUN/config.json`` holds the options of the run and
``RUN/progress.json`` the results of finished stages 3 and 4; ``RUN/checkpoints/<stage>.pt`` the
last finished epoch of a stage in progress (removed once the stage's file is written).

A teacher or intermediate ANN file already in the run folder is reused when it was trained for
the same architecture and data set (copy them into a new folder to share them between methods),
and refused with a clear error otherwise. Without ``--resume`` every other earlier result in the
folder is discarded; with it, finished stages are loaded and the stage in progress continues
from its checkpoint, provided the options that shape the result are unchanged.

Launched by torchrun, every stage runs data-parallel over the processes (``distributed``): the
global batches, the threshold balancing and the test counts equal those of one process, and only
rank 0 writes into the run folder.

Here: ``train`` and the metrics. The ``Run`` (options, data, every write into the folder) and the
resume checks are in ``run``, the data sets and the validation split in ``datasets``, the stages in
``stages``, and what they measure (shared over the processes) and the chance guard in ``scoring``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from ..errors import UserError
from ..run_folder import METRICS_FILE, stage_seed
from ..student import STUDENT_FILE, SpikingStudent
from . import distributed
from .config import TrainConfig, make_config, preset_choices
from .intermediate import AnnTeacher
from .loop import EpochHook
from .methods import Method
from .run import Run, prepare, run_folder
from .stages import ann_stage, conversion_stage, finetune_stage, teacher_stage


def train(config: TrainConfig | None = None, /, *, on_epoch_end: EpochHook | None = None, **options: Any) -> Path:
    """Run the whole pipeline for ``config`` (or ``make_config(**options)``); return the run folder.

    ``on_epoch_end(stage, epoch)`` is called after each checkpointed epoch (for logging, or to
    stop a run early: anything it raises propagates, and ``resume=True`` continues the run).
    """
    if config is None:
        config = make_config(**options)
    elif options:
        config = dataclasses.replace(config, **options)
    run_folder(config)  # refused before any work when missing
    if config.threads:
        torch.set_num_threads(config.threads)
    with distributed.launched(_device(config.device)) as device:
        return _train(config, device, on_epoch_end)


def _train(config: TrainConfig, device: torch.device, on_epoch_end: EpochHook | None) -> Path:
    run = prepare(config, device, on_epoch_end)
    stages: dict[str, dict[str, Any]] = {}  # each stage's result, as it returns it
    teacher: nn.Module | None = None
    if config.trains_teacher:
        teacher, stages["teacher"] = teacher_stage(run)
    student, ann, stages["ann"] = ann_stage(run)
    if config.needs_teacher and not config.trains_teacher:
        teacher = AnnTeacher(ann)
    stages["conversion"] = conversion_stage(run, student, ann)
    if Method.REGISTRY[config.method].fine_tunes:
        stages["finetune"] = finetune_stage(run, student, teacher)
    else:
        run.save_student(student, STUDENT_FILE)
    metrics = _metrics(run, student, stages)
    run.write_text(METRICS_FILE, json.dumps(metrics, indent=2))
    if run.show:
        tqdm.write(
            f"{config.method}: test accuracy {metrics['test_accuracy']:.4f} "
            f"(ANN {metrics['ann_test_accuracy']:.4f}, converted {metrics['converted_test_accuracy']:.4f}), "
            f"{metrics['spikes_per_sample']:.0f} spikes/sample, {metrics['train_seconds']:.0f} s -> {run.folder}"
        )
    distributed.barrier()  # every process returns once the run folder is complete
    return run.folder


# -- setup ---------------------------------------------------------------------------------------
def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise UserError(f"unknown --device {name!r}: use auto, cpu, cuda or cuda:N") from err


# -- results -------------------------------------------------------------------------------------
def _metrics(run: Run, student: SpikingStudent, stages: dict[str, dict[str, Any]]) -> dict[str, Any]:
    cfg = run.config
    final = stages.get("finetune", stages["conversion"])
    return {
        "method": cfg.method,
        "dataset": cfg.dataset,
        "student": cfg.student,
        "teacher": cfg.teacher if cfg.needs_teacher else None,
        "timesteps": cfg.timesteps,
        "encoding": cfg.encoding,
        "reset": cfg.reset,
        "teacher_test_accuracy": (
            stages["teacher" if cfg.trains_teacher else "ann"]["test_accuracy"] if cfg.needs_teacher else None
        ),
        "ann_test_accuracy": stages["ann"]["test_accuracy"],
        "converted_test_accuracy": stages["conversion"]["test_accuracy"],
        "test_accuracy": final["test_accuracy"],
        "spikes_per_sample": final["spikes_per_sample"],
        "converted_spikes_per_sample": stages["conversion"]["spikes_per_sample"],
        "test_samples": len(run.test_set),
        "train_samples": len(run.train_set),
        "validation": {
            "samples": len(run.val_set),
            "fraction": cfg.validation_fraction,
            "seed": stage_seed(cfg.seed, "validation"),
        },
        "leak": float(student.leak.detach()),
        "thresholds": student.thresholds.detach().tolist(),
        "train_seconds": sum(s["seconds"] for s in stages.values()),
        "stages": stages,
        "preset_choices": preset_choices(cfg.preset, cfg.student),
        "config": cfg.to_dict(),
    }
