"""Training-step time and memory of the student SNN against snnTorch and the ANN equivalent.

    python bench/train_throughput.py [--device cpu|cuda] [--quick] [--threads N] [--budget S]

One VGG5 network (conv64-LIF-avgpool2-conv128-LIF-conv128-LIF-avgpool2-flatten-linear1024-LIF-
linear10 on 3x32x32, no dropout) at half width by default (conv32, conv64, conv64, linear512:
the full width took 13 minutes on 2 shared cores; ``--width 1`` runs it), batch 32, direct
encoding, hard reset, the linear surrogate of docs/semantics.md, 'The float student', built three ways with the same
initial weights:

- ``ours``: ``SpikingStudent`` (multi-step: every layer runs once on ``[T * B, ...]``, the layers
  before the first LIF once on ``[B, ...]`` because direct input is the same at every step);
- ``snntorch``: ``snntorch.Leaky`` neurons (``reset_mechanism="zero"``, ``reset_delay=False``,
  which is exactly the contract's hard reset, learnable beta and threshold, a custom ``spike_grad`` with
  our surrogate), the time loop written per step as snnTorch's tutorials do;
- ``ann``: the same layers with ReLU, run on the ``T x B`` images at once.

A training step is forward, cross-entropy, backward and an Adam step. The variants run
alternately, in rotating order, after one warm-up step each, so machine noise hits them alike;
times are medians of wall-clock and of process CPU time (with one thread, CPU time is what the step
costs, and it is not stretched by other processes waiting for the same cores). Rounds stop at 9,
or earlier (3 at least) when a section's share of ``--budget`` is spent. Peak memory is the peak
growth of live tensor bytes during one step, from the PyTorch profiler's CPU allocator events
(``Total Allocated`` counts every tensor, saved activations, gradients and temporaries, and
nothing else; process RSS is blurred by malloc keeping freed pages), and
``torch.cuda.max_memory_allocated`` on CUDA.

Also timed: one LaSNN distillation step (SmallCNN teacher forward + attention loss at three
levels, docs/semantics.md, 'Conversion') against a plain student step, and inference of the student exported with
``lasnn_deploy.exporters.onnx`` (onnxruntime) against PyTorch eager, per sample, on CPU.

Writes ``bench/results/train_throughput.json`` (``--quick``: ``train_throughput_quick.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from step_timing import MIN_ROUNDS, RESULTS, Trainer, alternate, machine_info, medians
from vgg5_variants import CLASSES, INPUT_SHAPE, LEAK, THRESHOLD, VARIANTS, build_variants, vgg5

from lasnn_deploy.atomic import write_text
from lasnn_deploy.models import build_teacher
from lasnn_deploy.student import Conv, SpikingStudent
from lasnn_deploy.training.losses import attention_loss, attention_map


# -- measuring -------------------------------------------------------------------------------
def bench_training(timesteps: int, args, device: torch.device, deadline: float) -> dict:
    config = vgg5(timesteps, args.width)
    models = build_variants(config, device)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(args.batch, *INPUT_SHAPE, generator=gen).to(device)
    y = torch.randint(0, CLASSES, (args.batch,), generator=gen).to(device)
    with torch.no_grad():  # ours and snnTorch compute the same function: same spikes, same logits
        trace = models["ours"].run(x, record=True)
        agreement = (trace.logits - models["snntorch"](x)).abs().max().item()
        rates = [s.mean().item() for s in trace.spikes]
    trainers = {n: Trainer(m, x, y) for n, m in models.items()}
    times = alternate(trainers, args.warmup, args.repeats, deadline)
    memory = {n: t.peak_bytes() for n, t in trainers.items()}
    return {
        "timesteps": timesteps,
        "rounds": len(times["wall"]["ours"]),
        "step_seconds_median": medians(times["wall"]),
        "step_cpu_seconds_median": medians(times["cpu"]),
        "step_seconds_all": times["wall"],
        "step_cpu_seconds_all": times["cpu"],
        "peak_memory_bytes": memory,
        "firing_rates_at_init": rates,
        "ours_vs_snntorch_max_logit_diff": agreement,
    }


def bench_distillation(args, device: torch.device, deadline: float) -> dict:
    """A LaSNN step (teacher forward + CE + attention at three levels) against a plain CE step."""
    config = vgg5(8, args.width)
    student = build_variants(config, device)["ours"]
    teacher = build_teacher("small-cnn", INPUT_SHAPE, CLASSES).to(device).eval()
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(args.batch, *INPUT_SHAPE, generator=gen).to(device)
    y = torch.randint(0, CLASSES, (args.batch,), generator=gen).to(device)
    conv_lifs = [k for k, i in enumerate(config.spiking_layers) if isinstance(config.layers[i], Conv)][:3]

    def distill_loss(model: SpikingStudent, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            _, features = teacher(x)
        trace = model.run(x, record=True)
        student_maps = [attention_map(trace.spikes[k].mean(0)) for k in conv_lifs]
        teacher_maps = [attention_map(f) for f in features]
        return F.cross_entropy(trace.logits, y) + attention_loss(student_maps, teacher_maps, beta=1000.0)

    trainers = {"plain": Trainer(student, x, y), "distill": Trainer(student, x, y, distill_loss)}
    times = alternate(trainers, args.warmup, args.repeats, deadline)
    wall, cpu = medians(times["wall"]), medians(times["cpu"])
    return {
        "timesteps": 8,
        "rounds": len(times["wall"]["plain"]),
        "step_seconds_median": wall,
        "step_cpu_seconds_median": cpu,
        "distill_vs_plain": wall["distill"] / wall["plain"],
        "distill_vs_plain_cpu": cpu["distill"] / cpu["plain"],
    }


def bench_inference(args, deadline: float) -> dict:
    """Per-sample inference of the exported ONNX file (onnxruntime, CPU) and of PyTorch eager (CPU)."""
    import onnxruntime as ort
    from lasnn_deploy.exporters.onnx import OnnxTarget

    student = build_variants(vgg5(8, args.width), torch.device("cpu"))["ours"].eval()
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
    result: dict = {"timesteps": 8, "device": "cpu", "exporter": "lasnn_deploy.exporters.onnx"}
    with tempfile.TemporaryDirectory() as tmp:
        path = OnnxTarget().export(student, Path(tmp) / "student.onnx")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(3)
    for i, batch in enumerate((1, args.batch)):
        now = time.perf_counter()
        stop = now + (deadline - now) / (2 - i)  # half the time left for batch 1, the rest for the batch
        x = torch.rand(batch, *INPUT_SHAPE, generator=gen)
        feed = {"image": x.numpy()}

        def run_ort(feed=feed):
            return session.run(["logits"], feed)[0]

        def run_torch(x=x):
            with torch.inference_mode():
                return student(x).numpy()

        runs = {"onnxruntime": run_ort, "pytorch_eager": run_torch}
        diff = float(abs(run_ort() - run_torch()).max())  # also the warm-up
        times: dict[str, list[float]] = {n: [] for n in runs}
        for r in range(4 * args.repeats):
            if r >= MIN_ROUNDS and time.perf_counter() > stop:
                break
            for name, fn in runs.items():
                start = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - start) / batch)
        result[f"batch{batch}"] = {
            "rounds": len(times["onnxruntime"]),
            "seconds_per_sample_median": medians(times),
            "max_abs_logit_diff": diff,
        }
    return result


# -- report ----------------------------------------------------------------------------------
def ratios(training: dict[int, dict], key: str) -> dict[str, float]:
    """ours / other for the medians under ``key`` (time), and for peak memory."""
    t8, t16 = training[8][key], training[16][key]
    m8, m16 = training[8]["peak_memory_bytes"], training[16]["peak_memory_bytes"]
    return {
        "ours_vs_snntorch_t8": t8["ours"] / t8["snntorch"],
        "ours_vs_snntorch_t16": t16["ours"] / t16["snntorch"],
        "ours_vs_ann_t8": t8["ours"] / t8["ann"],
        "ours_vs_ann_t16": t16["ours"] / t16["ann"],
        "mem_ours_vs_snntorch_t8": m8["ours"] / m8["snntorch"],
        "mem_ours_vs_snntorch_t16": m16["ours"] / m16["snntorch"],
        "mem_ours_vs_ann_t8": m8["ours"] / m8["ann"],
        "mem_ours_vs_ann_t16": m16["ours"] / m16["ann"],
    }


def paired_ratios(training: dict[int, dict]) -> dict[str, float]:
    """Median over rounds of ours / other within one round: a check on drift in machine load."""
    out = {}
    for T, r in training.items():
        times = r["step_seconds_all"]
        for other in ("snntorch", "ann"):
            out[f"ours_vs_{other}_t{T}"] = statistics.median(
                a / b for a, b in zip(times["ours"], times[other], strict=True)
            )
    return out


def table(training: dict[int, dict]) -> str:
    lines = [
        f"{'T':>3} {'variant':<9} {'step ms':>9} {'x ours':>7} {'cpu ms':>9} {'x ours':>7} {'peak MiB':>9} {'x ours':>7}"
    ]
    for T, r in training.items():
        t, c, m = r["step_seconds_median"], r["step_cpu_seconds_median"], r["peak_memory_bytes"]
        for n in VARIANTS:
            lines.append(
                f"{T:>3} {n:<9} {t[n] * 1e3:>9.1f} {t['ours'] / t[n]:>7.2f} {c[n] * 1e3:>9.1f} {c['ours'] / c[n]:>7.2f}"
                f" {m[n] / 2**20:>9.1f} {m['ours'] / m[n]:>7.2f}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--quick", action="store_true", help="quarter width, batch 8, 2 rounds: a smoke run")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: the machine is shared)")
    p.add_argument("--width", type=float, default=None, help="channel/unit scale of VGG5 (default 0.5, quick 0.25)")
    p.add_argument("--repeats", type=int, default=None, help="most timed rounds per measurement (default 9, quick 2)")
    p.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds for the whole run (default 540): fewer rounds (3 at least) when the machine is slow",
    )
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device is visible; run with --device cpu", file=sys.stderr)
        return 2
    args.width = args.width or (0.25 if args.quick else 0.5)
    args.batch = 8 if args.quick else 32
    args.warmup = 1
    args.repeats = args.repeats or (2 if args.quick else 9)
    budget = args.budget or (120.0 if args.quick else 540.0)
    out = args.out or RESULTS / ("train_throughput_quick.json" if args.quick else "train_throughput.json")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    started = time.perf_counter()
    info = machine_info(device, args.threads)

    def deadline(share: float) -> float:
        return started + share * budget

    training = {}
    for T, share in ((8, 0.3), (16, 0.75)):
        training[T] = bench_training(T, args, device, deadline(share))
        print(f"T={T} done ({time.perf_counter() - started:.0f} s)", flush=True)
    distill = bench_distillation(args, device, deadline(0.87))
    inference = bench_inference(args, deadline(0.97))
    info["load_average_1_5_15_end"] = list(os.getloadavg())
    time_key = "step_seconds_median"
    result = {
        "command": " ".join(["python bench/train_throughput.py", *(argv if argv is not None else sys.argv[1:])]),
        "network": {
            "arch": "vgg5",
            "width": args.width,
            "input_shape": list(INPUT_SHAPE),
            "batch": args.batch,
            "encoding": "direct",
            "reset": "hard",
            "leak": LEAK,
            "threshold": THRESHOLD,
            "dropout": 0.0,
        },
        "machine": info,
        "ratios": ratios(training, time_key),
        "cpu_time_ratios": ratios(training, "step_cpu_seconds_median"),
        "per_round_ratios": paired_ratios(training),
        "training": {str(T): r for T, r in training.items()},
        "distillation": distill,
        "inference": inference,
        "seconds": time.perf_counter() - started,
    }
    write_text(out, json.dumps(result, indent=2) + "\n")
    print(table(training))
    for key in ("ratios", "cpu_time_ratios", "per_round_ratios"):
        print(f"{key}:", json.dumps({k: round(v, 3) for k, v in result[key].items()}))
    d = distill["step_seconds_median"]
    print(
        f"distillation step {d['distill'] * 1e3:.1f} ms vs plain {d['plain'] * 1e3:.1f} ms "
        f"({distill['distill_vs_plain']:.2f}x wall, {distill['distill_vs_plain_cpu']:.2f}x cpu)"
    )
    for b in ("batch1", f"batch{args.batch}"):
        s = inference[b]["seconds_per_sample_median"]
        print(
            f"inference {b}: onnxruntime {s['onnxruntime'] * 1e3:.2f} ms/sample, "
            f"pytorch eager {s['pytorch_eager'] * 1e3:.2f} ms/sample"
        )
    print(f"wrote {out} ({result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
