"""The ``Run`` of one ``train`` call: its options, data sets and folder, and every write into the folder.

``prepare`` checks a ``--resume`` against the folder's config, loads the data and starts the run;
only the main process writes (``distributed.is_main_process``).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

from ..atomic import write_text
from ..data import DataInfo, data_info, first_samples, load_split
from ..errors import UserError
from ..run_folder import CONFIG_FILE, CONVERTED_FILE, METRICS_FILE, PROGRESS_FILE, stage_seed
from ..student import STUDENT_FILE, SpikingStudent, save_student
from . import distributed
from .checkpoint import CHECKPOINT_DIR, checkpoint_path, save_weights
from .config import FIELDS, TrainConfig, config_to_json
from .datasets import SizedSet, in_default_dtype, in_memory, split_validation
from .loop import EpochHook

# Options that change nothing a finished stage computed; they may differ on --resume.
RESUME_FREE = {"resume", "progress", "threads", "device", "eval_batch_size", "out", "chance_guard"}


@dataclass
class Run:
    config: TrainConfig
    folder: Path
    device: torch.device
    train_set: SizedSet
    val_set: SizedSet
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


def _read_json_mapping(path: Path) -> dict[str, Any]:
    """A run folder's JSON file as a dict; one clear error when it is unreadable or not a mapping."""
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path} is unreadable ({err}); train into a new --out instead of resuming") from err
    if not isinstance(value, dict):
        raise UserError(f"{path} is not a JSON mapping; train into a new --out instead of resuming")
    return value


def run_folder(config: TrainConfig) -> Path:
    """The run's folder, ``--out``, without which there is no run."""
    if config.out is None:
        raise UserError("no run folder: pass --out (out= from Python)")
    return Path(config.out).expanduser()


def prepare(config: TrainConfig, device: torch.device, on_epoch_end: EpochHook | None) -> Run:
    distributed.check_batch_size(config.batch_size)
    folder = run_folder(config)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--out {folder} is a file; give a folder for the run")
    progress: dict[str, Any] = {}
    if config.resume:
        stored = folder / CONFIG_FILE
        if not stored.is_file():
            raise UserError(f"nothing to resume in {folder}: it holds no {CONFIG_FILE}; run without --resume first")
        # an option the folder's config lacks came after the run was made: it ran with the default
        before = {**{k: f.default for k, f in FIELDS.items()}, **_read_json_mapping(stored)}
        now = config.to_dict()
        differ = sorted(k for k in now if k not in RESUME_FREE and before[k] != now[k])
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
    train_set, val_set = split_validation(in_memory(full_train, config.train_samples), config.validation_fraction, seed)
    run = Run(
        config=config,
        folder=folder,
        device=device,
        train_set=train_set,
        val_set=val_set,
        test_set=in_default_dtype(TensorDataset(*first_samples(test_set, config.test_samples))),
        info=info,
        on_epoch_end=on_epoch_end,
        progress=progress,
    )
    run.start()
    distributed.barrier()
    return run
