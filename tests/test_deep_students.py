"""Issue 27's pieces: the hard-reset rate activation, the chance guard, energy-aware selection, the
deep students' preset choices and the KD readout scale."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from lasnn_deploy.errors import UserError
from lasnn_deploy.models import build_student
from lasnn_deploy.neurons import lif_reference
from lasnn_deploy.student import SpikingStudent, load_student
from lasnn_deploy.training import make_config, train
from lasnn_deploy.training.config import preset_choices
from lasnn_deploy.training.conversion import calibrate_biases, convert
from lasnn_deploy.training.intermediate import AnnTeacher, IntermediateAnn, fold_batch_norm, hard_reset_rate
from lasnn_deploy.training.loop import Score, fewest_spikes
from lasnn_deploy.training.methods import Hybrid, attention_levels, teacher_maps
from lasnn_deploy.training.scoring import check_above_chance


@pytest.mark.parametrize("timesteps", [1, 3, 4, 8, 13])
@pytest.mark.parametrize("threshold", [0.25, 1.0, 4.0])  # powers of two: theta / 2^j is exact
def test_rate_activation_is_the_hard_reset_neurons_spike_count(timesteps, threshold):
    """For a constant input, ``T / clip * a`` equals the spikes of a simulated hard-reset IF neuron.

    Random inputs (seeded) from below zero to 2.5 thresholds, and the boundaries ``theta / 2^j``, where
    the strict ``u > theta`` decides (the sums are exact there): ``theta / 2`` fires on the third step.
    """
    z = (torch.rand(400, generator=torch.Generator().manual_seed(timesteps), dtype=torch.float64) * 3 - 0.5) * threshold
    z = torch.cat([z, threshold / torch.tensor([1.0, 2.0, 4.0, 8.0], dtype=torch.float64)])
    rate = hard_reset_rate(z, torch.tensor(threshold, dtype=torch.float64), timesteps)
    spikes = torch.from_numpy(lif_reference(z.expand(timesteps, -1).numpy(), 1.0, threshold, "hard").sum(0))
    assert torch.equal(torch.round(rate * timesteps / threshold), spikes)
    assert torch.allclose(rate * timesteps / threshold, spikes, rtol=0, atol=1e-12)
    assert len(set(spikes.tolist())) >= min(timesteps + 1, 3)  # several spike counts are exercised


def test_rate_activation_passes_the_clamped_gradient():
    z = torch.tensor([-1.0, 0.5, 1.5, 3.0], requires_grad=True)
    clip = torch.tensor(2.0, requires_grad=True)
    hard_reset_rate(z, clip, 4).sum().backward()
    assert z.grad.tolist() == [0.0, 1.0, 1.0, 0.0] and float(clip.grad) == 1.0


def test_a_rate_ann_converts_exactly_for_a_one_layer_direct_student():
    """One LIF layer fed the image at every step: the converted student computes the rate ANN exactly."""
    torch.manual_seed(0)
    config = build_student("mlp", (1, 8, 8), 10, width=0.25, timesteps=5, bias=True, dropout=0.0)
    ann = IntermediateAnn(SpikingStudent(config), "rate").double().eval()
    ann.clips.data.fill_(1.5)
    for norm in ann.norms.values():
        norm.running_var.fill_(0.5)
    student = SpikingStudent(config).double()
    fold_batch_norm(ann, student)
    x = torch.rand(16, 1, 8, 8, dtype=torch.float64)
    convert(student, [x], clips=ann.clips.tolist(), shift=False)
    with torch.no_grad():
        assert torch.allclose(student.run(x).logits, ann(x), atol=1e-9)


def test_the_chance_guard_names_stage_accuracy_chance_and_a_fix():
    check_above_chance("ann", 0.2, 500, 10)  # clearly above chance: no error
    with pytest.raises(
        UserError,
        match=r"the ann stage ended near chance: validation accuracy 0\.1100 against chance 0\.1000 .*try --intermediate",
    ):
        check_above_chance("ann", 0.11, 500, 10)


# a kd run on digits with a small-cnn teacher: each test sets its ANN and lengths
KD_ON_DIGITS = dict(
    dataset="digits",
    student="tiny",
    teacher="small-cnn",
    method="kd",
    teacher_optimizer="adam",
    teacher_lr=2e-3,
    student_epochs=1,
    progress=False,
    threads=1,
)


def test_a_diverging_stage_stops_the_run_with_exit_2_and_keeps_what_finished(tmp_path):
    """An intermediate ANN blown up by its rate ends at chance: UserError, no ANN file, the teacher kept."""
    with pytest.raises(UserError, match="the ann stage ended near chance"):
        train(
            **KD_ON_DIGITS,
            student_width=0.25,
            teacher_epochs=2,
            ann_epochs=1,
            ann_optimizer="sgd",
            ann_lr=1e6,  # diverges
            timesteps=2,
            out=str(tmp_path / "run"),
        )
    assert (tmp_path / "run" / "teacher.safetensors").is_file()
    assert not (tmp_path / "run" / "ann.safetensors").exists()
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_fewest_spikes_within_the_tolerance_and_the_most_accurate_outside_it():
    scores = [Score(0.90, 0.30, 900.0), Score(0.92, 0.25, 1000.0), Score(0.915, 0.26, 600.0), Score(0.80, 0.9, 10.0)]
    assert fewest_spikes(scores, 0.01) == 2  # 0.915 is within a point of 0.92 and fires least
    assert fewest_spikes(scores, 0.001) == 1  # outside the tolerance: the most accurate
    assert fewest_spikes(scores, 0.0) == 1


@pytest.mark.parametrize("student", ["resnet12", "vgg16"])
def test_the_quick_preset_chooses_for_deep_students_and_records_it(student):
    config = make_config(preset="quick", student=student)
    choices = preset_choices("quick", student)
    assert choices["intermediate"] == "rate" and choices["augment"]
    assert all(getattr(config, k) == v for k, v in choices.items())
    assert make_config(preset="quick", student=student, intermediate="bn").intermediate == "bn"  # a flag wins
    assert config.student_back_off is None and config.patience is None  # the whole cosine schedule
    assert make_config(preset="quick", student=student, student_back_off=0.2).student_back_off == 0.2
    shallow = make_config(preset="quick", student="3conv2linear")
    assert (shallow.student_back_off, shallow.patience) == (0.2, 3)
    assert preset_choices("quick", "3conv2linear") == {}


def test_kd_starts_from_logits_as_wide_as_the_teachers(tmp_path):
    run = train(
        **KD_ON_DIGITS,
        student_width=0.5,
        teacher_epochs=3,
        ann_epochs=2,
        ann_optimizer="adam",
        ann_lr=2e-3,
        student_samples=64,
        timesteps=4,
        out=str(tmp_path / "kd"),
    )
    prepared = json.loads((run / "metrics.json").read_text())["stages"]["finetune"]["prepared"]
    assert prepared["readout_scale"] > 0 and prepared["readout_scale"] != 1.0


def test_bias_calibration_closes_the_rate_shortfall_of_a_deep_layer():
    """After one pass each layer's mean per-channel rate sits closer to its ANN's activation than before."""
    torch.manual_seed(3)
    config = build_student("vgg5", (1, 8, 8), 10, width=0.25, timesteps=4, bias=True, dropout=0.0)
    ann = IntermediateAnn(SpikingStudent(config), "rate").eval()
    ann.clips.data.fill_(1.0)
    student = SpikingStudent(config)
    fold_batch_norm(ann, student)
    x = torch.rand(64, 1, 8, 8)
    convert(student, [x], clips=ann.clips.tolist(), shift=False)
    activations: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        ann(x, record=activations)

    def shortfall() -> list[float]:
        with torch.no_grad():
            spikes = student.run(x, record=True).spikes
        return [
            float((activations[k] - s.mean(0)).transpose(0, 1).flatten(1).mean(1).abs().mean())
            for k, s in enumerate(spikes)
        ]

    before = shortfall()
    calibrate_biases(student, [activations], [x])
    after = shortfall()
    assert before[0] == pytest.approx(after[0])  # the first layer sees the image itself: nothing to correct
    assert all(a < b for a, b in zip(after[1:], before[1:], strict=True)), (before, after)


def test_fine_tuning_a_rate_student_keeps_its_if_neurons(tmp_path):
    run = train(
        dataset="digits",
        student="tiny",
        student_width=0.5,
        method="hybrid",
        intermediate="rate",
        ann_epochs=2,
        ann_optimizer="adam",
        ann_lr=2e-3,
        student_epochs=1,
        student_samples=64,
        student_lr=1e-2,
        timesteps=4,
        progress=False,
        threads=1,
        out=str(tmp_path / "rate"),
    )
    converted = load_student(run / "converted.safetensors")
    tuned = load_student(run / "student.safetensors")
    assert tuned.leak.item() == 1.0 and torch.equal(tuned.thresholds, converted.thresholds)
    assert not torch.equal(tuned.body[0].weight, converted.body[0].weight)  # the weights did train


def test_the_ann_teacher_pairs_each_attention_level_with_the_same_ann_layer():
    """``--teacher ann``: level ``k`` of the student meets the intermediate ANN's activation of LIF layer
    ``k`` (same shape), not the rank-paired low/mid/high maps of another teacher; the teacher is frozen."""
    torch.manual_seed(0)
    config = build_student("vgg5", (3, 16, 16), 10, width=0.25, timesteps=4, bias=True, dropout=0.0)
    ann = IntermediateAnn(SpikingStudent(config), "rate")
    student = SpikingStudent(config)
    teacher, levels = AnnTeacher(ann), attention_levels(student)
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        _, feats = teacher(x)
        spikes = student.run(x, record=True).spikes
        record: dict[int, torch.Tensor] = {}
        ann(x, record=record)
    maps = teacher_maps(teacher, feats, levels)
    assert len(feats) == len(spikes) > len(levels) == 3
    for k, m in zip(levels, maps, strict=True):
        assert m.shape == spikes[k].shape[1:] and torch.equal(m, record[k])
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


def test_with_the_ann_as_teacher_no_teacher_is_trained(tmp_path):
    run = train(**{**KD_ON_DIGITS, "method": "lasnn", "teacher": "ann"}, ann_epochs=1, out=str(tmp_path / "ann"))
    metrics = json.loads((run / "metrics.json").read_text())
    assert not (run / "teacher.safetensors").exists() and "teacher" not in metrics["stages"]
    assert metrics["teacher"] == "ann" and metrics["teacher_test_accuracy"] == metrics["ann_test_accuracy"]


def test_per_step_loss_is_each_steps_cross_entropy_averaged():
    """``--per-step-loss`` (TET): every method's label term is the mean over steps of each step's CE,
    not the CE of the mean output; without it, the CE of the mean."""
    torch.manual_seed(0)
    config = build_student("3conv2linear", (1, 8, 8), 4, width=0.25, timesteps=3, dropout=0.0)
    student = SpikingStudent(config)
    x, y = torch.rand(5, 1, 8, 8) * 30, torch.tensor([0, 1, 2, 3, 0])  # enough drive for the last LIF to fire
    trace = student.run(x)
    assert trace.outputs is not None
    by_step = torch.stack([torch.nn.functional.cross_entropy(o, y) for o in trace.outputs]).mean()
    for per_step, want in ((True, by_step), (False, torch.nn.functional.cross_entropy(trace.logits, y))):
        ft = SimpleNamespace(student=student, cfg=make_config(per_step_loss=per_step), teacher=None)
        got, logits = Hybrid().loss(ft, x, y, seed=0)
        assert torch.allclose(got, want) and torch.equal(logits, trace.logits)
    assert not torch.allclose(by_step, torch.nn.functional.cross_entropy(trace.logits, y))
