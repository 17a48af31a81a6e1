"""The training pipeline on digits with tiny schedules: methods, run folder, resume, configuration."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch.utils.data import Subset

from lasnn_deploy.data import load_split
from lasnn_deploy.errors import UserError
from lasnn_deploy.evaluation import evaluate_student
from lasnn_deploy.student import SpikingStudent, load_student
from lasnn_deploy.training import METHODS, PRESETS, add_train_arguments, config_from_args, losses, make_config, train
from lasnn_deploy.training.config import FIELDS
from lasnn_deploy.training.objectives import FineTune

TINY = dict(
    dataset="digits",
    student="tiny",
    student_width=0.5,
    teacher="small-cnn",
    train_samples=96,
    test_samples=40,
    batch_size=32,
    teacher_epochs=1,
    ann_epochs=1,
    student_epochs=1,
    teacher_optimizer="adam",
    ann_optimizer="adam",
    teacher_lr=1e-3,
    ann_lr=1e-3,
    student_lr=1e-3,
    balance_batches=2,
    timesteps=3,
    progress=False,
    threads=1,  # several test processes share few cores: more threads only thrash
    chance_guard=False,  # a few images for a few steps: smoke tests, not results
)
METRIC_KEYS = {
    "method",
    "dataset",
    "timesteps",
    "encoding",
    "teacher_test_accuracy",
    "ann_test_accuracy",
    "converted_test_accuracy",
    "test_accuracy",
    "spikes_per_sample",
    "train_seconds",
    "stages",
}


@pytest.fixture(scope="module")
def shared_run(tmp_path_factory) -> Path:
    """One lasnn run whose teacher and intermediate ANN the other runs reuse."""
    return train(out=str(tmp_path_factory.mktemp("base") / "run"), method="lasnn", **TINY)


def _seeded_folder(base: Path, folder: Path) -> Path:
    folder.mkdir(parents=True)
    for name in ("teacher.safetensors", "ann.safetensors"):
        shutil.copy(base / name, folder / name)
    return folder


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_and_writes_the_run_folder(method, shared_run, tmp_path):
    folder = _seeded_folder(shared_run, tmp_path / method)
    assert train(out=str(folder), method=method, **TINY) == folder
    metrics = json.loads((folder / "metrics.json").read_text())
    assert METRIC_KEYS <= set(metrics)
    assert metrics["method"] == method and metrics["dataset"] == "digits" and metrics["timesteps"] == 3
    for key in ("ann_test_accuracy", "converted_test_accuracy", "test_accuracy"):  # fractions of the 40 test images
        assert (
            metrics[key] * TINY["test_samples"] == round(metrics[key] * TINY["test_samples"]) and 0 <= metrics[key] <= 1
        )
    test_images = Subset(load_split("digits", None, "test"), range(TINY["test_samples"]))
    assert metrics["test_accuracy"] == evaluate_student(load_student(folder), test_images)["test_accuracy"]
    assert metrics["spikes_per_sample"] > 0 and metrics["train_seconds"] > 0
    assert metrics["stages"]["ann"]["loaded"] is True  # reused from the copied file
    needs_teacher = method in ("kd", "hetero-kd", "lasnn", "lasnn-grad")
    assert (metrics["teacher_test_accuracy"] is not None) == needs_teacher
    if method == "conversion":
        assert metrics["test_accuracy"] == metrics["converted_test_accuracy"]
        assert "finetune" not in metrics["stages"]
    else:
        assert metrics["stages"]["finetune"]["epochs"] == 1
    # the saved student is the plain student (no TSSD heads), loadable without code
    student = load_student(folder)
    plain = SpikingStudent(student.config).state_dict()
    saved = load_file(str(folder / "student.safetensors"))
    assert {k: v.shape for k, v in saved.items()} == {k: v.shape for k, v in plain.items()}
    assert student.leak.item() <= 1.0 and (student.thresholds > 0).all()
    assert not (folder / "checkpoints" / "finetune.pt").exists()


def test_converted_thresholds_are_recorded(shared_run):
    metrics = json.loads((shared_run / "metrics.json").read_text())
    converted = load_student(shared_run / "converted.safetensors")
    assert metrics["stages"]["conversion"]["thresholds"] == pytest.approx(converted.thresholds.tolist())
    assert converted.leak.item() == 1.0


@pytest.mark.parametrize("encoding", ["direct", "poisson"])
def test_tssd_student_is_the_first_t_steps_of_the_long_run_and_heads_stay_outside(encoding):
    """One T'-step run serves both outputs: its first T steps must be what inference computes."""
    from lasnn_deploy.models import build_student

    torch.manual_seed(0)
    student = (
        SpikingStudent(
            build_student("tiny", (1, 16, 16), 10, timesteps=3, width=0.5, encoding=encoding), thresholds=[0.2, 0.2]
        )
        .double()
        .eval()
    )
    objective = FineTune(student, "tssd", make_config(method="tssd", tssd_timesteps=7, **TINY)).double()
    assert objective.method.head_level == 1  # one weak classifier, at the middle of the tiny student's two conv levels
    assert set(student.state_dict()) == set(SpikingStudent(student.config).state_dict())
    assert {"head.weight", "head.bias"} <= set(objective.state_dict())
    x, y = torch.rand(4, 1, 16, 16, dtype=torch.float64), torch.randint(0, 10, (4,))
    _, logits = objective(x, y, seed=5)
    assert torch.equal(logits, student.run(x, seed=5).logits)
    assert not torch.equal(logits, student.run(x, timesteps=7, seed=5).logits)  # T' steps really ran


def test_tssd_loss_is_ce_on_both_outputs_plus_temporal_kd_while_the_heads_are_zero():
    """At the first step the student's gradient comes from CE on the T- and T'-step outputs and
    the temporal term; fresh weak classifiers must not push random gradients into a converted
    student. The reference runs T and T' steps separately, in float64."""
    from lasnn_deploy.models import build_student

    torch.manual_seed(0)
    student = SpikingStudent(build_student("tiny", (1, 16, 16), 10, timesteps=3, width=0.5), thresholds=[0.2, 0.2])
    student = student.double().eval()  # dropout off, so the reference runs see the same network
    x, y = torch.rand(6, 1, 16, 16, dtype=torch.float64), torch.randint(0, 10, (6,))
    tssd = FineTune(student, "tssd", make_config(method="tssd", **TINY)).double()
    loss, _ = tssd(x, y)
    loss.backward()
    assert float(tssd.head.weight.detach().abs().sum()) == 0.0
    assert float(tssd.head.weight.grad.abs().sum()) > 0  # the head does learn
    got = [p.grad.clone() for p in student.parameters()]
    student.zero_grad()
    cfg = tssd.cfg
    short, long = student(x), student(x, timesteps=6)
    temporal = losses.kd_loss(short, long.detach(), cfg.tssd_temperature, cfg.tssd_temperature)
    (F.cross_entropy(short, y) + F.cross_entropy(long, y) + cfg.kd_weight * temporal).backward()
    for g, p in zip(got, student.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad)


class _Stop(Exception):
    pass


RESUME = dict(
    TINY,
    student="3conv2linear",
    student_width=0.125,
    encoding="poisson",
    teacher_epochs=2,
    ann_epochs=2,
    student_epochs=2,
    method="lasnn",
)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    return train(out=str(tmp_path_factory.mktemp("whole") / "run"), **RESUME)


@pytest.mark.parametrize("stop_stage", ["ann", "finetune"])
def test_resume_after_an_interrupted_stage_gives_identical_weights(stop_stage, uninterrupted, tmp_path):
    folder = tmp_path / "run"

    def stop(stage: str, epoch: int) -> None:
        if stage == stop_stage and epoch == 1:
            raise _Stop

    with pytest.raises(_Stop):
        train(out=str(folder), on_epoch_end=stop, **RESUME)
    assert (folder / "checkpoints" / f"{stop_stage}.pt").is_file()
    assert not (folder / "metrics.json").exists()
    train(out=str(folder), resume=True, **RESUME)
    whole = load_file(str(uninterrupted / "student.safetensors"))
    resumed = load_file(str(folder / "student.safetensors"))
    assert whole.keys() == resumed.keys()
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    a, b = (json.loads((f / "metrics.json").read_text()) for f in (uninterrupted, folder))
    assert a["test_accuracy"] == b["test_accuracy"] and a["spikes_per_sample"] == b["spikes_per_sample"]


def test_resume_refuses_changed_options_and_empty_folders(shared_run, tmp_path):
    with pytest.raises(UserError, match="timesteps"):
        train(out=str(shared_run), resume=True, **dict(TINY, timesteps=4))
    with pytest.raises(UserError, match="nothing to resume"):
        train(out=str(tmp_path / "empty"), resume=True, **TINY)


def test_resume_reads_an_option_newer_than_the_run_as_its_default(shared_run, tmp_path):
    """A run folder written before an option existed resumes with that option at its default, and
    only then: the option set otherwise is a change like any other."""
    folder = tmp_path / "older"
    shutil.copytree(shared_run, folder)
    config = json.loads((folder / "config.json").read_text())
    del config["per_step_loss"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="differ from the run .*: per_step_loss;"):
        train(out=str(folder), resume=True, **dict(TINY, per_step_loss=True))
    assert train(out=str(folder), resume=True, **TINY) == folder


def test_resuming_a_checkpoint_of_another_objective_is_one_clear_error(shared_run, tmp_path):
    """An epoch checkpoint from an older tssd (three weak classifiers) is refused by name, not a traceback."""
    folder = _seeded_folder(shared_run, tmp_path / "old-tssd")
    options = dict(TINY, method="tssd", student_epochs=2)

    def stop(stage: str, epoch: int) -> None:
        if stage == "finetune" and epoch == 1:
            raise _Stop

    with pytest.raises(_Stop):
        train(out=str(folder), on_epoch_end=stop, **options)
    path = folder / "checkpoints" / "finetune.pt"
    state = torch.load(path, weights_only=True)
    state["model"]["heads.2.weight"] = torch.zeros(10, 4)  # a parameter this version's objective lacks
    torch.save(state, path)
    with pytest.raises(UserError, match=r"finetune\.pt does not fit this stage .*heads\.2\.weight.*delete it"):
        train(out=str(folder), resume=True, **options)
    torch.save([state["epoch"]], path)  # readable, but not a checkpoint at all
    with pytest.raises(UserError, match=r"finetune\.pt holds a list, not a stage checkpoint"):
        train(out=str(folder), resume=True, **options)
    assert not (folder / "student.safetensors").exists()


def test_a_teacher_file_for_another_architecture_is_refused(shared_run, tmp_path):
    folder = _seeded_folder(shared_run, tmp_path / "other")
    with pytest.raises(UserError, match="teacher.safetensors holds weights trained for another teacher.*resnet20"):
        train(out=str(folder), method="kd", **dict(TINY, teacher="resnet20"))


# -- configuration -------------------------------------------------------------------------------
def _parse(argv: list[str]) -> argparse.Namespace:
    return add_train_arguments(argparse.ArgumentParser()).parse_args(argv)


def test_config_file_with_an_unknown_key_is_a_user_error(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("timesteps: 4\nlearning_rate: 0.1\n")
    with pytest.raises(UserError, match="unknown key 'learning_rate'"):
        config_from_args(_parse(["--config", str(path), "--out", "x"]))


def test_config_file_with_a_wrong_type_is_a_user_error(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('batch-size = "large"\n')
    with pytest.raises(UserError, match="'batch-size' must be an integer"):
        config_from_args(_parse(["--config", str(path), "--out", "x"]))


def test_flags_override_the_file_which_overrides_the_preset(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('preset = "quick"\ntimesteps = 3\nbatch-size = 16\nstudent_lr = 1\nmethod = "kd"\n')
    cfg = config_from_args(_parse(["--config", str(path), "--timesteps", "5", "--out", "runs/x", "--no-progress"]))
    assert cfg.timesteps == 5 and cfg.batch_size == 16 and cfg.method == "kd" and cfg.out == "runs/x"
    assert cfg.student_lr == 1.0 and isinstance(cfg.student_lr, float)
    assert cfg.teacher_steps == PRESETS["quick"]["teacher_steps"] and cfg.progress is False  # preset; flag
    assert make_config(preset="quick", ann_epochs=7).ann_epochs == 7
    assert make_config(preset="quick", ann_epochs=7).ann_steps is None  # epochs given outrank the preset's steps


def test_bad_options_are_user_errors():
    with pytest.raises(UserError, match="--out is required"):
        config_from_args(_parse(["--dataset", "digits"]))
    with pytest.raises(UserError, match="balance-percentile"):
        make_config(balance_percentile=0)
    with pytest.raises(UserError, match="tssd-timesteps"):
        make_config(timesteps=8, tssd_timesteps=8)
    with pytest.raises(UserError, match="unknown training option"):
        make_config(epochs=3)
    with pytest.raises(SystemExit):
        _parse(["--method", "magic"])


def test_every_option_has_a_flag_with_help():
    actions = {a.dest: a for a in add_train_arguments(argparse.ArgumentParser())._actions}
    for name in FIELDS:
        assert f"--{name.replace('_', '-')}" in actions[name].option_strings and actions[name].help.strip(), name
    text = add_train_arguments(argparse.ArgumentParser()).format_help()
    for flag in (
        "--balance-percentile",
        "--teacher-temperature",
        "--student-temperature",
        "--kd-weight",
        "--tssd-timesteps",
        "--resume",
        "--config",
        "--preset",
    ):
        assert flag in text
    assert "quick: 3300" in text
