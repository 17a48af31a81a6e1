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
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, Subset, TensorDataset
from tqdm import tqdm

from ..atomic import write_text
from ..data import DataInfo, data_info, first_samples, load_split
from ..errors import UserError
from ..evaluation import evaluate_ann, evaluate_student
from ..models import build_student, build_teacher
from ..run_folder import ANN_FILE, CONFIG_FILE, CONVERTED_FILE, METRICS_FILE, PROGRESS_FILE, TEACHER_FILE, stage_seed
from ..student import STUDENT_FILE, SpikingStudent, load_student, save_student
from . import distributed
from .checkpoint import CHECKPOINT_DIR, checkpoint_path, load_matching_weights, save_weights
from .config import BALANCE_CANDIDATES, TrainConfig, config_to_json, make_config, preset_choices
from .conversion import calibrate_biases, convert
from .intermediate import AnnTeacher, IntermediateAnn, fold_batch_norm
from .loop import EpochHook, FitPlan, FitResult, Score, Selection, batches, fit, make_optimizer, make_scheduler
from .methods import Method
from .objectives import FineTune, TeacherStep

TEACHER_FORMAT, ANN_FORMAT = "lasnn-deploy-teacher/1", "lasnn-deploy-ann/2"  # ann/2: the IntermediateAnn's state
# Options that change nothing a finished stage computed; they may differ on --resume.
RESUME_FREE = {"resume", "progress", "threads", "device", "eval_batch_size", "out", "chance_guard"}
IN_MEMORY_LIMIT = 2**31  # bytes: smaller image folders are decoded once and kept as tensors


@dataclass
class Run:
    config: TrainConfig
    folder: Path
    device: torch.device
    train_set: Dataset
    val_set: Dataset
    test_set: TensorDataset
    info: DataInfo
    on_epoch_end: EpochHook | None
    progress: dict[str, Any]

    @property
    def show(self) -> bool:
        return self.config.progress and distributed.is_main_process()

    def seed(self, stage: str) -> int:
        return stage_seed(self.config.seed, stage)

    # -- the run folder: every write happens here, on the main process only ---------------------
    def write_progress(self) -> None:
        self.write_text(PROGRESS_FILE, json.dumps(self.progress, indent=2))

    def start(self) -> None:
        """A fresh run drops the files of an earlier one (a resumed run keeps them); both write the config."""
        if distributed.is_main_process():
            if not self.config.resume:
                shutil.rmtree(self.folder / CHECKPOINT_DIR, ignore_errors=True)
                for stale in (PROGRESS_FILE, METRICS_FILE, CONVERTED_FILE, STUDENT_FILE):
                    (self.folder / stale).unlink(missing_ok=True)
            write_text(self.folder / CONFIG_FILE, config_to_json(self.config))

    def write_text(self, name: str, text: str) -> None:
        if distributed.is_main_process():
            write_text(self.folder / name, text)

    def save_student(self, student: SpikingStudent, name: str) -> None:
        if distributed.is_main_process():
            save_student(student, self.folder / name)

    def save_weights(self, name: str, module: nn.Module, meta: dict[str, Any]) -> None:
        if distributed.is_main_process():
            save_weights(self.folder / name, module, meta)

    def finish_stage(self, stage: str) -> None:
        """Drop the stage's checkpoint once its result file is written (and the folder if empty)."""
        if distributed.is_main_process():
            path = checkpoint_path(self.folder, stage)
            path.unlink(missing_ok=True)
            if path.parent.is_dir() and not any(path.parent.iterdir()):
                path.parent.rmdir()


def train(config: TrainConfig | None = None, /, *, on_epoch_end: EpochHook | None = None, **options: Any) -> Path:
    """Run the whole pipeline for ``config`` (or ``make_config(**options)``); return the run folder.

    ``on_epoch_end(stage, epoch)`` is called after each checkpointed epoch (for logging, or to
    stop a run early: anything it raises propagates, and ``resume=True`` continues the run).
    """
    if config is None:
        config = make_config(**options)
    elif options:
        config = dataclasses.replace(config, **options)
    if config.out is None:
        raise UserError("no run folder: pass --out (out= from Python)")
    if config.threads:
        torch.set_num_threads(config.threads)
    with distributed.launched(_device(config.device)) as device:
        return _train(config, device, on_epoch_end)


def _train(config: TrainConfig, device: torch.device, on_epoch_end: EpochHook | None) -> Path:
    run = _prepare(config, device, on_epoch_end)
    stages: dict[str, dict[str, Any]] = {}  # each stage's result, as it returns it
    teacher: nn.Module | None = None
    if config.trains_teacher:
        teacher, stages["teacher"] = _teacher_stage(run)
    student, ann, stages["ann"] = _ann_stage(run)
    if config.needs_teacher and not config.trains_teacher:
        teacher = AnnTeacher(ann)
    stages["conversion"] = _conversion_stage(run, student, ann)
    if Method.REGISTRY[config.method].fine_tunes:
        stages["finetune"] = _finetune_stage(run, student, teacher)
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


def _in_memory(dataset: Dataset, limit: int | None) -> Dataset:
    """The first ``limit`` samples as tensors; a small image folder is decoded once, not per epoch."""
    if isinstance(dataset, TensorDataset) and limit is None:
        return dataset
    count = len(dataset) if limit is None else min(limit, len(dataset))
    image_bytes = dataset[0][0].numel() * 4
    if not isinstance(dataset, TensorDataset) and count * image_bytes > IN_MEMORY_LIMIT:
        return dataset if limit is None else torch.utils.data.Subset(dataset, range(count))
    return TensorDataset(*first_samples(dataset, count))


def validation_indices(count: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(training, validation) indices of ``count`` samples: ``ceil(fraction * count)`` drawn for validation.

    A seeded permutation, so the split depends only on the run's seed and the data; both lists
    keep the data's order. At least one sample stays on each side.
    """
    if count < 2:
        raise UserError(f"{count} training image(s) cannot be split into training and validation; use more data")
    size = min(count - 1, max(1, math.ceil(fraction * count)))
    chosen = torch.randperm(count, generator=torch.Generator().manual_seed(seed))[:size]
    held = torch.zeros(count, dtype=torch.bool)
    held[chosen] = True
    return torch.nonzero(~held).flatten().tolist(), torch.nonzero(held).flatten().tolist()


def split_validation(dataset: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """The training images without the validation split, and the validation split (tensors when in memory)."""
    train_idx, val_idx = validation_indices(len(dataset), fraction, seed)
    if isinstance(dataset, TensorDataset):
        return (
            TensorDataset(*(t[train_idx] for t in dataset.tensors)),
            _in_default_dtype(TensorDataset(*(t[val_idx] for t in dataset.tensors))),
        )
    return Subset(dataset, train_idx), Subset(dataset, val_idx)


def _in_default_dtype(dataset: TensorDataset) -> TensorDataset:
    """Images in torch's default float dtype, the one the models are built in (see ``loop.batches``)."""
    images, *rest = dataset.tensors
    return TensorDataset(images.to(torch.get_default_dtype()), *rest)


def _read_json_mapping(path: Path) -> dict[str, Any]:
    """A run folder's JSON file as a dict; one clear error when it is unreadable or not a mapping."""
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path} is unreadable ({err}); train into a new --out instead of resuming") from err
    if not isinstance(value, dict):
        raise UserError(f"{path} is not a JSON mapping; train into a new --out instead of resuming")
    return value


def _prepare(config: TrainConfig, device: torch.device, on_epoch_end: EpochHook | None) -> Run:
    distributed.check_batch_size(config.batch_size)
    folder = Path(config.out).expanduser()
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--out {folder} is a file; give a folder for the run")
    progress: dict[str, Any] = {}
    if config.resume:
        stored = folder / CONFIG_FILE
        if not stored.is_file():
            raise UserError(f"nothing to resume in {folder}: it holds no {CONFIG_FILE}; run without --resume first")
        before = _read_json_mapping(stored)
        now = config.to_dict()
        differ = sorted(k for k in now if k not in RESUME_FREE and before.get(k) != now[k])
        if differ:
            raise UserError(
                f"--resume with options that differ from the run in {folder}: {', '.join(differ)}; "
                "use the same options, or train into a new --out"
            )
        if (folder / PROGRESS_FILE).is_file():
            progress = _read_json_mapping(folder / PROGRESS_FILE)
    full_train = load_split(config.dataset, config.data_dir, "train")
    test_set = load_split(config.dataset, config.data_dir, "test")
    info = data_info(full_train)
    seed = stage_seed(config.seed, "validation")
    train_set, val_set = split_validation(
        _in_memory(full_train, config.train_samples), config.validation_fraction, seed
    )
    run = Run(
        config=config,
        folder=folder,
        device=device,
        train_set=train_set,
        val_set=val_set,
        test_set=_in_default_dtype(TensorDataset(*first_samples(test_set, config.test_samples))),
        info=info,
        on_epoch_end=on_epoch_end,
        progress=progress,
    )
    run.start()
    distributed.barrier()
    return run


def _steps_per_epoch(run: Run, epoch_samples: int | None = None) -> int:
    return -(-min(len(run.train_set), epoch_samples or len(run.train_set)) // run.config.batch_size)


def stage_epochs(run: Run, epochs: int, steps: int | None, epoch_samples: int | None = None) -> int:
    """``epochs``, or the whole epochs (at least one) that make about ``steps`` optimiser steps when given."""
    if steps is None:
        return epochs
    return max(1, round(steps / _steps_per_epoch(run, epoch_samples)))


def _fit(
    run: Run, name: str, module: nn.Module, params, optimizer: str, lr: float, weight_decay: float, epochs: int, **kw
) -> FitResult:
    cfg = run.config
    opt = make_optimizer(params, optimizer, lr, weight_decay, cfg.momentum)
    plan = FitPlan(
        name,
        run.train_set,
        epochs,
        cfg.batch_size,
        run.seed(name),
        checkpoint_path(run.folder, name),
        run.device,
        resume=cfg.resume,
        augment=cfg.augment,
        progress=cfg.progress,
        on_epoch_end=run.on_epoch_end,
        **kw,
    )
    return fit(module, opt, make_scheduler(opt, cfg.schedule, epochs), plan)


def _test_part(run: Run, dataset: Dataset) -> Subset | None:
    """This process's contiguous share of ``dataset``, in whole evaluation batches (None: no share)."""
    size, count = run.config.eval_batch_size, len(dataset)
    mine = distributed.share(-(-count // size))
    return Subset(dataset, range(mine.start * size, min(count, mine.stop * size))) if mine else None


def _evaluate_snn(run: Run, student: SpikingStudent, desc: str, dataset: Dataset | None = None) -> dict[str, float]:
    """``evaluate_student`` on ``dataset`` (the test set by default); the processes share it and sum
    their integer counts.

    Poisson spikes of a test sample are seeded by its index in the whole set, so a share gives the
    figures of one process evaluating everything.
    """
    model = student if run.device.type == "cpu" else copy.deepcopy(student).cpu()
    cfg, part, sums = run.config, _test_part(run, run.test_set if dataset is None else dataset), [0.0, 0.0, 0.0, 0.0]
    if part is not None:
        result = evaluate_student(
            model,
            part,
            batch_size=cfg.eval_batch_size,
            seed=cfg.seed + part.indices.start,
            progress=run.show,
            desc=desc,
        )
        n = result["samples"]
        sums = [round(result["test_accuracy"] * n), round(result["spikes_per_sample"] * n), result["loss"] * n, n]
    correct, spikes, loss, total = distributed.reduce_sums(sums)
    return {"test_accuracy": correct / total, "spikes_per_sample": spikes / total, "loss": loss / total}


def _validation_score(run: Run, student: SpikingStudent) -> Score:
    result = _evaluate_snn(run, student, "validation", run.val_set)
    return Score(result["test_accuracy"], result["loss"], result["spikes_per_sample"])


def _evaluate_ann(run: Run, model: nn.Module, dataset: Dataset | None = None) -> Score:
    """(accuracy, mean cross-entropy) on ``dataset`` (the test set by default), shared as ``_evaluate_snn``."""
    model = model if run.device.type == "cpu" else copy.deepcopy(model).cpu()
    part, sums = _test_part(run, run.test_set if dataset is None else dataset), [0.0, 0.0, 0.0]
    if part is not None:
        accuracy, loss = evaluate_ann(model, part, batch_size=run.config.eval_batch_size)
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


def _guard(run: Run, stage: str, accuracy: float) -> None:
    if run.config.chance_guard:
        check_above_chance(stage, accuracy, len(run.val_set), run.info.num_classes)


# -- stages --------------------------------------------------------------------------------------
def _teacher_stage(run: Run) -> tuple[nn.Module, dict[str, Any]]:
    cfg, info = run.config, run.info
    torch.manual_seed(run.seed("teacher"))
    teacher = build_teacher(cfg.teacher, info.input_shape, info.num_classes).to(run.device)
    path = run.folder / TEACHER_FILE
    expected = {
        "format": TEACHER_FORMAT,
        "arch": cfg.teacher,
        "dataset": cfg.dataset,
        "input_shape": list(info.input_shape),
        "num_classes": info.num_classes,
    }
    if path.is_file():
        meta = load_matching_weights(path, teacher, expected, "teacher")
        result = {**meta["result"], "loaded": True}
    else:
        step = TeacherStep(distributed.sync_batch_norm(teacher, run.device))
        epochs = stage_epochs(run, cfg.teacher_epochs, cfg.teacher_steps)
        fitted = _fit(
            run,
            "teacher",
            step,
            step.parameters(),
            cfg.teacher_optimizer,
            cfg.teacher_lr,
            cfg.teacher_weight_decay,
            epochs,
        )
        began = time.perf_counter()
        _recalibrate_batch_norm(run, teacher)
        validation = _evaluate_ann(run, teacher, run.val_set).accuracy
        _guard(run, "teacher", validation)
        accuracy = _evaluate_ann(run, teacher).accuracy
        result = {
            "test_accuracy": accuracy,
            "validation_accuracy": validation,
            "seconds": fitted.seconds,
            "epochs": epochs,
            "evaluate_seconds": time.perf_counter() - began,
            "history": fitted.history,
        }
        run.save_weights(TEACHER_FILE, teacher, {**expected, "result": result})
        run.finish_stage("teacher")
        result = {**result, "loaded": False}
    teacher.eval().requires_grad_(False)
    return teacher, result


@torch.no_grad()
def _recalibrate_batch_norm(run: Run, model: nn.Module, max_batches: int = 100) -> None:
    """Batch-norm statistics of the final weights over the first training batches.

    The running averages kept during training mix statistics of earlier weights; after a short
    schedule (one epoch of the quick preset) they can be far off and ruin eval-mode accuracy.
    ``update_bn`` recomputes them as a plain mean over the batches, with the weights fixed. Under
    several processes each takes its share of every batch and the synchronised batch norm sees
    the whole batch, so the statistics are those of one process.
    """
    size = run.config.batch_size
    local = distributed.shard(range(min(len(run.train_set), max_batches * size)), size)
    loader = [x.to(run.device) for x, _ in batches(run.train_set, local, size // distributed.world_size())]
    torch.optim.swa_utils.update_bn(loader, model)


def _student_config(run: Run):
    cfg, info = run.config, run.info
    return build_student(
        cfg.student,
        info.input_shape,
        info.num_classes,
        timesteps=cfg.timesteps,
        encoding=cfg.encoding,
        reset=cfg.reset,
        width=cfg.student_width,
        dropout=cfg.student_dropout,
        bias=cfg.intermediate != "plain",
    )


def _ann_stage(run: Run) -> tuple[SpikingStudent, IntermediateAnn, dict[str, Any]]:
    """The trained intermediate ANN folded into a student, the ANN itself (eval mode), the result."""
    cfg = run.config
    torch.manual_seed(run.seed("ann"))
    levels = cfg.qcfs_levels or cfg.timesteps if cfg.intermediate == "qcfs" else None
    epochs = stage_epochs(run, cfg.ann_epochs, cfg.ann_steps)
    warmup = round(cfg.rate_warmup * epochs * _steps_per_epoch(run)) if cfg.intermediate == "rate" else 0
    ann = IntermediateAnn(SpikingStudent(_student_config(run)), cfg.intermediate, levels, warmup).to(run.device)
    student = SpikingStudent(ann.student.config).to(run.device)
    arch = student.config.to_dict()
    expected = {
        "format": ANN_FORMAT,
        "architecture": {k: arch[k] for k in ("arch", "input_shape", "num_classes", "layers")},
        "intermediate": cfg.intermediate,
        "levels": levels,
        "dataset": cfg.dataset,
        **({"timesteps": cfg.timesteps, "warmup_steps": warmup} if cfg.intermediate == "rate" else {}),
    }
    path = run.folder / ANN_FILE
    if path.is_file():
        meta = load_matching_weights(path, ann, expected, "intermediate ANN")
        return _folded(ann, student), ann, {**meta["result"], "loaded": True}
    step = distributed.sync_batch_norm(ann, run.device)
    fitted = _fit(
        run,
        "ann",
        step,
        ann.trained_parameters(),
        cfg.ann_optimizer,
        cfg.ann_lr,
        cfg.ann_weight_decay,
        epochs,
        after_step=ann.clamp_parameters_,
        select=Selection(lambda: _evaluate_ann(run, ann, run.val_set)),
    )
    _guard(run, "ann", fitted.best_score)
    began = time.perf_counter()
    accuracy = _evaluate_ann(run, ann).accuracy
    result = {
        "test_accuracy": accuracy,
        "validation_accuracy": fitted.best_score,
        "best_epoch": fitted.best_epoch,
        "seconds": fitted.seconds,
        "epochs": epochs,
        "evaluate_seconds": time.perf_counter() - began,
        "history": fitted.history,
    }
    run.save_weights(ANN_FILE, ann, {**expected, "result": result})
    run.finish_stage("ann")
    return _folded(ann, student), ann, {**result, "loaded": False}


def _folded(ann: IntermediateAnn, student: SpikingStudent) -> SpikingStudent:
    ann.eval()
    fold_batch_norm(ann, student)
    return student


def _conversion_stage(run: Run, student: SpikingStudent, ann: IntermediateAnn) -> dict[str, Any]:
    cfg = run.config
    clips = None if ann.clips is None else ann.clips.detach().cpu().tolist()
    path = run.folder / CONVERTED_FILE
    if cfg.resume and "conversion" in run.progress and path.is_file():
        student.load_state_dict(load_student(path).state_dict())
        return {**run.progress["conversion"], "loaded": True}
    began = time.perf_counter()
    order = torch.randperm(len(run.train_set), generator=torch.Generator().manual_seed(run.seed("conversion")))
    order = order[: cfg.balance_batches * cfg.batch_size].tolist()
    count = -(-len(order) // cfg.batch_size)
    mine = distributed.share(count)  # whole batches per process, so each batch's percentile is exact
    local = order[mine.start * cfg.batch_size : mine.stop * cfg.batch_size]
    images = {
        b: x.to(run.device) for b, (x, _) in zip(mine, batches(run.train_set, local, cfg.batch_size), strict=True)
    }
    candidates = BALANCE_CANDIDATES if cfg.balance_percentile is None and clips is None else (cfg.balance_percentile,)
    ann_state, scores, best = copy.deepcopy(student.state_dict()), {}, None
    shift = cfg.intermediate == "qcfs"  # QCFS's half-threshold charge; a rate ANN's neurons start at 0
    for p in candidates:
        student.load_state_dict(ann_state)
        thresholds = convert(student, images, p or 100.0, seed=run.seed("conversion"), clips=clips, shift=shift)
        score = _evaluate_snn(run, student, f"balance {p}", run.val_set)["test_accuracy"]
        if len(candidates) > 1:
            scores[str(p)] = score
        if best is None or score > best[0]:
            best = (score, p, thresholds, copy.deepcopy(student.state_dict()))
    validation, percentile, thresholds, converted = best
    student.load_state_dict(converted)
    calibration = _calibrate(run, student, ann, images, validation)
    validation = calibration.get("validation_accuracy", validation)  # the kept student's, never lower
    _guard(run, "conversion", validation)
    seconds = time.perf_counter() - began
    began = time.perf_counter()
    evaluation = _evaluate_snn(run, student, "converted")
    result = {
        "test_accuracy": evaluation["test_accuracy"],
        "spikes_per_sample": evaluation["spikes_per_sample"],
        "thresholds": thresholds,
        "percentile": percentile,
        "validation_accuracy": validation,
        "percentile_validation_accuracy": scores,
        "bias_calibration": calibration,
        "batches": count,
        "seconds": seconds,
        "evaluate_seconds": time.perf_counter() - began,
    }
    run.save_student(student, CONVERTED_FILE)
    run.progress["conversion"] = result
    run.write_progress()
    return {**result, "loaded": False}


CALIBRATION_PASSES = 4  # bias calibration passes tried; the validation split keeps the best (docs/semantics.md)


def _calibrate(
    run: Run, student: SpikingStudent, ann: IntermediateAnn, images: dict[int, torch.Tensor], validation: float
) -> dict[str, Any]:
    """Bias calibration of the converted student (``conversion.calibrate_biases``), pass after pass; the
    student after the pass that scores best on the validation split is kept, none if no pass beats the
    uncalibrated one. What it did (empty for a student without biases)."""
    if all(m.bias is None for m in student.weighted_modules()):
        return {}
    activations = []
    with torch.no_grad():
        for x in images.values():
            activations.append({})
            ann(x, record=activations[-1])
    best, scores, corrections = (validation, 0, copy.deepcopy(student.state_dict())), [], []
    for done in range(1, CALIBRATION_PASSES + 1):
        corrections.append(calibrate_biases(student, activations, images, seed=run.seed("conversion")))
        scores.append(_evaluate_snn(run, student, f"calibration {done}", run.val_set)["test_accuracy"])
        if scores[-1] > best[0]:
            best = (scores[-1], done, copy.deepcopy(student.state_dict()))
    student.load_state_dict(best[2])
    return {
        "uncalibrated_validation_accuracy": validation,
        "validation_accuracy": best[0],
        "passes_kept": best[1],
        "validation_accuracy_per_pass": scores,
        "mean_corrections": corrections,
    }


def _finetune_stage(run: Run, student: SpikingStudent, teacher: nn.Module | None) -> dict[str, Any]:
    cfg = run.config
    path = run.folder / STUDENT_FILE
    if cfg.resume and "finetune" in run.progress and path.is_file():
        student.load_state_dict(load_student(path).state_dict())
        return {**run.progress["finetune"], "loaded": True}
    torch.manual_seed(run.seed("finetune"))
    objective = FineTune(student, cfg.method, cfg, teacher).to(run.device)
    first = torch.randperm(len(run.train_set), generator=torch.Generator().manual_seed(run.seed("finetune")))
    x, _ = next(batches(run.train_set, first[: cfg.eval_batch_size].tolist(), cfg.eval_batch_size))
    prepared = objective.method.prepare(objective, x.to(run.device))
    neuron = [student.leak, student.thresholds]
    weights = [p for p in objective.parameters() if all(p is not q for q in neuron)]
    params = [{"params": weights, "weight_decay": cfg.student_weight_decay}]
    if cfg.intermediate != "rate":  # a rate-converted student keeps the IF neurons its ANN's rates assume
        params.append({"params": neuron, "weight_decay": 0.0})
    select = Selection(lambda: _validation_score(run, student), cfg.patience, cfg.student_back_off, cfg.spike_tolerance)
    fitted = _fit(
        run,
        "finetune",
        objective,
        params,
        "adam",
        cfg.student_lr,
        cfg.student_weight_decay,
        cfg.student_epochs,
        after_step=student.clamp_parameters_,
        epoch_samples=cfg.student_samples,
        select=select,
    )
    _guard(run, "finetune", fitted.best_score)
    began = time.perf_counter()
    evaluation = _evaluate_snn(run, student, "student")
    result = {
        "test_accuracy": evaluation["test_accuracy"],
        "spikes_per_sample": evaluation["spikes_per_sample"],
        "validation_accuracy": fitted.best_score,
        "best_epoch": fitted.best_epoch,
        "selection": {
            "spike_tolerance": cfg.spike_tolerance,
            "most_accurate_epoch": fitted.most_accurate_epoch,
            "kept_epoch": fitted.best_epoch,
        },
        "prepared": prepared,
        "stopped_early": fitted.epochs_run < cfg.student_epochs,
        "seconds": fitted.seconds,
        "epochs": fitted.epochs_run,
        "evaluate_seconds": time.perf_counter() - began,
        "history": fitted.history,
    }
    run.save_student(student, STUDENT_FILE)
    run.progress["finetune"] = result
    run.write_progress()
    run.finish_stage("finetune")
    return {**result, "loaded": False}


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
