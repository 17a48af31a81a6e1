"""Lava simulator cost per extra sample: today's one long run against a baseline commit's runner, side by side.

    python bench/lava_throughput.py RUN [--dataset mnist --data-dir DIR] [--samples 4 36]
        [--baseline 1fddca9] [--out bench/results/lava_throughput.json]

The student of the run folder ``RUN`` is exported to Lava netx (in a temporary folder) and the
first ``max(--samples)`` test images are run through Lava's fixed-point simulator by two runners
in the same process, alternately: ``current`` (``lasnn_deploy.exporters.lava.run``: every sample
in one long run, fed and read by ``exporters.lava_stream``) and ``baseline`` (``exporters/lava.py``
as it was at ``--baseline``, loaded from git: before one long run, one ``net.run`` per sample).
Each runner's wall time (build, compile and run) is taken at both sample counts; the cost per
extra sample is the difference divided by the difference in samples, so the fixed cost of
building and compiling the network drops out. Both runners' spikes and logits must equal the
Loihi-quantised reference (``lava.reference``), else the script stops. Writes ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from lasnn_deploy.exporters.lava import LavaTarget

from lasnn_deploy import export, load_student
from lasnn_deploy.atomic import write_text
from lasnn_deploy.data import DATASETS, first_samples, load_split
from lasnn_deploy.inputs import model_input

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def baseline_runner(rev: str):
    """``_run(path, images)`` of ``exporters/lava.py`` at git revision ``rev`` (one sample per ``net.run``),
    loaded beside today's modules."""
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{rev}:exporters/lava.py"], capture_output=True, text=True, check=True
    ).stdout
    folder = Path(tempfile.mkdtemp(prefix="lava-baseline-"))
    file = folder / "lava_baseline.py"
    file.write_text(source)
    spec = importlib.util.spec_from_file_location("lasnn_deploy.exporters._lava_baseline", file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)  # its relative imports resolve inside lasnn_deploy.exporters
    return module._run


def timed(run, path: Path, images, reference) -> float:
    """Wall seconds of ``run(path, images)``; its spikes and logits must equal ``reference``'s."""
    started = time.perf_counter()
    result = run(path, images)
    seconds = time.perf_counter() - started
    n = len(images)
    same = np.array_equal(result.logits, reference.logits[:n]) and all(
        np.array_equal(g, w[:, :n]) for g, w in zip(result.spikes, reference.spikes, strict=True)
    )
    if not same:
        raise SystemExit(f"the runner's spikes or logits differ from the Loihi-quantised reference ({n} samples)")
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", type=Path)
    p.add_argument("--dataset", default="digits", choices=DATASETS)
    p.add_argument("--data-dir", type=Path)
    p.add_argument("--samples", type=int, nargs=2, default=(4, 36), metavar=("FEW", "MANY"))
    p.add_argument("--baseline", default="1fddca9", help="git revision whose exporters/lava.py is the baseline")
    p.add_argument("--out", type=Path, default=RESULTS / "lava_throughput.json")
    args = p.parse_args()
    few, many = sorted(args.samples)
    student = load_student(args.run)
    images, _ = first_samples(load_split(args.dataset, args.data_dir, "test"), many)
    with tempfile.TemporaryDirectory() as tmp:
        path = export(student, "lava", Path(tmp) / "student.h5")
        target, cfg = LavaTarget(), student.config
        reference = target.reference(student, model_input(cfg.encoding, cfg.timesteps, images))
        runners = {
            "baseline": baseline_runner(args.baseline),
            "current": lambda path, x: target.run(path, model_input(cfg.encoding, cfg.timesteps, x)),
        }
        seconds = {name: {} for name in runners}
        for n in (few, many):
            for name, run in runners.items():
                seconds[name][n] = timed(run, path, images[:n], reference)
                print(f"{name:<9} {n:>5} samples: {seconds[name][n]:.2f} s", flush=True)
    per_extra = {name: (s[many] - s[few]) / (many - few) for name, s in seconds.items()}
    result = {
        "run": str(args.run),
        "dataset": args.dataset,
        "timesteps": student.config.timesteps,
        "encoding": student.config.encoding,
        "samples": [few, many],
        "baseline": args.baseline,
        "seconds": {name: {str(n): s for n, s in v.items()} for name, v in seconds.items()},
        "seconds_per_extra_sample": per_extra,
        "speedup_per_extra_sample": per_extra["baseline"] / per_extra["current"],
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "command": " ".join(sys.argv),
    }
    write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(
        f"per extra sample: baseline {per_extra['baseline']:.3f} s, current {per_extra['current']:.3f} s "
        f"({result['speedup_per_extra_sample']:.1f}x) -> {args.out}"
    )


if __name__ == "__main__":
    main()
