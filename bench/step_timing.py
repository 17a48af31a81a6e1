"""Timing and memory of training steps, shared by the benches: ``Trainer`` (one model, its Adam step,
timed; its peak live tensor bytes), ``alternate`` (variants in rotating order, medians of wall-clock
and process CPU time) and ``machine_info`` for the result files.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

RESULTS = Path(__file__).resolve().parent / "results"
MIN_ROUNDS = 3


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
