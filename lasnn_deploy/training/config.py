"""Every option of ``lasnn-deploy train`` in one dataclass, its command-line flags and config files.

Where a value comes from, later wins: the dataclass defaults (a full-length schedule), then
``--preset``, then ``--config FILE`` (YAML or TOML, any flag by its name with ``-`` or ``_``), then
the flags given on the command line. From Python, ``make_config(preset=..., **options)`` applies
the same order without a file.

The ``quick`` preset is a small CPU schedule at T = 8 whose lengths do not depend on the size of
the data set: the 3conv2linear student at a quarter of its width (16/32/64 channels, 256 hidden
units), an Adam ``small-cnn`` teacher and an Adam intermediate ANN sized in optimiser steps (the
same work on 2,000 images as on 60,000), the balancing percentile chosen on the validation split,
and fine-tuning in rounds of 100 steps that keeps the best round on the validation split (accuracy,
then loss), starts at a rate of 1e-3, returns to the best weights at a fifth of the rate after a
round without a better score, and stops at the third such round (rates 1e-3, 2e-4, 4e-5).

Every run holds out ``validation_fraction`` of its training images (a seeded draw) for these
choices; the test set is never used for one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..data import DATASETS
from ..errors import UserError
from ..models import STUDENTS, TEACHERS
from ..student import MAX_TIMESTEPS
from .intermediate import CLIPPED, INTERMEDIATES
from .methods import METHODS, TEACHER_METHODS

OPTIMIZERS = ("sgd", "adam")
ANN_TEACHER = "ann"  # --teacher: the intermediate ANN itself
BALANCE_CANDIDATES = (95.0, 98.0, 99.0, 99.5, 99.9, 100.0)  # percentiles tried when --balance-percentile is not given
SCHEDULES = ("cosine", "step", "constant")

PRESETS: dict[str, dict[str, Any]] = {
    "quick": {
        "student": "3conv2linear",
        "student_width": 0.25,
        "teacher": "small-cnn",
        "batch_size": 32,
        "teacher_steps": 1100,
        "teacher_optimizer": "adam",
        "teacher_lr": 2e-3,
        "teacher_weight_decay": 0.0,
        "ann_steps": 3300,
        "ann_optimizer": "adam",
        "ann_lr": 2e-3,
        "ann_weight_decay": 0.0,
        "student_epochs": 20,
        "student_samples": 3200,
        "patience": 3,
        "student_lr": 1e-3,
        "student_back_off": 0.2,
    },
}
# What a preset changes for one student, over the preset's own values (docs/semantics.md, 'Presets'):
# the deep students need batch norm, the hard-reset rate activation, augmentation of colour images
# (greyscale is never augmented), more width and a longer intermediate ANN to train at all, and
# their own intermediate ANN as the teacher (the preset's small-cnn is weaker than it), and
# fine-tune on the whole cosine schedule of --student-epochs rounds, without back-off or patience.
STUDENT_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "quick": {
        "resnet12": {
            "student_width": 0.5,
            "intermediate": "rate",
            "augment": True,
            "ann_steps": 5700,
            "teacher": ANN_TEACHER,
            "patience": None,
            "student_back_off": None,
        },
        "vgg16": {
            "student_width": 0.25,
            "student_dropout": 0.0,
            "intermediate": "rate",
            "augment": True,
            "ann_steps": 5700,
            "teacher": ANN_TEACHER,
            "patience": None,
            "student_back_off": None,
        },
    },
}


def _opt(default: Any, help: str, group: str, choices: tuple[str, ...] | None = None) -> Any:
    return field(default=default, metadata={"help": help, "group": group, "choices": choices})


@dataclass(frozen=True)
class TrainConfig:
    """One training run: data, architectures, the four stages and the distillation method."""

    # -- data -------------------------------------------------------------------------------
    dataset: str = _opt("digits", "data set", "data", DATASETS)
    data_dir: str | None = _opt(None, "folder holding the data set (not needed for digits)", "data")
    train_samples: int | None = _opt(None, "train on the first N training images only", "data")
    test_samples: int | None = _opt(None, "measure test accuracy on the first N test images only", "data")
    augment: bool = _opt(
        False, "random 4-pixel crops and horizontal flips of colour images (greyscale untouched)", "data"
    )
    validation_fraction: float = _opt(
        0.1,
        "share of the training images held out (seeded by --seed) to choose the balancing percentile and "
        "the best epochs; the test set is never used for a choice",
        "data",
    )
    # -- run --------------------------------------------------------------------------------
    out: str | None = _opt(None, "run folder to write (student.safetensors, metrics.json, checkpoints)", "run")
    preset: str | None = _opt(
        None, "named schedule filling options not given (quick: a small CPU run)", "run", tuple(PRESETS)
    )
    seed: int = _opt(0, "seed of weights, data order, dropout and Poisson spikes", "run")
    resume: bool = _opt(False, "continue an interrupted run in --out from its checkpoints", "run")
    device: str = _opt("auto", "torch device (auto: cuda if available, else cpu)", "run")
    threads: int | None = _opt(None, "CPU threads for torch (default: torch's choice)", "run")
    progress: bool = _opt(True, "show progress bars", "run")
    chance_guard: bool = _opt(
        True,
        "stop with exit 2 when a stage ends near chance on the validation split (--no-chance-guard lets it "
        "through: smoke tests on a few images)",
        "run",
    )
    # -- architectures ------------------------------------------------------------------------
    student: str = _opt("3conv2linear", "student SNN architecture", "student", tuple(STUDENTS))
    student_width: float = _opt(1.0, "multiply the student's channel and unit counts", "student")
    student_dropout: float | None = _opt(
        None, "dropout rate of every student Dropout layer (default: the architecture's)", "student"
    )
    timesteps: int = _opt(8, "time steps T of the student", "student")
    encoding: str = _opt("direct", "input encoding of the student", "student", ("direct", "poisson"))
    reset: str = _opt(
        "hard", "membrane reset after a spike (soft cannot be exported to NIR or Lava)", "student", ("hard", "soft")
    )
    teacher: str = _opt(
        "resnet20",
        "teacher ANN architecture (used by kd, hetero-kd, lasnn, lasnn-grad); 'ann': the intermediate ANN "
        "itself, paired with the student layer for layer, with no teacher stage",
        "teacher",
        (*TEACHERS, ANN_TEACHER),
    )
    # -- stage 1: teacher ----------------------------------------------------------------------
    teacher_epochs: int = _opt(100, "teacher training epochs", "teacher")
    teacher_steps: int | None = _opt(
        None, "train the teacher for about N optimiser steps instead (whole epochs, at least one)", "teacher"
    )
    teacher_optimizer: str = _opt("sgd", "teacher optimiser", "teacher", OPTIMIZERS)
    teacher_lr: float = _opt(0.1, "teacher learning rate", "teacher")
    teacher_weight_decay: float = _opt(5e-4, "teacher weight decay", "teacher")
    # -- stage 2: intermediate ANN ---------------------------------------------------------------
    intermediate: str = _opt(
        "plain",
        "intermediate ANN: plain (the LaSNN paper's: ReLU, no bias, no batch norm), bn (batch norm, "
        "folded into a per-channel bias at conversion), qcfs (bn with Bu et al.'s clip-floor-shift activation; "
        "the clips give the thresholds) or rate (bn with the hard-reset neuron's exact spike rate over T steps as "
        "the activation, after a QCFS warm-up; converts to a hard-reset student with little loss)",
        "ann",
        INTERMEDIATES,
    )
    qcfs_levels: int | None = _opt(None, "qcfs: quantisation levels L of the activation (default: --timesteps)", "ann")
    rate_warmup: float = _opt(
        0.5, "rate: share of the intermediate ANN's steps trained with QCFS (L = T) before the rate activation", "ann"
    )
    ann_epochs: int = _opt(100, "intermediate ANN training epochs (the best on the validation split is kept)", "ann")
    ann_steps: int | None = _opt(
        None, "train the intermediate ANN for about N optimiser steps instead (whole epochs)", "ann"
    )
    ann_optimizer: str = _opt("sgd", "intermediate ANN optimiser", "ann", OPTIMIZERS)
    ann_lr: float = _opt(0.01, "intermediate ANN learning rate", "ann")
    ann_weight_decay: float = _opt(5e-4, "intermediate ANN weight decay", "ann")
    momentum: float = _opt(0.9, "SGD momentum (teacher and ANN)", "ann")
    schedule: str = _opt(
        "cosine", "learning-rate schedule of every stage (step: x0.1 at 50%% and 75%% of the epochs)", "ann", SCHEDULES
    )
    batch_size: int = _opt(
        64, "training batch size of all stages; under torchrun the global batch, split evenly over the processes", "ann"
    )
    eval_batch_size: int = _opt(256, "batch size when measuring test accuracy", "ann")
    # -- stage 3: conversion -------------------------------------------------------------------
    balance_percentile: float | None = _opt(
        None,
        "theta_l = this percentile of layer l's input current (100: the maximum); default: the best of "
        f"{', '.join(map(str, BALANCE_CANDIDATES))} on the validation split",
        "conversion",
    )
    balance_batches: int = _opt(8, "training batches used for threshold balancing", "conversion")
    # -- stage 4: fine-tuning ----------------------------------------------------------------
    method: str = _opt("lasnn", "training method after conversion", "method", METHODS)
    student_epochs: int = _opt(
        30, "student SNN fine-tuning epochs at most (Adam; the best on the validation split is kept)", "method"
    )
    patience: int | None = _opt(
        None,
        "stop fine-tuning after N epochs without a better validation score (accuracy, then loss), with "
        "--student-back-off after N back-offs in all (default: run all)",
        "method",
    )
    student_samples: int | None = _opt(
        None, "fine-tune on N training images per epoch, a new seeded draw each epoch (default: all)", "method"
    )
    student_lr: float = _opt(1e-4, "student SNN learning rate (the starting rate with --student-back-off)", "method")
    student_back_off: float | None = _opt(
        None,
        "after a fine-tuning epoch without a better validation score, go back to the best weights at this "
        "times the rate, constant between back-offs (default: none, the --schedule sets the rate)",
        "method",
    )
    spike_tolerance: float | None = _opt(
        None,
        "energy-aware selection: keep the fine-tuning epoch with the fewest validation spikes among those within "
        "X validation accuracy of the best (0.005: half a point; default: off, the most accurate epoch)",
        "method",
    )
    per_step_loss: bool = _opt(
        False,
        "cross-entropy of every time step's output, averaged (TET, Deng et al. 2022), in place of the "
        "cross-entropy of their mean: every step learns to classify (tssd keeps its own terms)",
        "method",
    )
    student_weight_decay: float = _opt(0.0, "student SNN weight decay (weights only)", "method")
    beta: float = _opt(
        0.1, "lasnn/lasnn-grad: weight of the attention losses, L = CE + beta/2 * sum_j L_AT,j", "method"
    )
    temperature: float = _opt(4.0, "kd: softmax temperature of both sides", "method")
    tssd_temperature: float = _opt(1.0, "tssd: softmax temperature of its temporal and spatial terms", "method")
    teacher_temperature: float = _opt(4.0, "hetero-kd: temperature of the teacher's soft targets", "method")
    student_temperature: float = _opt(1.0, "hetero-kd: temperature of the student's softmax", "method")
    kd_weight: float = _opt(
        0.5, "kd, hetero-kd, tssd: weight of the distillation terms (CE gets 1 - weight for kd)", "method"
    )
    sam_gamma: float = _opt(0.5, "lasnn-grad: decay of the spike activation map's contribution score", "method")
    tssd_timesteps: int | None = _opt(
        None, "tssd: time steps T' > T of the training run whose first T steps are the student (default 2T)", "method"
    )

    def __post_init__(self) -> None:
        check_config(self)

    @property
    def needs_teacher(self) -> bool:
        return self.method in TEACHER_METHODS

    @property
    def trains_teacher(self) -> bool:
        """A teacher stage runs: the method needs a teacher other than the intermediate ANN."""
        return self.needs_teacher and self.teacher != ANN_TEACHER

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
FIELD_TYPES: dict[str, Any] = typing.get_type_hints(TrainConfig)


def _base_type(name: str) -> tuple[type, bool]:
    """(type, optional) of a field: ``int | None`` -> (int, True)."""
    tp = FIELD_TYPES[name]
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return (args[0], True) if args else (tp, False)


def check_config(cfg: TrainConfig) -> None:
    """Raise ``UserError`` naming the first option with a value outside its range."""
    for name, f in FIELDS.items():
        value = getattr(cfg, name)
        _check_type(name, value, f"option {name!r}")
        choices = f.metadata.get("choices")
        if choices and value is not None and value not in choices:
            raise UserError(f"--{_flag(name)} must be one of {', '.join(choices)}, got {value!r}")
    positive = [
        "batch_size",
        "eval_batch_size",
        "balance_batches",
        "timesteps",
        "student_lr",
        "ann_lr",
        "teacher_lr",
        "temperature",
        "tssd_temperature",
        "teacher_temperature",
        "student_temperature",
        "student_width",
        "sam_gamma",
    ]
    for name in positive:
        if getattr(cfg, name) <= 0:
            raise UserError(f"--{_flag(name)} must be positive, got {getattr(cfg, name)}")
    for name in [
        "teacher_epochs",
        "ann_epochs",
        "student_epochs",
        "beta",
        "momentum",
        "teacher_weight_decay",
        "ann_weight_decay",
        "student_weight_decay",
    ]:
        if getattr(cfg, name) < 0:
            raise UserError(f"--{_flag(name)} must not be negative, got {getattr(cfg, name)}")
    for name in [
        "train_samples",
        "test_samples",
        "student_samples",
        "threads",
        "teacher_steps",
        "ann_steps",
        "patience",
        "qcfs_levels",
    ]:
        if getattr(cfg, name) is not None and getattr(cfg, name) < 1:
            raise UserError(f"--{_flag(name)} must be at least 1, got {getattr(cfg, name)}")
    if cfg.timesteps > MAX_TIMESTEPS:
        raise UserError(f"--timesteps must be at most {MAX_TIMESTEPS}, got {cfg.timesteps}")
    if cfg.intermediate != "qcfs" and cfg.qcfs_levels is not None:
        raise UserError(
            f"--qcfs-levels applies to --intermediate qcfs only, not {cfg.intermediate}; drop it or use qcfs"
        )
    if cfg.intermediate in CLIPPED and cfg.balance_percentile is not None:
        raise UserError(
            f"--balance-percentile cannot apply to --intermediate {cfg.intermediate}: its learned clips give the "
            "thresholds; drop the percentile or use --intermediate bn"
        )
    if cfg.spike_tolerance is not None and not 0 <= cfg.spike_tolerance < 1:
        raise UserError(
            f"--spike-tolerance must be in [0, 1) (a share of validation accuracy), got {cfg.spike_tolerance}"
        )
    if not 0 <= cfg.rate_warmup < 1:
        raise UserError(f"--rate-warmup must be in [0, 1), got {cfg.rate_warmup}")
    if cfg.student_back_off is not None and not 0 < cfg.student_back_off < 1:
        raise UserError(f"--student-back-off must be in (0, 1), got {cfg.student_back_off}")
    if not 0 < cfg.validation_fraction < 1:
        raise UserError(f"--validation-fraction must be in (0, 1), got {cfg.validation_fraction}")
    if cfg.balance_percentile is not None and not 0 < cfg.balance_percentile <= 100:
        raise UserError(f"--balance-percentile must be in (0, 100], got {cfg.balance_percentile}")
    if not 0 <= cfg.kd_weight <= 1:
        raise UserError(f"--kd-weight must be in [0, 1], got {cfg.kd_weight}")
    if cfg.tssd_timesteps is not None and not cfg.timesteps < cfg.tssd_timesteps <= MAX_TIMESTEPS:
        raise UserError(f"--tssd-timesteps must exceed --timesteps ({cfg.timesteps}), got {cfg.tssd_timesteps}")
    if cfg.student_dropout is not None and not 0 <= cfg.student_dropout < 1:
        raise UserError(f"--student-dropout must be in [0, 1), got {cfg.student_dropout}")


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _check_type(name: str, value: Any, where: str) -> Any:
    """``value`` if it fits the field's type (an int is accepted for a float); else ``UserError``."""
    tp, optional = _base_type(name)
    if value is None and optional:
        return None
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }[tp]
    if not ok:
        kind = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[tp]
        raise UserError(f"{where} must be {kind}{' or null' if optional else ''}, got {value!r}")
    return float(value) if tp is float else value


def make_config(**options: Any) -> TrainConfig:
    """A checked ``TrainConfig``: defaults, then ``options['preset']``'s values (with its choices for
    the student, ``preset_choices``), then ``options``."""
    unknown = sorted(set(options) - set(FIELDS))
    if unknown:
        raise UserError(f"unknown training option(s) {', '.join(unknown)}; see `lasnn-deploy train --help`")
    preset = options.get("preset")
    if preset is not None and preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
    student = {**PRESETS.get(preset or "", {}), **options}.get("student", FIELDS["student"].default)
    values = {**PRESETS.get(preset or "", {}), **preset_choices(preset, student), **options}
    for stage in ("teacher", "ann"):  # epochs given outrank a preset's steps
        if f"{stage}_epochs" in options and f"{stage}_steps" not in options:
            values[f"{stage}_steps"] = None
    values = {k: _check_type(k, v, f"option {k!r}") for k, v in values.items()}
    return TrainConfig(**values)


def preset_choices(preset: str | None, student: str) -> dict[str, Any]:
    """What ``preset`` sets for ``student`` beyond its own values (empty for the shallow students)."""
    return dict(STUDENT_PRESETS.get(preset or "", {}).get(student, {}))


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Options from a YAML (.yaml/.yml) or TOML (.toml) file; unknown keys and bad types -> UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} does not exist")
    try:
        if path.suffix.lower() == ".toml":
            data = tomllib.loads(path.read_text())
        elif path.suffix.lower() in (".yaml", ".yml"):
            data = yaml.safe_load(path.read_text()) or {}
        else:
            raise UserError(f"config file {path} must end in .yaml, .yml or .toml")
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as err:
        raise UserError(f"config file {path} is not valid: {str(err).splitlines()[0]}") from err
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of option names to values")
    values = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in FIELDS:
            raise UserError(f"config file {path}: unknown key {key!r}; keys are the `train` flags, e.g. batch-size")
        values[name] = _check_type(name, value, f"config file {path}: key {key!r}")
    return values


METAVARS = {"data_dir": "DIR", "out": "DIR", "device": "DEVICE"}


def _student_preset_notes(name: str) -> list[str]:
    """Help notes for what a preset sets per student, e.g. ``quick, resnet12 and vgg16: none``."""
    notes = []
    for preset, students in STUDENT_PRESETS.items():
        by_value: dict[str, list[str]] = {}
        for student, choices in students.items():
            if name in choices:
                value = "none" if choices[name] is None else str(choices[name])
                by_value.setdefault(value, []).append(student)
        notes += [f"{preset}, {' and '.join(s)}: {v}" for v, s in by_value.items()]
    return notes


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--config`` and one flag per ``TrainConfig`` field (help from its metadata).

    Flags not given stay absent from the parsed namespace, so that ``config_from_args`` can tell
    them from defaults and let a preset or config file supply them.
    """
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="YAML or TOML file of options by flag name; flags given here override it",
    )
    groups: dict[str, argparse._ArgumentGroup] = {}
    for name, f in FIELDS.items():
        group_name = f.metadata["group"]
        if group_name not in groups:
            groups[group_name] = parser.add_argument_group(f"{group_name} options")
        tp, _ = _base_type(name)
        notes = [f"default: {f.default}"] if f.default is not None else []
        notes += [f"{p}: {v[name]}" for p, v in PRESETS.items() if name in v]
        notes += _student_preset_notes(name)
        help_text = f"{f.metadata['help']} ({'; '.join(notes)})" if notes else f.metadata["help"]
        kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": help_text}
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = tp
            if f.metadata["choices"]:
                kwargs["choices"] = f.metadata["choices"]
            else:
                kwargs["metavar"] = METAVARS.get(name, {int: "N", float: "X", str: "TEXT"}[tp])
        groups[group_name].add_argument(f"--{_flag(name)}", **kwargs)
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The ``TrainConfig`` of parsed ``train`` arguments, merged over ``--config FILE`` if given."""
    given = {k: v for k, v in vars(args).items() if k in FIELDS}
    from_file = load_config_file(args.config) if getattr(args, "config", None) else {}
    config = make_config(**{**from_file, **given})
    if config.out is None:
        raise UserError("--out is required: the run folder to write the student and metrics into")
    return config


def config_to_json(config: TrainConfig) -> str:
    return json.dumps(config.to_dict(), indent=2, sort_keys=True)
