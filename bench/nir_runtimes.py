"""Agreement of each NIR runtime with the PyTorch student, for the table in docs/interop.md.

    OMP_NUM_THREADS=1 python bench/nir_runtimes.py RUN --data-dir DATA [--samples 256] [--out DIR]
        [--runtimes snntorch,spikingjelly,norse,sinabs,spyx] [--leaks trained,0.9] [--encodings direct,poisson]

For every leak (the trained one, or a given value set on a copy) and encoding (the student's
weights run with direct or Poisson input), writes each runtime's flavour
(``exporters.nir_runtimes.export``; ``NAME:plain`` in ``--runtimes``: the plain file) into ``--out`` and validates it on the first ``--samples``
MNIST test images with ``lasnn_deploy.validate`` (the same as ``lasnn-deploy validate --runtime``).
Prints one markdown row per file as it finishes, and the reports as JSON lines into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from lasnn_deploy.data import first_samples, load_split
from lasnn_deploy.exporters import nir as nir_target
from lasnn_deploy.exporters import nir_runtimes
from lasnn_deploy.student import load_student
from lasnn_deploy.validation import validate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--out", type=Path, default=Path("runs/nir-runtimes"))
    parser.add_argument("--runtimes", default=",".join(nir_runtimes.RUNTIMES))
    parser.add_argument("--leaks", default="trained,0.9")
    parser.add_argument("--encodings", default="direct,poisson")
    args = parser.parse_args()
    trained = load_student(args.run)
    images, labels = first_samples(load_split(args.dataset, args.data_dir, "test"), args.samples)
    args.out.mkdir(parents=True, exist_ok=True)
    print("| runtime | leak | encoding | output agreement | spike agreement | max abs logit error | first divergence | s |")
    print("|---|---|---|---|---|---|---|---|")
    for leak in args.leaks.split(","):
        for encoding in args.encodings.split(","):
            student = trained.with_config(encoding=encoding)
            if leak != "trained":
                with torch.no_grad():
                    student.leak.fill_(float(leak))
            for name in args.runtimes.split(","):
                runtime, _, plain = name.partition(":")
                path = args.out / f"{runtime}{'-plain' if plain else ''}-{leak}-{encoding}.nir"
                path = nir_target.export(student, path) if plain else nir_runtimes.export(student, path, runtime)
                start = time.perf_counter()
                report = validate(student, path, images, labels, runtime=runtime)
                seconds = time.perf_counter() - start
                d = report["first_divergence"]
                where = "-" if d is None else (f"{d['layer']} t={d['step']} spike {d['spike_reference']:g} vs "
                                               f"{d['spike_runtime']:g}")
                print(f"| {name} | {float(student.leak.detach()):.5g} | {encoding} | {report['output_agreement']:.4f} | "
                      f"{report['spike_agreement']:.6f} | {report['max_abs_logit_error']:.3g} | {where} | "
                      f"{seconds:.0f} |", flush=True)
                with open(args.out / "reports.jsonl", "a") as f:
                    f.write(json.dumps({"leak": leak, **report}) + "\n")


if __name__ == "__main__":
    main()
