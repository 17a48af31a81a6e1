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
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import snntorch as snn
import torch
import torch.nn.functional as F
from torch import nn

from lasnn_deploy.atomic import write_text
from lasnn_deploy.models import build_student, build_teacher
from lasnn_deploy.neurons import GAMMA
from lasnn_deploy.student import AvgPool, Conv, Flatten, Linear, SpikingStudent, StudentConfig
from lasnn_deploy.training.losses import attention_loss, attention_map

RESULTS = Path(__file__).resolve().parent / "results"
INPUT_SHAPE = (3, 32, 32)
CLASSES = 10
LEAK = 0.95
THRESHOLD = 1.0
VARIANTS = ("ours", "snntorch", "ann")
WEIGHT_SCALE = 3.0  # on PyTorch's default init: every LIF layer fires (about 20, 17, 13, 9 % at T = 8)
MIN_ROUNDS = 3


# -- the three networks ----------------------------------------------------------------------
class LinearSurrogate(torch.autograd.Function):
    """snnTorch ``spike_grad``: Heaviside of ``mem - theta``, the contract's linear surrogate backward.

    snnTorch passes the shifted potential ``mem - theta``; its gradient reaches the threshold
    through that subtraction, which gives ``ds/dtheta = -ds/du`` as our ``SpikeFn`` does.
    """

    @staticmethod
    def forward(ctx, mem_shift: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(mem_shift, theta)
        return (mem_shift > 0).to(mem_shift.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        mem_shift, theta = ctx.saved_tensors
        return grad * GAMMA * torch.clamp(1.0 - mem_shift.abs() / theta, min=0.0), None


class SpikeGrad:
    """A ``spike_grad`` callable that reads the threshold of the neuron it belongs to."""

    def __init__(self) -> None:
        self.neuron: nn.Module | None = None

    def __call__(self, mem_shift: torch.Tensor) -> torch.Tensor:
        return LinearSurrogate.apply(mem_shift, self.neuron.threshold.detach())


def snntorch_leaky(leak: float, theta: float) -> nn.Module:
    spike_grad = SpikeGrad()
    neuron = snn.Leaky(
        beta=leak,
        threshold=theta,
        spike_grad=spike_grad,
        learn_beta=True,
        learn_threshold=True,
        reset_mechanism="zero",
        reset_delay=False,
    )
    spike_grad.neuron = neuron
    return neuron


def torch_layers(config: StudentConfig, activation: Callable[[], nn.Module]) -> nn.ModuleList:
    """The student's layers as torch modules, ``activation()`` after every spiking layer."""
    layers = nn.ModuleList()
    for i, spec in enumerate(config.layers):
        if isinstance(spec, Conv):
            layers.append(
                nn.Conv2d(spec.in_channels, spec.out_channels, spec.kernel_size, spec.stride, spec.padding, bias=False)
            )
        elif isinstance(spec, Linear):
            layers.append(nn.Linear(spec.in_features, spec.out_features, bias=False))
        elif isinstance(spec, AvgPool):
            layers.append(nn.AvgPool2d(spec.kernel_size))
        elif isinstance(spec, Flatten):
            layers.append(nn.Flatten())
        if i in config.spiking_layers:
            layers.append(activation())
    return layers


def copy_weights(src: SpikingStudent, layers: nn.ModuleList) -> None:
    weighted = [m for m in layers if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        for a, b in zip(src.weighted_modules(), weighted, strict=True):
            b.weight.copy_(a.weight)


class SnnTorchNet(nn.Module):
    """The student written the snnTorch way: a Python loop over time, every layer per step."""

    def __init__(self, config: StudentConfig):
        super().__init__()
        self.timesteps = config.timesteps
        self.layers = torch_layers(config, lambda: snntorch_leaky(LEAK, THRESHOLD))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mems = {i: m.reset_mem() for i, m in enumerate(self.layers) if isinstance(m, snn.Leaky)}
        out = []
        for _ in range(self.timesteps):
            h = x
            for i, layer in enumerate(self.layers):
                if i in mems:
                    h, mems[i] = layer(h, mems[i])
                else:
                    h = layer(h)
            out.append(h)
        return torch.stack(out).mean(0)


class AnnNet(nn.Module):
    """The same layers with ReLU, on the ``T x B`` images at once (logits averaged over T)."""

    def __init__(self, config: StudentConfig):
        super().__init__()
        self.timesteps = config.timesteps
        self.layers = nn.Sequential(*torch_layers(config, lambda: nn.ReLU(inplace=True)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T, B = self.timesteps, x.shape[0]
        return self.layers(x.repeat(T, 1, 1, 1)).unflatten(0, (T, B)).mean(0)


def build_variants(config: StudentConfig, device: torch.device) -> dict[str, nn.Module]:
    torch.manual_seed(0)
    ours = SpikingStudent(config, leak=LEAK, thresholds=[THRESHOLD] * len(config.spiking_layers))
    with torch.no_grad():
        for module in ours.weighted_modules():
            module.weight.mul_(WEIGHT_SCALE)
    snntorch_net, ann = SnnTorchNet(config), AnnNet(config)
    copy_weights(ours, snntorch_net.layers)
    copy_weights(ours, ann.layers)
    return {"ours": ours.to(device).train(), "snntorch": snntorch_net.to(device).train(), "ann": ann.to(device).train()}


def vgg5(timesteps: int, width: float) -> StudentConfig:
    return build_student("vgg5", INPUT_SHAPE, CLASSES, timesteps=timesteps, dropout=0.0, width=width)


# -- measuring -------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Trainer:
    """One model with its Adam optimiser; ``step()`` is one full training step, timed."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn=None):
        self.model, self.x, self.y = model, x, y
        self.optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        self.loss_fn = loss_fn or (lambda m, x, y: F.cross_entropy(m(x), y))

    def step(self) -> tuple[float, float]:
        """Wall-clock and process CPU seconds of one step."""
        sync(self.x.device)
        wall, cpu = time.perf_counter(), time.process_time()
        self.optimizer.zero_grad(set_to_none=True)
        self.loss_fn(self.model, self.x, self.y).backward()
        self.optimizer.step()
        sync(self.x.device)
        return time.perf_counter() - wall, time.process_time() - cpu

    def peak_bytes(self) -> int:
        """Peak growth of live tensor bytes over one step (after warm-up: Adam state exists)."""
        device = self.x.device
        if device.type == "cuda":
            self.optimizer.zero_grad(set_to_none=True)
            torch.cuda.synchronize(device)
            base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            self.step()
            return torch.cuda.max_memory_allocated(device) - base
        from torch.profiler import ProfilerActivity, profile

        self.optimizer.zero_grad(set_to_none=True)
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            self.step()
        with tempfile.TemporaryDirectory() as tmp:
            trace = Path(tmp) / "trace.json"
            prof.export_chrome_trace(str(trace))
            events = json.loads(trace.read_text())["traceEvents"]
        memory = sorted((e for e in events if e.get("name") == "[memory]"), key=lambda e: e["ts"])
        if not memory:
            return 0
        # The allocator's running total is process-wide (it still holds blocks of earlier profiled
        # steps), so the peak is measured from its value before this step's first event.
        before = memory[0]["args"]["Total Allocated"] - memory[0]["args"]["Bytes"]
        return max(e["args"]["Total Allocated"] for e in memory) - before


def alternate(
    trainers: dict[str, Trainer], warmup: int, repeats: int, deadline: float
) -> dict[str, dict[str, list[float]]]:
    """Warm every trainer up, then time them in rotating order: ``repeats`` rounds, or fewer
    (``MIN_ROUNDS`` at least) once ``time.perf_counter()`` passes ``deadline``."""
    for trainer in trainers.values():
        for _ in range(warmup):
            trainer.step()
    names = list(trainers)
    times: dict[str, dict[str, list[float]]] = {"wall": {n: [] for n in names}, "cpu": {n: [] for n in names}}
    for r in range(repeats):
        if r >= MIN_ROUNDS and time.perf_counter() > deadline:
            break
        for n in names[r % len(names) :] + names[: r % len(names)]:
            wall, cpu = trainers[n].step()
            times["wall"][n].append(wall)
            times["cpu"][n].append(cpu)
    return times


def medians(times: dict[str, list[float]]) -> dict[str, float]:
    return {n: statistics.median(v) for n, v in times.items()}


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
def machine_info(device: torch.device, threads: int) -> dict:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    info = {
        "cpu": cpu,
        "nproc": os.cpu_count(),
        "torch_threads": threads,
        "torch": torch.__version__,
        "snntorch": importlib.metadata.version("snntorch"),
        "onnxruntime": importlib.metadata.version("onnxruntime"),
        "python": platform.python_version(),
        "load_average_1_5_15_start": list(os.getloadavg()),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


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
