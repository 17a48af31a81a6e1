"""Where one training step's time goes: the PyTorch profiler over the steps of bench/train_throughput.py.

    python bench/profile_train_step.py [--timesteps 8] [--rounds 5] [--width 0.5] [--threads 1]

Builds the three variants of ``train_throughput.py`` (ours, snnTorch, ANN: same layers, same
weights, batch 32) and a fourth, ``ours-eager``: ours with the LIF time step in eager tensor ops
(4 per step forward, 12 backward: the implementation before ``lasnn_deploy/lif_kernels.py``, still
the one on CUDA). Each round runs, for every variant in rotating order, one full step (forward,
cross-entropy, backward, Adam) timed by process CPU time and wall-clock, then one under the
profiler. Every operator's *self* time is charged to the nearest enclosing part of the step it
belongs to (``PARTS``: the LIF's forward and backward nodes, each layer type's forward and
backward, the optimiser; the rest is ``other``); the table gives per part the median over rounds,
in ms, and its share of the profiled step. The profiler times wall-clock (and adds a little per
operator), so on a loaded machine its figures are stretched; the unprofiled CPU times are the ones
to compare variants by.

Writes ``bench/results/profile_train_step.json`` (per part, every round's ms).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import CLASSES, INPUT_SHAPE, RESULTS, Trainer, build_variants, vgg5  # noqa: E402

from lasnn_deploy import neurons  # noqa: E402
from lasnn_deploy.atomic import write_text  # noqa: E402

# (part, names of profiler events it owns); an operator belongs to the first part met walking up its parents.
PARTS = (
    ("LIF forward", ("LIFFunction",)),
    ("LIF backward", ("LIFFunctionBackward",)),
    ("snnTorch surrogate forward", ("LinearSurrogate",)),
    ("snnTorch surrogate backward", ("LinearSurrogateBackward",)),
    ("ReLU forward", ("aten::relu_", "aten::relu")),
    ("ReLU backward", ("ReluBackward0",)),
    ("conv forward", ("aten::conv2d",)),
    ("conv backward", ("ConvolutionBackward0",)),
    ("linear forward", ("aten::linear",)),
    ("linear backward", ("MmBackward0", "AddmmBackward0", "TBackward0")),
    ("pool forward", ("aten::avg_pool2d",)),
    ("pool backward", ("AvgPool2DBackward0",)),
    ("sum over T of the direct input's gradient", ("ExpandBackward0",)),
    ("optimizer", ("Optimizer.step#Adam.step", "Optimizer.zero_grad#Adam.zero_grad")),
)
OWNER = {name: part for part, names in PARTS for name in names}


@contextlib.contextmanager
def lif_steps(variant: str) -> Iterator[None]:
    """``ours-eager``: the LIF's eager tensor-op steps on CPU too; any other variant as it is."""
    if variant != "ours-eager":
        yield
        return
    kernels = neurons._kernels
    neurons._kernels = lambda t: None
    try:
        yield
    finally:
        neurons._kernels = kernels


def parts_of_step(trainer: Trainer) -> dict[str, float]:
    """Milliseconds of self time per part (``other``: everything no part owns) in one profiled step."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        trainer.step()
    totals: dict[str, float] = {}
    for event in prof.events():
        node, part = event, "other"
        while node is not None:
            if node.name in OWNER:
                part = OWNER[node.name]
                break
            node = node.cpu_parent
        totals[part] = totals.get(part, 0.0) + event.self_cpu_time_total / 1e3
    return totals


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--timesteps", type=int, default=8)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--width", type=float, default=0.5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--variants", default="ours,ours-eager,snntorch,ann", help="comma-separated, of ours, ours-eager, snntorch, ann"
    )
    p.add_argument("--out", type=Path, default=RESULTS / "profile_train_step.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    models = build_variants(vgg5(args.timesteps, args.width), torch.device("cpu"))
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(32, *INPUT_SHAPE, generator=gen)
    y = torch.randint(0, CLASSES, (32,), generator=gen)
    names = args.variants.split(",")
    models["ours-eager"] = models["ours"]  # the same student: both share its weights and Adam state
    trainers = {n: Trainer(models[n], x, y) for n in names}
    for n, trainer in trainers.items():
        with lif_steps(n):
            trainer.step()  # warm-up: Adam's state, the allocator's blocks, numba's compiled kernels
    rounds: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    times: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    for r in range(args.rounds):
        for n in names[r % len(names) :] + names[: r % len(names)]:
            with lif_steps(n):
                times[n].append(trainers[n].step())
                rounds[n].append(parts_of_step(trainers[n]))
    result: dict = {"command": " ".join(["python bench/profile_train_step.py", *(argv or sys.argv[1:])])}
    for n in names:
        keys = sorted({k for r in rounds[n] for k in r})
        med = {k: statistics.median(r.get(k, 0.0) for r in rounds[n]) for k in keys}
        step = statistics.median(sum(r.values()) for r in rounds[n])
        cpu, wall = (1e3 * statistics.median(t[i] for t in times[n]) for i in (1, 0))
        result[n] = {
            "step_cpu_ms_median": cpu,
            "step_wall_ms_median": wall,
            "profiled_step_ms_median": step,
            "parts_ms_median": med,
            "step_seconds_wall_cpu": times[n],
            "rounds": rounds[n],
        }
        print(f"{n}: step {cpu:.0f} ms CPU, {wall:.0f} ms wall; profiled {step:.0f} ms (medians of {args.rounds})")
        for k in sorted(med, key=med.get, reverse=True):
            print(f"  {k:<44} {med[k]:>8.1f} ms {100 * med[k] / step:>5.1f} %")
    for n in names:
        if n != "ours":
            ratio = statistics.median(a[1] / b[1] for a, b in zip(times["ours"], times[n], strict=True))
            print(
                f"ours / {n}: {result['ours']['step_cpu_ms_median'] / result[n]['step_cpu_ms_median']:.3f} "
                f"(medians of CPU time), {ratio:.3f} (median of per-round ratios)"
            )
    write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
