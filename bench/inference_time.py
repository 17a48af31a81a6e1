"""Per-sample inference time of a trained student: PyTorch float32, PyTorch exact mode, onnxruntime.

    python bench/inference_time.py RUN [--dataset mnist --data-dir DIR] [--repeats N]

The student of the run folder ``RUN`` is exported to ONNX (``lasnn_deploy.exporters.onnx``, in a
temporary folder) and the first 64 test images of the data set are classified three ways, on one
CPU thread (``torch.set_num_threads(1)``, onnxruntime ``intra_op_num_threads=1``):

- ``pytorch_eager``: ``student.run(x)``, float32 kernels (what training and ``evaluate`` use);
- ``pytorch_exact``: ``student.run(x, exact=True)``, float64 currents rounded once (the reference
  the ONNX export reproduces spike for spike);
- ``onnxruntime``: the exported, time-unrolled graph in onnxruntime's CPU provider.

At batch 1 (the first image) and batch 64, each variant runs once to warm up, then ``--repeats``
rounds in rotating order; the reported time is the best round divided by the batch size (the best
is the least disturbed by other processes on a shared machine). Poisson students get the same
input spikes on every side (seed 0). Writes ``bench/results/inference_time.json``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import onnxruntime as ort
import torch

from lasnn_deploy import UserError, export, load_student
from lasnn_deploy.atomic import write_text
from lasnn_deploy.data import DATASETS, first_samples, load_split
from lasnn_deploy.inputs import model_input
from lasnn_deploy.student import check_images

RESULTS = Path(__file__).resolve().parent / "results"
BATCHES = (1, 64)


def variants(student, session: ort.InferenceSession, x: torch.Tensor) -> dict:
    """The three ways to get logits for images ``x``, as zero-argument callables."""
    given = model_input(student.config.encoding, student.config.timesteps, x, seed=0)
    images, spikes = given.images, given.spikes
    feed = {"image": x.numpy()} if spikes is None else {"spikes": spikes.numpy()}

    def torch_run(exact: bool):
        with torch.inference_mode():
            return student.run(images, input_spikes=spikes, exact=exact).logits.numpy()

    return {
        "pytorch_eager": lambda: torch_run(False),
        "pytorch_exact": lambda: torch_run(True),
        "onnxruntime": lambda: session.run(["logits"], feed)[0],
    }


def timed_rounds(runs: dict, repeats: int) -> dict[str, list[float]]:
    """Wall-clock seconds of each call per variant, ``repeats`` rounds in rotating order."""
    names = list(runs)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="run folder (or student.safetensors) from `lasnn-deploy train`")
    p.add_argument(
        "--dataset", default="digits", choices=list(DATASETS), help="test images to classify (default: digits, bundled)"
    )
    p.add_argument("--data-dir", default=None, help="folder with the data set's files (not needed for digits)")
    p.add_argument(
        "--repeats", type=int, default=20, help="timed rounds per variant and batch size; the best counts (default 20)"
    )
    p.add_argument("--out", type=Path, default=RESULTS / "inference_time.json", help="JSON file to write")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    try:
        student = load_student(args.run)
        images, labels = first_samples(load_split(args.dataset, args.data_dir, "test"), max(BATCHES))
        check_images(student.config, images, labels)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
    with tempfile.TemporaryDirectory() as tmp:
        path = export(student, "onnx", Path(tmp) / "student.onnx")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    load_start, results = list(os.getloadavg()), {}
    for batch in BATCHES:
        runs = variants(student, session, images[:batch])
        logits = {n: fn() for n, fn in runs.items()}  # also the warm-up
        times = timed_rounds(runs, args.repeats)
        results[f"batch{batch}"] = {
            "seconds_per_sample_best": {n: min(t) / batch for n, t in times.items()},
            "seconds_all": times,
            "onnx_vs_exact_max_abs_logit_diff": float(abs(logits["onnxruntime"] - logits["pytorch_exact"]).max()),
            "onnx_vs_exact_same_class": bool(
                (logits["onnxruntime"].argmax(1) == logits["pytorch_exact"].argmax(1)).all()
            ),
        }
    cfg = student.config
    result = {
        "command": " ".join(["python bench/inference_time.py", *(argv if argv is not None else sys.argv[1:])]),
        "student": {
            "run": str(args.run),
            "dataset": args.dataset,
            "timesteps": cfg.timesteps,
            "encoding": cfg.encoding,
            "input_shape": list(cfg.input_shape),
            "parameters": sum(t.numel() for t in student.parameters()),
        },
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "nproc": os.cpu_count(),
            "threads": 1,
            "torch": torch.__version__,
            "onnxruntime": importlib.metadata.version("onnxruntime"),
            "python": platform.python_version(),
            "load_average_1_5_15_start": load_start,
            "load_average_1_5_15_end": list(os.getloadavg()),
        },
        "repeats": args.repeats,
        "results": results,
    }
    write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"{'batch':>5} {'variant':<14} {'ms/sample':>10} {'x eager':>8}")
    for batch in BATCHES:
        best = results[f"batch{batch}"]["seconds_per_sample_best"]
        for n in best:
            print(f"{batch:>5} {n:<14} {best[n] * 1e3:>10.3f} {best[n] / best['pytorch_eager']:>8.2f}")
    print(
        "onnxruntime vs exact: max |logit diff| "
        + ", ".join(f"batch{b} {results[f'batch{b}']['onnx_vs_exact_max_abs_logit_diff']:.3g}" for b in BATCHES)
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
