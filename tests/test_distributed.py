"""Data-parallel training against one process: 2 gloo processes on CPU, then torchrun itself.

Two processes with per-process batch B/2 must reach the weights of one process with batch B after
every stage (teacher with synchronised batch norm, intermediate ANN, conversion, lasnn and tssd
fine-tuning), balance the same thresholds, measure the same test counts, write files from rank 0
only, and resume across a restart. Dropout and augmentation are off and the encoding is direct, as
their random draws differ per process by design. The comparison runs in float64 so that summation
order (all-reduce, smaller batches) stays far below the 1e-5 tolerance and no spike flips at a
threshold; conversion from the same ANN file is compared bit for bit.
"""

from __future__ import annotations

import faulthandler
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from helpers import train_flags
from safetensors.torch import load_file

from lasnn_deploy.errors import UserError
from lasnn_deploy.training import train

BASE = dict(
    dataset="digits",
    student="tiny",
    student_width=0.5,
    student_dropout=0.0,
    teacher="small-cnn",
    chance_guard=False,
    train_samples=102,  # 11 held out for validation, then 5 global batches of 16 and one of 11: halves 6 and 5
    test_samples=40,  # 3 test batches of 16: one process evaluates 1, the other 2
    batch_size=16,
    eval_batch_size=16,
    teacher_epochs=1,
    ann_epochs=2,
    student_epochs=1,
    student_samples=75,  # the first 75 of each epoch's order: again an odd last batch
    teacher_optimizer="adam",
    ann_optimizer="adam",
    teacher_lr=1e-3,
    ann_lr=1e-3,
    student_lr=1e-3,
    balance_batches=3,  # one process balances on 1 batch, the other on 2
    timesteps=3,
    progress=False,
    threads=1,
)
LASNN = dict(BASE, method="lasnn")
TSSD = dict(BASE, method="tssd", tssd_timesteps=5)
WRITES = ("tempfile.mkstemp", "os.rename", "os.remove", "os.mkdir", "os.rmdir", "shutil.rmtree")
WATCHDOG = 300  # seconds
LOOPBACK = "lo"  # the tests talk to this machine only
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


class _Stop(Exception):
    pass


def _stop_after_first_ann_epoch(stage: str, epoch: int) -> None:
    if stage == "ann" and epoch == 1:
        raise _Stop


def _free_ports(count: int) -> list[int]:
    """``count`` distinct free ports: all held open while choosing, so no job reuses another's port
    (a port closed moments ago may still be in TIME_WAIT and refuse the next job's store)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _watch_writes(root: str, seen: list[str]):
    """An audit hook recording every file-system change under ``root`` (Python-level writes)."""

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writes = any(c in (mode or "") for c in "wax+") or (
                mode is None and isinstance(flags, int) and flags & WRITE_FLAGS
            )
            targets = [path] if writes else []
        elif event in WRITES:
            targets = list(args)
        else:
            return
        paths = [os.fsdecode(t) for t in targets if isinstance(t, (str, bytes, os.PathLike))]
        seen.extend(p for p in paths if p.startswith(root))

    return hook


def _worker(rank: int, world: int, jobs: list[dict], root: str, stacks: str) -> None:
    """One torchrun-like process: the variables torchrun sets, float64, then ``train`` per job.

    Each job gets its own rendezvous port (a store just closed may still hold its port), and gloo
    talks over the loopback device only (``GLOO_SOCKET_IFNAME``), whatever the host name resolves
    to. A process still running after WATCHDOG seconds, such as one stuck in a collective, writes
    its stack to ``stacks`` and exits, which fails the launch with that stack instead of blocking
    the suite.
    """
    watchdog = open(Path(stacks) / f"rank{rank}.txt", "w")  # kept open until the process ends
    faulthandler.dump_traceback_later(WATCHDOG, exit=True, file=watchdog)
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        GLOO_SOCKET_IFNAME=LOOPBACK,
    )
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    seen: list[str] = []
    if rank:
        sys.addaudithook(_watch_writes(root, seen))
    for job in jobs:
        options = dict(job)
        os.environ["MASTER_PORT"] = str(options.pop("port"))
        if options.get("resume") and not options.get("expect"):
            assert (Path(options["out"]) / "checkpoints" / "ann.pt").is_file()
        if "expect" in options:
            expected = options.pop("expect")
            try:
                train(**options)
            except UserError as err:
                assert expected in str(err), err
                continue
            raise AssertionError(f"no UserError {expected!r}")
        if options.pop("stop", False):
            try:
                train(on_epoch_end=_stop_after_first_ann_epoch, **options)
            except _Stop:
                continue
            raise AssertionError("the run was not interrupted")
        train(**options)
    if seen:
        raise AssertionError(f"rank {rank} changed files: {sorted(set(seen))}")


def _innermost(stack: str) -> str:
    """The innermost frames of a faulthandler dump's current thread, on one line."""
    frames = [line.strip() for line in stack.split("\n\n")[0].splitlines() if line.strip().startswith("File")]
    return " <- ".join(frames[:3]) or "no stack written"


def _launch(jobs: list[dict], root: Path, stacks: Path) -> None:
    """Both processes run ``jobs`` in turn; a process that exits without a Python error (the
    watchdog) fails with where each process was stuck on the first line."""
    ports = _free_ports(len(jobs))
    try:
        mp.spawn(
            _worker,
            args=(2, [dict(job, port=p) for job, p in zip(jobs, ports, strict=True)], str(root), str(stacks)),
            nprocs=2,
            join=True,
        )
    except mp.ProcessExitedException as err:
        dumps = {p.stem: p.read_text() for p in sorted(stacks.glob("rank*.txt"))}
        where = "; ".join(f"{rank} in {_innermost(text)}" for rank, text in dumps.items() if text)
        raise AssertionError(f"{err}: {where}\n" + "\n".join(dumps.values())) from err


def _in_float64(**options) -> Path:
    torch.set_default_dtype(torch.float64)
    try:
        return train(**options)
    finally:
        torch.set_default_dtype(torch.float32)


def _seeded(folder: Path, ann_from: Path) -> str:
    folder.mkdir(parents=True)
    shutil.copy(ann_from / "ann.safetensors", folder / "ann.safetensors")
    return str(folder)


def _assert_weights_close(a: Path, b: Path, rtol: float = 1e-5) -> float:
    """Every tensor of ``b`` within ``rtol`` of ``a`` relative to the largest entry; the worst ratio."""
    ta, tb = load_file(str(a)), load_file(str(b))
    assert ta.keys() == tb.keys()
    worst = 0.0
    for k in ta:
        if not ta[k].is_floating_point():
            assert torch.equal(ta[k], tb[k]), k
            continue
        err = float((ta[k].double() - tb[k].double()).abs().max() / ta[k].double().abs().max().clamp_min(1e-30))
        assert err <= rtol, f"{a.name} {k}: relative difference {err:.2e}"
        worst = max(worst, err)
    return worst


def _metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """One-process runs, then one launch of two processes running the same and the checks around them.

    In the two processes: a batch that does not split is refused, a one-process checkpoint is
    refused, lasnn is interrupted after its first ANN epoch and resumed by a new ``train`` call
    (state from the run folder only, as after a restart), and tssd starts from the one-process ANN.
    """
    root = tmp_path_factory.mktemp("ddp")
    one = {"lasnn": _in_float64(out=str(root / "one"), **LASNN)}
    one["tssd"] = _in_float64(out=_seeded(root / "one-tssd", one["lasnn"]), **TSSD)
    stopped = root / "one-stopped"
    with pytest.raises(_Stop):
        train(out=str(stopped), on_epoch_end=_stop_after_first_ann_epoch, **LASNN)
    two = {"lasnn": root / "two", "tssd": root / "two-tssd"}
    _launch(
        [
            dict(LASNN, out=str(root / "odd"), batch_size=15, expect="must divide by the 2 processes"),
            dict(LASNN, out=str(stopped), resume=True, expect="written by 1 process(es) but this run has 2"),
            dict(LASNN, out=str(two["lasnn"]), stop=True),
            dict(LASNN, out=str(two["lasnn"]), resume=True),
            dict(TSSD, out=_seeded(two["tssd"], one["lasnn"])),
        ],
        root,
        tmp_path_factory.mktemp("stacks"),
    )
    return {"root": root, **{f"one-{k}": v for k, v in one.items()}, **{f"two-{k}": v for k, v in two.items()}}


def test_two_processes_train_every_stage_to_the_weights_of_one(runs):
    for name in ("teacher", "ann", "converted", "student"):
        _assert_weights_close(runs["one-lasnn"] / f"{name}.safetensors", runs["two-lasnn"] / f"{name}.safetensors")
    one, two = _metrics(runs["one-lasnn"]), _metrics(runs["two-lasnn"])
    for key in (
        "teacher_test_accuracy",
        "ann_test_accuracy",
        "converted_test_accuracy",
        "test_accuracy",
        "spikes_per_sample",
        "converted_spikes_per_sample",
    ):
        assert one[key] == two[key], key
    assert one["thresholds"] == pytest.approx(two["thresholds"], rel=1e-12)
    for stage in ("teacher", "ann", "finetune"):
        a, b = one["stages"][stage]["history"], two["stages"][stage]["history"]
        assert [h["train_accuracy"] for h in a] == [h["train_accuracy"] for h in b], stage
        assert [h["loss"] for h in a] == pytest.approx([h["loss"] for h in b], rel=1e-9), stage
    assert two["stages"]["conversion"]["batches"] == 3


def test_conversion_from_the_same_ann_gives_identical_thresholds_and_tssd_matches(runs):
    one, two = _metrics(runs["one-tssd"]), _metrics(runs["two-tssd"])
    assert one["stages"]["conversion"]["thresholds"] == two["stages"]["conversion"]["thresholds"]  # bit for bit
    assert torch.equal(
        load_file(str(runs["one-tssd"] / "converted.safetensors"))["thresholds"],
        load_file(str(runs["two-tssd"] / "converted.safetensors"))["thresholds"],
    )
    _assert_weights_close(runs["one-tssd"] / "student.safetensors", runs["two-tssd"] / "student.safetensors")
    assert one["test_accuracy"] == two["test_accuracy"] and one["spikes_per_sample"] == two["spikes_per_sample"]


def test_the_resumed_run_cleaned_up_and_left_no_temporaries(runs):
    folder = runs["two-lasnn"]
    assert not (folder / "checkpoints").exists()
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [
            "ann.safetensors",
            "config.json",
            "converted.safetensors",
            "metrics.json",
            "progress.json",
            "student.safetensors",
            "teacher.safetensors",
        ]
    )


@pytest.mark.slow  # one more launch of two processes, each importing torch
def test_torchrun_cli_converts_to_the_thresholds_of_one_process(runs, tmp_path):
    """``torchrun -m lasnn_deploy train`` in float32, from the same ANN file as a one-process run."""
    options = dict(BASE, method="conversion")
    reference = train(out=_seeded(tmp_path / "one", runs["one-lasnn"]), **options)
    folder = _seeded(tmp_path / "two", runs["one-lasnn"])
    flags = train_flags(options)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "lasnn_deploy",
        "train",
        *flags,
        "--no-progress",
        f"--out={folder}",
    ]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": LOOPBACK},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = _metrics(reference), _metrics(Path(folder))
    assert one["thresholds"] == two["thresholds"]
    for key in ("converted_test_accuracy", "test_accuracy", "spikes_per_sample"):
        assert one[key] == two[key], key


def test_inconsistent_launch_settings_are_user_errors(monkeypatch, tmp_path):
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(UserError, match="LOCAL_RANK, WORLD_SIZE unset"):
        train(out=str(tmp_path / "a"), **BASE)
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match="every process on one GPU"):
        train(out=str(tmp_path / "b"), device="cuda:1", **BASE)
    monkeypatch.setenv("WORLD_SIZE", "x")
    with pytest.raises(UserError, match="must be integers"):
        train(out=str(tmp_path / "c"), **BASE)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
