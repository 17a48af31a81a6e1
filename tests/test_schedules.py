"""Schedules that adapt to the data: the validation split, best-epoch selection, early stop, percentile choice."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from lasnn_deploy.training import loop, train
from lasnn_deploy.training.config import BALANCE_CANDIDATES
from lasnn_deploy.training.datasets import split_validation, validation_indices
from lasnn_deploy.training.loop import FitPlan, Score, Selection, fit, make_optimizer, make_scheduler


def test_validation_indices_partition_the_training_images_and_depend_only_on_the_seed():
    train_idx, val_idx = validation_indices(1000, 0.1, seed=5)
    assert len(val_idx) == 100 and len(train_idx) == 900
    assert not set(train_idx) & set(val_idx) and set(train_idx) | set(val_idx) == set(range(1000))
    assert train_idx == sorted(train_idx) and val_idx == sorted(val_idx)
    assert validation_indices(1000, 0.1, seed=5) == (train_idx, val_idx)
    assert validation_indices(1000, 0.1, seed=6)[1] != val_idx
    assert val_idx != list(range(900, 1000))  # a draw, not the last images


def test_training_batches_never_contain_a_validation_image(tmp_path, monkeypatch):
    """Every image a trained stage sees, over the whole run, is outside the validation split."""
    ids = torch.arange(300)
    data = TensorDataset(ids.float().view(-1, 1, 1, 1), ids % 10)
    train_set, val_set = split_validation(data, 0.2, seed=3)
    seen: set[int] = set()
    for epoch in range(3):
        order = loop.distributed.epoch_order(len(train_set), 7, epoch)
        for x, _ in loop.batches(train_set, order, 32):
            seen |= {int(v) for v in x.flatten()}
    held = {int(v) for v in val_set.tensors[0].flatten()}
    assert len(held) == 60 and not seen & held and seen | held == set(range(300))

    # the same through a real run: record what the epoch loop feeds the stages
    fed: list[torch.Tensor] = []
    real = loop.batches

    def recording(dataset, indices, batch_size):
        for x, y in real(dataset, indices, batch_size):
            fed.append(x.flatten(1).clone())
            yield x, y

    monkeypatch.setattr(loop, "batches", recording)
    options = dict(
        dataset="digits",
        student="tiny",
        student_width=0.25,
        teacher="small-cnn",
        chance_guard=False,
        train_samples=120,
        test_samples=20,
        batch_size=32,
        teacher_epochs=1,
        ann_epochs=1,
        student_epochs=1,
        timesteps=2,
        balance_batches=1,
        balance_percentile=99.0,
        method="kd",
        progress=False,
        threads=1,
        validation_fraction=0.25,
    )
    run = train(out=str(tmp_path / "run"), **options)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["validation"]["samples"] == 30 and metrics["train_samples"] == 90
    from lasnn_deploy.data import first_samples, load_split

    images, _ = first_samples(load_split("digits", None, "train"), 120)
    _, val_idx = validation_indices(120, 0.25, metrics["validation"]["seed"])
    train_rows = {r.numpy().tobytes() for r in torch.cat(fed)}
    val_rows = {images[i].flatten().numpy().tobytes() for i in val_idx}
    others = {images[i].flatten().numpy().tobytes() for i in range(120) if i not in val_idx}
    assert train_rows == others  # every training image fed, and nothing else
    assert not train_rows & (val_rows - others)


class _Scripted(nn.Module):
    """A one-weight step module: the weight counts the optimiser steps, so each epoch's weights differ."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, x, y, seed=0):
        return -self.w * len(y) / len(y), torch.zeros(len(y), 2)


def _scripted_fit(tmp_path, scores, select_kw, epochs=4, schedule="constant"):
    """Fit the one-weight module at rate 1 (each step adds the rate to w); the weights after each epoch."""
    module, states, rates = _Scripted(), [], []
    opt = make_optimizer(module.parameters(), "sgd", 1.0, 0.0, 0.0)
    data = TensorDataset(torch.zeros(4, 1), torch.zeros(4, dtype=torch.long))

    def seen(_name, _epoch):
        states.append(float(module.w.detach()))
        rates.append(opt.param_groups[0]["lr"])

    select = Selection(lambda: next(scores), **select_kw)
    plan = FitPlan("s", data, epochs, 4, 0, tmp_path / "s.pt", torch.device("cpu"), progress=False,
                   on_epoch_end=seen, select=select)  # fmt: skip
    return fit(module, opt, make_scheduler(opt, schedule, epochs), plan), module, states, rates


@pytest.mark.parametrize("patience, ran, kept", [(None, 6, 2), (2, 4, 2), (1, 3, 2)])
def test_selection_keeps_the_best_epoch_and_stops_on_a_plateau(tmp_path, patience, ran, kept):
    accuracies = [0.5, 0.6, 0.7, 0.65, 0.7, 0.69, 0.1]  # start, then after each epoch; ties do not count
    scores = iter(Score(a, 0.0) for a in accuracies)
    result, module, states, _ = _scripted_fit(tmp_path, scores, {"patience": patience}, epochs=6)
    assert result.epochs_run == ran and len(states) == ran
    assert result.best_epoch == kept and result.best_score == 0.7
    assert float(module.w.detach()) == states[kept - 1] != states[-1]  # the best epoch's weights, not the last
    assert [h["validation_accuracy"] for h in result.history] == [0.6, 0.7, 0.65, 0.7, 0.69, 0.1][:ran]


def test_equal_accuracy_is_decided_by_the_validation_loss(tmp_path):
    scores = iter([Score(0.9, 0.5), Score(0.9, 0.4), Score(0.9, 0.45), Score(0.8, 0.1), Score(0.9, 0.4)])
    result, module, states, _ = _scripted_fit(tmp_path, scores, {})
    assert result.best_epoch == 1 and result.best_score == 0.9  # a lower loss at equal accuracy wins; an equal one not
    assert float(module.w.detach()) == states[0]
    assert [h["validation_loss"] for h in result.history] == [0.4, 0.45, 0.1, 0.4]


def test_with_back_off_patience_counts_back_offs_in_all(tmp_path):
    """Better rounds between back-offs do not restart the count: the rate stops at 1, 1/2, 1/4."""
    accuracies = [0.5, 0.4, 0.6, 0.5, 0.7, 0.6, 0.8, 0.9]  # the start, then each epoch; 0.8 and 0.9 never run
    scores = iter(Score(a, 1.0) for a in accuracies)
    result, _, _, rates = _scripted_fit(tmp_path, scores, {"back_off": 0.5, "patience": 3}, epochs=7)
    assert result.epochs_run == 5 and result.best_epoch == 4 and result.best_score == 0.7
    assert rates == [0.5, 0.5, 0.25, 0.25, 0.125]


def test_back_off_returns_to_the_best_weights_at_a_lower_rate(tmp_path):
    scores = iter([Score(0.5, 1.0), Score(0.6, 1.0), Score(0.55, 1.0), Score(0.5, 1.0), Score(0.7, 1.0)])
    result, module, states, rates = _scripted_fit(tmp_path, scores, {"back_off": 0.25}, schedule="cosine")
    assert rates == [1.0, 0.25, 0.0625, 0.0625]  # each epoch without a better score lowers it; no cosine decay
    assert states[1] == states[2] == states[0]  # ... and goes back to the best weights (epoch 1's)
    assert states[3] == states[0] + 0.0625 and result.best_epoch == 4
    assert float(module.w.detach()) == states[3]


def test_quick_preset_on_a_small_data_set_stops_by_validation(tmp_path):
    """The preset's fine-tuning runs in validated rounds and ends on a plateau, not after an epoch count."""
    run = train(
        out=str(tmp_path / "run"),
        preset="quick",
        dataset="digits",
        student="tiny",
        student_width=0.5,
        chance_guard=False,
        train_samples=300,
        test_samples=40,
        teacher_epochs=1,
        ann_epochs=3,
        timesteps=4,
        method="hybrid",
        student_lr=3e-3,
        patience=2,
        progress=False,
        threads=1,
    )
    metrics = json.loads((run / "metrics.json").read_text())
    finetune = metrics["stages"]["finetune"]
    assert metrics["config"]["student_epochs"] == 20
    assert finetune["stopped_early"] and finetune["epochs"] < 20
    assert finetune["epochs"] - finetune["best_epoch"] == 2  # two rounds in a row found nothing better
    conversion = metrics["stages"]["conversion"]
    tried = conversion["percentile_validation_accuracy"]
    assert set(tried) == {str(p) for p in BALANCE_CANDIDATES}
    assert tried[str(conversion["percentile"])] == max(tried.values())
