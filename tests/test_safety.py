"""Files we load never run code; outputs appear whole or not at all; a killed run resumes exactly.

(a) A pickle whose ``__reduce__`` calls ``os.system`` is planted wherever the tool reads a file;
    every reader refuses it with one clear line and the marker file it would create never appears.
(b) Writers are interrupted midway (an exception raised from inside the real writer, and SIGKILL of
    a process writing a large file): the target holds the old bytes or nothing, never part of a file.
(c) ``train`` is killed with SIGKILL after a mid-stage checkpoint; ``train --resume`` ends with the
    same weights, bit for bit, as a run that was never interrupted.
"""

from __future__ import annotations

import ast
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import nir
import numpy as np
import pytest
import torch
from helpers import make_student, train_flags
from lasnn_deploy.exporters import export
from safetensors.torch import load_file

from lasnn_deploy.atomic import atomic_path
from lasnn_deploy.cli import main
from lasnn_deploy.data import load_split
from lasnn_deploy.errors import UserError
from lasnn_deploy.student import load_student, save_student
from lasnn_deploy.training.checkpoint import load_checkpoint, read_weights, save_checkpoint
from lasnn_deploy.training.config import config_to_json, make_config

EXE = Path(sys.executable).with_name("lasnn-deploy")


class Exploit:
    """Unpickling this runs ``touch MARKER``: what a hostile checkpoint or data file would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def marker(tmp_path) -> Path:
    path = tmp_path / "code-ran"
    yield path
    assert not path.exists(), "loading a file executed code from it"


def test_the_planted_pickle_really_runs_code(tmp_path):
    """The exploit works against a plain loader, so the refusals below mean something."""
    path, ran = tmp_path / "checkpoint.pt", tmp_path / "ran"
    torch.save({"model": Exploit(ran)}, path)
    torch.load(path, weights_only=False)
    assert ran.exists()


def test_student_file_holding_a_pickle_is_refused(tmp_path, marker):
    run = tmp_path / "run"
    run.mkdir()
    (run / "student.safetensors").write_bytes(pickle.dumps(Exploit(marker)))
    with pytest.raises(UserError, match="is not a readable student file"):
        load_student(run)
    torch.save({"body.0.weight": Exploit(marker)}, tmp_path / "student.pt")
    with pytest.raises(UserError, match="is not a readable student file"):
        load_student(tmp_path / "student.pt")


def test_checkpoint_holding_code_is_refused_by_the_loader(tmp_path, marker):
    path = tmp_path / "ann.pt"
    torch.save({"model": Exploit(marker), "epoch": 1}, path)
    with pytest.raises(UserError, match=f"checkpoint {path} cannot be read"):
        load_checkpoint(path)
    # a stage's weights file (teacher.safetensors / ann.safetensors) is safetensors: never unpickled
    path = tmp_path / "ann.safetensors"
    path.write_bytes(pickle.dumps(Exploit(marker)))
    with pytest.raises(UserError, match="is not a readable weights file"):
        read_weights(path)


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_train_resume_refuses_a_planted_checkpoint(tmp_path, marker, capsys, restore_threads):
    options = dict(
        dataset="digits",
        student="tiny",
        student_width=0.25,
        method="conversion",
        chance_guard=False,
        train_samples=32,
        test_samples=8,
        batch_size=16,
        ann_epochs=2,
        balance_batches=1,
        timesteps=2,
        threads=1,
        progress=False,
    )
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(config_to_json(make_config(out=str(run), **options)))
    torch.save({"model": Exploit(marker), "epoch": 1}, run / "checkpoints" / "ann.pt")
    assert main(["train", "--resume", "--out", str(run), *train_flags(options)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "ann.pt cannot be read" in err and "Traceback" not in err
    assert not (run / "student.safetensors").exists()


def test_cifar_batch_holding_code_is_refused(tmp_path, marker):
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    harmless = {"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1]}
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "batches.meta"]:
        (base / name).write_bytes(pickle.dumps(harmless))
    (base / "test_batch").write_bytes(pickle.dumps({"data": Exploit(marker), "labels": [0]}))
    assert len(load_split("cifar10", tmp_path, "train")) == 10  # the plain arrays of a real batch still load
    refusal = "is a corrupt batch file (UnpicklingError: refused to load posix.system: a data batch holds arrays"
    with pytest.raises(UserError, match=re.escape(refusal)):  # refused by the loader before any code ran
        load_split("cifar10", tmp_path, "test")


def test_mnist_legacy_torch_files_holding_code_are_refused(tmp_path, marker):
    processed = tmp_path / "MNIST" / "processed"
    processed.mkdir(parents=True)
    for name in ("training.pt", "test.pt"):  # torchvision reads these before the raw files when present
        torch.save(Exploit(marker), processed / name)
    with pytest.raises(UserError, match="MNIST"):
        load_split("mnist", tmp_path, "test")


def test_yaml_config_with_a_python_tag_is_refused(tmp_path, marker, capsys):
    config = tmp_path / "options.yaml"
    config.write_text(f'timesteps: !!python/object/apply:os.system ["touch {marker}"]\n')
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run")]) == 2
    assert "is not valid" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def _unsafe_loads(source: str) -> list[str]:
    """Calls in ``source`` that can run code from a file: torch.load without weights_only=True,
    pickle/dill/joblib loaders, yaml's unsafe loaders, np.load(allow_pickle=True)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
        ):
            continue
        owner, name = node.func.value.id, node.func.attr
        keywords = {k.arg: k.value for k in node.keywords}

        def flag(key, keywords=keywords):
            return isinstance(keywords.get(key), ast.Constant) and keywords[key].value is True

        if (
            owner == "torch"
            and name == "load"
            and not flag("weights_only")
            or owner in ("pickle", "dill", "joblib", "cloudpickle")
            and name in ("load", "loads", "Unpickler")
            or owner == "yaml"
            and name in ("load", "unsafe_load", "full_load", "load_all")
            or owner in ("np", "numpy")
            and name == "load"
            and flag("allow_pickle")
        ):
            found.append(f"line {node.lineno}: {owner}.{name}")
    return found


def test_no_module_loads_files_with_a_code_running_loader():
    root = Path(__file__).parents[1]
    sources = [p for folder in ("lasnn_deploy", "exporters", "hw_targets") for p in (root / folder).rglob("*.py")]
    assert len(sources) > 20
    offending = {str(p.relative_to(root)): bad for p in sources if (bad := _unsafe_loads(p.read_text()))}
    assert offending == {}
    assert _unsafe_loads("import torch, pickle\ntorch.load(f)\npickle.loads(b)\ntorch.load(f, weights_only=True)") == [
        "line 2: torch.load",
        "line 3: pickle.loads",
    ]  # the scan itself finds what it looks for


# -- (b) atomic writes -------------------------------------------------------------------------------
class Interrupted(KeyboardInterrupt):
    """What Ctrl-C raises, from inside a writer, after it wrote part of the file."""


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or p.suffix == ".tmp")


def _interrupt_after_half(real):
    """Wrap a writer ``real(..., path)``: let it write, cut the file to half, then raise Interrupted."""

    def writer(*args, **kwargs):
        real(*args, **kwargs)
        path = next(Path(a) for a in [*args, *kwargs.values()] if isinstance(a, (str, os.PathLike)))
        size = path.stat().st_size
        with open(path, "r+b") as f:
            f.truncate(size // 2)
        raise Interrupted

    return writer


@pytest.mark.parametrize("old", [True, False], ids=["over-an-old-file", "into-an-empty-folder"])
def test_interrupted_nir_export_leaves_the_old_file_or_none(tmp_path, monkeypatch, old):
    target = tmp_path / "student.nir"
    if old:
        target.write_bytes(b"the previous export")
    monkeypatch.setattr(nir, "write", _interrupt_after_half(nir.write))
    with pytest.raises(Interrupted):
        export(make_student(), "nir", target)
    assert (target.read_bytes() == b"the previous export") if old else not target.exists()
    assert _leftovers(tmp_path) == []


def test_interrupted_onnx_and_student_writes_leave_the_old_file(tmp_path, monkeypatch):
    for name, write in (
        ("student.onnx", lambda p: export(make_student(), "onnx", p)),
        ("student.safetensors", lambda p: save_student(make_student(), p)),
    ):
        target = tmp_path / name
        target.write_bytes(b"old")
        with monkeypatch.context() as m:
            m.setattr(Path, "write_bytes", _interrupt_after_half(Path.write_bytes))
            import safetensors.torch

            m.setattr(safetensors.torch, "save_file", _interrupt_after_half(safetensors.torch.save_file))
            with pytest.raises(Interrupted):
                write(target)
        assert target.read_bytes() == b"old"
    assert _leftovers(tmp_path) == []


def test_interrupted_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "ann.pt"
    save_checkpoint(path, {"epoch": 1, "model": {"w": torch.arange(4.0)}})
    before = path.read_bytes()
    monkeypatch.setattr(torch, "save", _interrupt_after_half(torch.save))
    with pytest.raises(Interrupted):
        save_checkpoint(path, {"epoch": 2, "model": {"w": torch.zeros(10_000)}})
    monkeypatch.undo()
    assert path.read_bytes() == before and load_checkpoint(path)["epoch"] == 1
    assert _leftovers(path.parent) == []


SLOW_WRITER = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("atomic", sys.argv[1])  # stdlib only: no torch import
atomic = importlib.util.module_from_spec(spec)
spec.loader.exec_module(atomic)
with atomic.atomic_path(sys.argv[2]) as tmp, open(tmp, "wb") as f:
    for _ in range(2000):
        f.write(b"new!" * 250_000)
        f.flush()
        time.sleep(0.01)
"""


def test_sigkill_while_writing_leaves_the_old_file_and_the_next_write_sweeps_up(tmp_path):
    import lasnn_deploy.atomic as atomic

    target = tmp_path / "energy.json"
    target.write_text("old")
    child = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, atomic.__file__, str(target)])
    deadline = time.monotonic() + 120
    while not any(p.stat().st_size > 5_000_000 for p in tmp_path.glob(".energy.json.*.tmp")):
        assert child.poll() is None and time.monotonic() < deadline, "the writer ended before it could be killed"
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert target.read_text() == "old"
    leftover = _leftovers(tmp_path)
    assert len(leftover) == 1 and leftover[0].startswith(".energy.json.")  # hidden, never under the target's name
    with atomic_path(tmp_path / "other.json") as tmp:  # any later write in the folder removes it
        tmp.write_text("{}")
    assert _leftovers(tmp_path) == []


# -- (c) kill -9 during training, then --resume ------------------------------------------------------
RESUME_OPTIONS = dict(
    dataset="digits",
    student="tiny",
    student_width=0.5,
    method="hybrid",
    encoding="poisson",
    chance_guard=False,
    train_samples=480,
    test_samples=40,
    batch_size=32,
    ann_epochs=2,
    ann_optimizer="adam",
    ann_lr=1e-3,
    student_epochs=4,
    student_lr=1e-3,
    balance_batches=2,
    timesteps=3,
    threads=1,
    seed=3,
)


def _train_argv(run: Path, *extra: str) -> list[str]:
    return [str(EXE), "train", "--out", str(run), "--no-progress", *extra, *train_flags(RESUME_OPTIONS)]


@pytest.mark.slow
def test_sigkill_during_training_then_resume_gives_the_uninterrupted_weights(tmp_path, restore_threads):
    from lasnn_deploy.training import train

    killed_run, log = tmp_path / "killed", tmp_path / "killed.log"
    with open(log, "w") as stderr:
        child = subprocess.Popen(_train_argv(killed_run), stdout=subprocess.DEVNULL, stderr=stderr)
    checkpoint = killed_run / "checkpoints" / "finetune.pt"
    deadline = time.monotonic() + 400
    while not checkpoint.is_file():  # the first of four fine-tuning epochs is done
        assert child.poll() is None, f"training ended before it could be killed: {log.read_text()}"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL
    assert not (killed_run / "student.safetensors").exists() and not (killed_run / "metrics.json").exists()
    killed_at = load_checkpoint(checkpoint)["epoch"]
    assert 1 <= killed_at < RESUME_OPTIONS["student_epochs"]

    # the uninterrupted reference, in this process (same code, one thread, CPU)
    reference = train(out=str(tmp_path / "whole"), progress=False, **RESUME_OPTIONS)

    resumed = subprocess.run(_train_argv(killed_run, "--resume"), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    whole, again = load_file(str(reference / "student.safetensors")), load_file(str(killed_run / "student.safetensors"))
    assert whole.keys() == again.keys()
    for key in whole:
        assert torch.equal(whole[key], again[key]), f"{key} differs after kill -9 and --resume"
    a, b = (json.loads((f / "metrics.json").read_text()) for f in (reference, killed_run))
    assert a["test_accuracy"] == b["test_accuracy"] and a["spikes_per_sample"] == b["spikes_per_sample"]
    assert not (killed_run / "checkpoints" / "finetune.pt").exists()  # finished stages drop their checkpoint
    assert [p for p in killed_run.rglob("*") if p.name.endswith(".tmp")] == []
