"""The epoch loop shared by every trained stage: batches, progress, checkpoints and resume.

Repeatability: the data order of epoch ``e`` depends only on the stage seed and ``e``, Poisson
inputs on the seed, epoch, step and process, and dropout and augmentation on torch's global
generator, whose state (of every process) is saved with every epoch's checkpoint. A run resumed
from the checkpoint of epoch ``e`` therefore continues exactly as the uninterrupted run would have.

Under torchrun each process trains on its share of every global batch (``distributed.shard``)
in DistributedDataParallel; see ``distributed`` for what keeps that equal to one process.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from tqdm import tqdm

from ..data import sample_count
from . import distributed
from .checkpoint import load_checkpoint, process_rng_states, restore_training_state, save_checkpoint

EpochHook = Callable[[str, int], None]


@dataclass
class FitResult:
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    best_epoch: int | None = None  # with ``select``: the finished epoch whose weights were kept (0: the start)
    best_score: float | None = None  # the kept epoch's validation accuracy
    epochs_run: int = 0
    most_accurate_epoch: int | None = None  # with a spike tolerance, the epoch the score alone would keep

    @property
    def kept_score(self) -> float:
        """``best_score`` of a fit with ``select``, which always keeps an epoch."""
        if self.best_score is None:
            raise ValueError("a fit without select keeps no epoch")
        return self.best_score


class Score(NamedTuple):
    """A validation score: the higher accuracy wins, and at equal accuracy the lower mean
    cross-entropy (a small split ties often; the loss still tells the students apart). ``spikes``
    (per sample) is read only by a selection with a spike tolerance."""

    accuracy: float
    loss: float
    spikes: float | None = None

    def beats(self, other: Score) -> bool:
        return (self.accuracy, -self.loss) > (other.accuracy, -other.loss)


@dataclass
class Selection:
    """Keep the weights of the best epoch by ``score()`` on the validation split.

    ``score`` is called on the starting weights and after every epoch; the stage ends with the best
    weights (the start counts, so a stage that only makes things worse changes nothing), and stops
    early once ``patience`` epochs in a row brought no better score (None: run every epoch). With
    ``back_off``, an epoch that brings no better score also returns to the best weights and
    multiplies the learning rate by ``back_off`` with a fresh optimiser state, and the scheduler is
    not stepped: a rate too high for the data is lowered by the validation split, not by a schedule
    tuned on another data set.
    ``patience`` then counts back-offs in all, so the rate never falls below ``back_off **
    (patience - 1)`` times the first: a spiking student's validation accuracy moves at any rate
    (a weight change of 1e-7 flips a neuron at its threshold), and the search would otherwise go on
    fitting the split's noise at rates that teach nothing.

    With ``spike_tolerance`` the stage ends instead on the epoch with the fewest spikes among those
    whose validation accuracy is within ``spike_tolerance`` of the best one's (``fewest_spikes``);
    training itself (back-off, patience) still follows the most accurate epoch.
    """

    score: Callable[[], Score]
    patience: int | None = None
    back_off: float | None = None
    spike_tolerance: float | None = None


def within_tolerance(scores: Sequence[Score], tolerance: float) -> list[int]:
    """Indices of the scores whose accuracy is within ``tolerance`` of the best one's."""
    top = max(s.accuracy for s in scores)
    return [i for i, s in enumerate(scores) if s.accuracy >= top - tolerance]


def fewest_spikes(scores: Sequence[Score], tolerance: float) -> int:
    """Index of the score with the fewest spikes among those within ``tolerance`` accuracy of the best
    (ties: the better score); with none cheaper inside the tolerance, the best score's."""
    inside = within_tolerance(scores, tolerance)
    return min(inside, key=lambda i: (scores[i].spikes or 0.0, -scores[i].accuracy, scores[i].loss))


def batches(dataset: Dataset, indices: Sequence[int], batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of ``dataset`` in the order of ``indices`` (tensor slicing for in-memory data).

    Images come in torch's default float dtype, the one modules are built in (float32 unless a
    caller chose float64, as the multi-process equivalence test does).
    """
    dtype = torch.get_default_dtype()
    if isinstance(dataset, TensorDataset):
        images, labels = dataset.tensors[:2]
        for start in range(0, len(indices), batch_size):
            idx = torch.as_tensor(indices[start : start + batch_size])
            yield images[idx].to(dtype), labels[idx]
        return
    loader = DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=batch_size, shuffle=False)
    yield from ((x.to(dtype), torch.as_tensor(y)) for x, y in loader)


def augment_batch(x: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """Random ``pad``-pixel crops and horizontal flips, one draw per image (colour images only)."""
    if x.shape[1] != 3:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,))
    dx = torch.randint(0, 2 * pad + 1, (b,))
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :]
    out = padded[torch.arange(b)[:, None, None, None], torch.arange(3)[None, :, None, None], rows, cols]
    flip = torch.rand(b) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(3), out)


def step_seed(seed: int, epoch: int, step: int) -> int:
    """Seed of the Poisson spikes of one training step (distinct per rank too)."""
    return (((seed * 1009 + epoch) * 1_000_003 + step) * 64 + distributed.rank()) % 2**63


def make_scheduler(
    optimizer: torch.optim.Optimizer, schedule: str, epochs: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-epoch schedule: cosine to 0, step (x0.1 at 50% and 75% of the epochs), or constant."""
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs))
    if schedule == "step":
        milestones = sorted({max(1, epochs // 2), max(1, (3 * epochs) // 4)})
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


def make_optimizer(params, name: str, lr: float, weight_decay: float, momentum: float = 0.9) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=momentum > 0)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


@dataclass(frozen=True)
class FitPlan:
    """What one stage's training loop does: its data, length, seeds, checkpoint and hooks."""

    name: str
    train_set: Dataset
    epochs: int
    batch_size: int  # the global batch, split over the processes
    seed: int
    checkpoint: Path
    device: torch.device
    resume: bool = False
    epoch_samples: int | None = None
    augment: bool = False
    after_step: Callable[[], None] | None = None
    progress: bool = True
    on_epoch_end: EpochHook | None = None
    select: Selection | None = None


def fit(
    step_module: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    plan: FitPlan,
) -> FitResult:
    """Train ``step_module`` (``forward(x, y, seed) -> (loss, logits)``) for ``plan.epochs`` epochs.

    Only the optimiser's parameters are trained (the others are frozen meanwhile, which also keeps
    them out of DDP). ``batch_size`` is the global batch, split over the processes. After every
    epoch the state is checkpointed (rank 0 only) and ``on_epoch_end(name, epoch)`` is called; with
    ``resume`` the loop continues after the checkpoint's last finished epoch. ``epoch_samples``
    limits an epoch to the first samples of that epoch's order. With ``select`` the best epoch's
    weights are kept (``Selection``); they travel in the checkpoint, so a resumed run keeps the same.
    """
    name, checkpoint, select = plan.name, plan.checkpoint, plan.select
    result, start, best, back_offs = FitResult(), 0, None, 0
    if plan.resume and checkpoint.is_file():
        state = load_checkpoint(checkpoint)
        start, result.history, result.seconds = restore_training_state(
            state, checkpoint, step_module, optimizer, scheduler
        )
        best, back_offs = state.get("best"), state.get("back_offs", 0)
        if best is not None:
            best = _restored(best)
        frugal = [_restored(c) for c in state.get("frugal", [])]
    else:
        distributed.seed_this_process(plan.seed)
        frugal = []
    if select is not None and best is None:
        best = {"epoch": 0, "score": select.score(), "model": _state_copy(step_module)}
        frugal = [best] if select.spike_tolerance is not None else []
    trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
    frozen = [p for p in step_module.parameters() if p.requires_grad and id(p) not in trained]
    for p in frozen:
        p.requires_grad_(False)
    try:
        model = distributed.wrap_model(step_module, plan.device)
        for epoch in range(start, plan.epochs):
            if select is not None and best is not None and select.patience is not None:
                waited = epoch - best["epoch"] if select.back_off is None else back_offs
                if waited >= select.patience:
                    break  # a plateau, or the last rate the back-offs allow has been tried
            _epoch(model, optimizer, plan, epoch, result)
            if select is None or select.back_off is None:
                scheduler.step()  # with back-off the validation split alone sets the rate
            if select is not None and best is not None:
                score = select.score()
                result.history[-1].update(validation_accuracy=score.accuracy, validation_loss=score.loss)
                if score.spikes is not None:
                    result.history[-1]["validation_spikes"] = score.spikes
                current = {"epoch": epoch + 1, "score": score, "model": _state_copy(step_module)}
                if select.spike_tolerance is not None:
                    frugal = _within(frugal + [current], select.spike_tolerance)
                if score.beats(best["score"]):
                    best = current
                elif select.back_off is not None:
                    _back_off(step_module, optimizer, best["model"], select.back_off)
                    back_offs += 1
                if plan.progress and distributed.is_main_process():
                    kept = best["score"]
                    assert isinstance(kept, Score)
                    tqdm.write(
                        f"{name} epoch {epoch + 1}: validation accuracy {score.accuracy:.4f} "
                        f"(best {kept.accuracy:.4f}, epoch {best['epoch']})"
                    )
            states = process_rng_states()  # a collective: every process takes part
            if distributed.is_main_process():
                save_checkpoint(
                    checkpoint,
                    {
                        "stage": name,
                        "epoch": epoch + 1,
                        "model": step_module.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        **states,
                        "history": result.history,
                        "back_offs": back_offs,
                        "seconds": result.seconds,
                        **({"best": _storable(best)} if best is not None else {}),
                        "frugal": [_storable(c) for c in frugal],
                    },
                )
            distributed.barrier()
            if plan.on_epoch_end is not None:
                plan.on_epoch_end(name, epoch + 1)
    finally:
        for p in frozen:
            p.requires_grad_(True)
    result.epochs_run = len(result.history)
    if select is not None and best is not None:
        result.most_accurate_epoch = int(best["epoch"])
        if frugal and select.spike_tolerance is not None:
            best = frugal[fewest_spikes([c["score"] for c in frugal], select.spike_tolerance)]
        step_module.load_state_dict(best["model"])
        result.best_epoch, result.best_score = int(best["epoch"]), best["score"].accuracy
    return result


def _within(candidates: list[dict], tolerance: float) -> list[dict]:
    """The candidate epochs still within ``tolerance`` accuracy of the best among them (kept weights)."""
    return [candidates[i] for i in within_tolerance([c["score"] for c in candidates], tolerance)]


def _restored(stored: dict) -> dict:
    return {**stored, "score": Score(stored["score"], stored["loss"], stored.get("spikes"))}


def _back_off(
    module: nn.Module, optimizer: torch.optim.Optimizer, best: dict[str, torch.Tensor], factor: float
) -> None:
    """Return to the best weights with the learning rate times ``factor`` and a fresh optimiser state."""
    module.load_state_dict(best)
    optimizer.state.clear()
    for group in optimizer.param_groups:
        group["lr"] *= factor


def _storable(best: dict) -> dict:
    """The best epoch as the checkpoint holds it (plain floats, loadable with ``weights_only``)."""
    return {**best, "score": best["score"].accuracy, "loss": best["score"].loss, "spikes": best["score"].spikes}


def _state_copy(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _epoch(model: nn.Module, optimizer: torch.optim.Optimizer, plan: FitPlan, epoch: int, result: FitResult) -> None:
    """One epoch over this process's share of the epoch's global batches; appends to ``result``."""
    name, epochs, train_set, batch_size, seed = plan.name, plan.epochs, plan.train_set, plan.batch_size, plan.seed
    began = time.perf_counter()
    model.train()
    order = distributed.epoch_order(sample_count(train_set), seed, epoch)[: plan.epoch_samples]
    sizes = distributed.global_batch_sizes(len(order), batch_size)
    show = plan.progress and distributed.is_main_process()
    sums = [0.0, 0.0, 0.0]  # loss * n, correct, n
    bar = tqdm(
        batches(train_set, distributed.shard(order, batch_size), batch_size // distributed.world_size()),
        total=len(sizes),
        desc=f"{name} {epoch + 1}/{epochs}",
        leave=False,
        disable=not show,
    )
    for step, ((x, y), total) in enumerate(zip(bar, sizes, strict=True)):
        x, y = x.to(plan.device), y.to(plan.device)
        if plan.augment:
            x = augment_batch(x)
        loss, logits = model(x, y, step_seed(seed, epoch, step))
        optimizer.zero_grad(set_to_none=True)
        (loss * distributed.loss_weight(len(y), total)).backward()
        optimizer.step()
        if plan.after_step is not None:
            plan.after_step()
        n = len(y)
        sums[0] += float(loss.detach()) * n
        sums[1] += float((logits.detach().argmax(1) == y).sum())
        sums[2] += n
        bar.set_postfix(loss=f"{sums[0] / sums[2]:.4f}", acc=f"{sums[1] / sums[2]:.4f}")
    bar.close()
    loss_sum, correct, count = distributed.reduce_sums(sums)
    result.seconds += time.perf_counter() - began
    result.history.append({"epoch": epoch + 1, "loss": loss_sum / count, "train_accuracy": correct / count})
    if show:
        left = result.seconds / len(result.history) * (epochs - epoch - 1)  # this stage's epochs at their mean time
        tqdm.write(
            f"{name} epoch {epoch + 1}/{epochs}: loss {loss_sum / count:.4f}, train accuracy {correct / count:.4f}"
            f"{f', stage ETA {_duration(left)}' if epoch + 1 < epochs else ''}"
        )


def _duration(seconds: float) -> str:
    """``1 h 05 min``, ``12 min 30 s`` or ``40 s``."""
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s"
