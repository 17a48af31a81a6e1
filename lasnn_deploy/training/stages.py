"""The four stages of ``train``, each a function of the ``Run`` that returns its result (and its model).

Each stage trains through ``loop.fit`` with one ``FitPlan``, or loads its finished result from the
run folder (a teacher or intermediate ANN file made for the same data, or on ``--resume`` a finished
stage), and writes its file through the ``Run``.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import torch
from torch import nn

from ..models import build_student, build_teacher
from ..run_folder import ANN_FILE, CONVERTED_FILE, TEACHER_FILE
from ..student import STUDENT_FILE, SpikingStudent, load_student
from . import distributed
from .checkpoint import checkpoint_path, load_matching_weights
from .config import BALANCE_CANDIDATES
from .conversion import calibrate_biases, convert
from .intermediate import IntermediateAnn, fold_batch_norm
from .loop import FitPlan, FitResult, Selection, batches, fit, make_optimizer, make_scheduler
from .objectives import FineTune, TeacherStep
from .run import Run
from .scoring import evaluate_ann, evaluate_snn, guard, validation_score

TEACHER_FORMAT, ANN_FORMAT = "lasnn-deploy-teacher/1", "lasnn-deploy-ann/2"  # ann/2: the IntermediateAnn's state


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


def teacher_stage(run: Run) -> tuple[nn.Module, dict[str, Any]]:
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
        validation = evaluate_ann(run, teacher, run.val_set).accuracy
        guard(run, "teacher", validation)
        accuracy = evaluate_ann(run, teacher).accuracy
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


def ann_stage(run: Run) -> tuple[SpikingStudent, IntermediateAnn, dict[str, Any]]:
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
        select=Selection(lambda: evaluate_ann(run, ann, run.val_set)),
    )
    guard(run, "ann", fitted.kept_score)
    began = time.perf_counter()
    accuracy = evaluate_ann(run, ann).accuracy
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


def conversion_stage(run: Run, student: SpikingStudent, ann: IntermediateAnn) -> dict[str, Any]:
    cfg = run.config
    clips = None if ann.clips is None else ann.clips.detach().cpu().tolist()
    path = run.folder / CONVERTED_FILE
    if cfg.resume and "conversion" in run.progress and path.is_file():
        student.load_state_dict(load_student(path).state_dict())
        return {**run.progress["conversion"], "loaded": True}
    began = time.perf_counter()
    permutation = torch.randperm(len(run.train_set), generator=torch.Generator().manual_seed(run.seed("conversion")))
    order = permutation[: cfg.balance_batches * cfg.batch_size].tolist()
    count = -(-len(order) // cfg.batch_size)
    mine = distributed.share(count)  # whole batches per process, so each batch's percentile is exact
    local = order[mine.start * cfg.batch_size : mine.stop * cfg.batch_size]
    images = {
        b: x.to(run.device) for b, (x, _) in zip(mine, batches(run.train_set, local, cfg.batch_size), strict=True)
    }
    candidates = BALANCE_CANDIDATES if cfg.balance_percentile is None and clips is None else (cfg.balance_percentile,)
    ann_state, scores = copy.deepcopy(student.state_dict()), {}
    # the best candidate so far: (validation accuracy, percentile, thresholds, state dict)
    best: tuple[float, float | None, list[float], dict[str, torch.Tensor]] | None = None
    shift = cfg.intermediate == "qcfs"  # QCFS's half-threshold charge; a rate ANN's neurons start at 0
    for p in candidates:
        student.load_state_dict(ann_state)
        thresholds = convert(student, images, p or 100.0, seed=run.seed("conversion"), clips=clips, shift=shift)
        score = evaluate_snn(run, student, f"balance {p}", run.val_set)["test_accuracy"]
        if len(candidates) > 1:
            scores[str(p)] = score
        if best is None or score > best[0]:
            best = (score, p, thresholds, copy.deepcopy(student.state_dict()))
    assert best is not None  # candidates is never empty
    validation, percentile, thresholds, converted = best
    student.load_state_dict(converted)
    calibration = _calibrate(run, student, ann, images, validation)
    validation = calibration.get("validation_accuracy", validation)  # the kept student's, never lower
    guard(run, "conversion", validation)
    seconds = time.perf_counter() - began
    began = time.perf_counter()
    evaluation = evaluate_snn(run, student, "converted")
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
    activations: list[dict[int, torch.Tensor]] = []
    with torch.no_grad():
        for x in images.values():
            activations.append({})
            ann(x, record=activations[-1])
    best, scores, corrections = (validation, 0, copy.deepcopy(student.state_dict())), [], []
    for done in range(1, CALIBRATION_PASSES + 1):
        corrections.append(calibrate_biases(student, activations, images, seed=run.seed("conversion")))
        scores.append(evaluate_snn(run, student, f"calibration {done}", run.val_set)["test_accuracy"])
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


def finetune_stage(run: Run, student: SpikingStudent, teacher: nn.Module | None) -> dict[str, Any]:
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
    select = Selection(lambda: validation_score(run, student), cfg.patience, cfg.student_back_off, cfg.spike_tolerance)
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
    guard(run, "finetune", fitted.kept_score)
    began = time.perf_counter()
    evaluation = evaluate_snn(run, student, "student")
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
