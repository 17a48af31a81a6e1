"""Cost of one fine-tuning step per method: activation- vs gradient-based attention and the rest.

    python bench/attention_cost.py [--quick] [--threads N] [--timesteps T]

The paper's claim (3): activation-based attention (``lasnn``) is cheaper than gradient-based
attention through spike activation maps (``lasnn-grad``). Every method's real objective
(``lasnn_deploy.training.objectives.FineTune``) trains the same 3conv2linear student (half width,
3x32x32 inputs like CIFAR-10, batch 32, T = 8, direct encoding) with a ``small-cnn`` teacher: one
step is the method's loss, backward and an Adam step. Steps are timed alternately in rotating
order (``step_timing.alternate``: medians of wall-clock and process CPU time) and the peak
growth of live tensor bytes over one step comes from the PyTorch profiler's allocator events
(``step_timing.Trainer.peak_bytes``). Writes ``bench/results/attention_cost.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from step_timing import RESULTS, Trainer, alternate, machine_info, medians

from lasnn_deploy.atomic import write_text
from lasnn_deploy.models import build_student, build_teacher
from lasnn_deploy.student import SpikingStudent
from lasnn_deploy.training import make_config
from lasnn_deploy.training.objectives import FineTune

METHODS = ("hybrid", "kd", "hetero-kd", "lasnn", "lasnn-grad", "tssd")
SHAPE, CLASSES = (3, 32, 32), 10


def trainers(args) -> dict[str, Trainer]:
    """One Trainer per method, each on its own copy of the same student, with the same batch."""
    torch.manual_seed(0)
    config = build_student("3conv2linear", SHAPE, CLASSES, timesteps=args.timesteps, width=args.width)
    weights = SpikingStudent(config, leak=1.0, thresholds=[0.5] * len(config.spiking_layers)).state_dict()
    teacher = build_teacher("small-cnn", SHAPE, CLASSES).eval()
    gen = torch.Generator().manual_seed(1)
    x, y = torch.rand(args.batch, *SHAPE, generator=gen), torch.randint(0, CLASSES, (args.batch,), generator=gen)
    result = {}
    for method in METHODS:
        student = SpikingStudent(config)
        student.load_state_dict(weights)
        objective = FineTune(student, method, make_config(method=method, timesteps=args.timesteps), teacher)
        result[method] = Trainer(objective, x, y, loss_fn=lambda m, x, y: m(x, y)[0])
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="quarter width, batch 8, 2 rounds: a smoke run")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: the machine is shared)")
    p.add_argument("--timesteps", type=int, default=8)
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default 7, quick 2)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    args.width, args.batch = (0.25, 8) if args.quick else (0.5, 32)
    repeats = args.repeats or (2 if args.quick else 7)
    out = args.out or RESULTS / ("attention_cost_quick.json" if args.quick else "attention_cost.json")
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    steps = trainers(args)
    times = alternate(steps, warmup=1, repeats=repeats, deadline=float("inf"))
    wall, cpu = medians(times["wall"]), medians(times["cpu"])
    memory = {n: t.peak_bytes() for n, t in steps.items()}
    result = {
        "command": " ".join(["python bench/attention_cost.py", *(argv if argv is not None else sys.argv[1:])]),
        "network": {
            "student": "3conv2linear",
            "width": args.width,
            "teacher": "small-cnn",
            "input_shape": list(SHAPE),
            "batch": args.batch,
            "timesteps": args.timesteps,
            "encoding": "direct",
        },
        "machine": machine_info(torch.device("cpu"), args.threads),
        "rounds": repeats,
        "step_seconds_median": wall,
        "step_cpu_seconds_median": cpu,
        "peak_memory_bytes": memory,
        "seconds": time.perf_counter() - started,
    }
    write_text(out, json.dumps(result, indent=2) + "\n")
    print(f"{'method':<11}{'step ms':>9}{'cpu ms':>9}{'x hybrid':>9}{'peak MiB':>10}{'x hybrid':>9}")
    for n in METHODS:
        print(
            f"{n:<11}{wall[n] * 1e3:>9.1f}{cpu[n] * 1e3:>9.1f}{cpu[n] / cpu['hybrid']:>9.2f}"
            f"{memory[n] / 2**20:>10.1f}{memory[n] / memory['hybrid']:>9.2f}"
        )
    print(f"wrote {out} ({result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
