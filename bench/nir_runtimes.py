"""Agreement of each NIR runtime with the PyTorch student, for the table in docs/interop.md.

    OMP_NUM_THREADS=1 python bench/nir_runtimes.py RUN --data-dir DATA [--samples 256] [--out DIR]
        [--runtimes snntorch,spikingjelly,norse,sinabs,spyx] [--leaks trained,0.9] [--encodings direct,poisson]

For every leak (the trained one, or a given value set on a copy) and encoding (the student's
weights run with direct or Poisson input), writes each runtime's flavour
(``NirTarget(runtime=NAME)``, as ``export --nir-for NAME``; ``NAME:plain`` in ``--runtimes``: the plain file) into ``--out``
and validates it on the first ``--samples`` MNIST test images
with ``lasnn_deploy.validate`` (the same as ``lasnn-deploy validate --runtime``).
Prints one markdown row per file as it finishes, and the reports as JSON lines into ``--out``.
``--per-step`` also prints, per file, the spike agreement at each step over all LIF layers and the
spikes counted by the reference and the runtime (a runtime value of 2 counts two).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from lasnn_deploy.exporters import nir_runtimes
from lasnn_deploy.exporters.nir import NirTarget

from lasnn_deploy.data import first_samples, load_split
from lasnn_deploy.inputs import model_input
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
    parser.add_argument("--per-step", action="store_true")
    args = parser.parse_args()
    trained = load_student(args.run)
    images, labels = first_samples(load_split(args.dataset, args.data_dir, "test"), args.samples)
    args.out.mkdir(parents=True, exist_ok=True)
    print(
        "| runtime | leak | encoding | output agreement | spike agreement | max abs logit error | first divergence | s |"
    )
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
                path = NirTarget(runtime=None if plain else runtime).export(student, path)
                start = time.perf_counter()
                report = validate(student, path, images, labels, runtime=runtime)
                seconds = time.perf_counter() - start
                d = report["first_divergence"]
                where = (
                    "-"
                    if d is None
                    else (f"{d['layer']} t={d['step']} spike {d['spike_reference']:g} vs {d['spike_runtime']:g}")
                )
                print(
                    f"| {name} | {float(student.leak.detach()):.5g} | {encoding} | {report['output_agreement']:.4f} | "
                    f"{report['spike_agreement']:.6f} | {report['max_abs_logit_error']:.3g} | {where} | "
                    f"{seconds:.0f} |",
                    flush=True,
                )
                with open(args.out / "reports.jsonl", "a") as f:
                    f.write(json.dumps({"leak": leak, **report}) + "\n")
                if args.per_step:
                    per_step(student, path, runtime, images)


def per_step(student, path: Path, runtime: str, images: torch.Tensor) -> None:
    """Spike agreement at each step (all LIF layers) and spike totals, on one chunk of the inputs."""
    target = NirTarget.for_file(path, runtime=runtime)
    given = model_input(student.config.encoding, student.config.timesteps, images[:256], seed=0)
    reference, result = target.reference(student, given), target.run(path, given)
    T = reference.spikes[0].shape[0]
    equal = [
        sum(float((r[t] == g[t]).sum()) for r, g in zip(reference.spikes, result.spikes, strict=True)) for t in range(T)
    ]
    size = sum(r[0].size for r in reference.spikes)
    totals = [sum(float(s.sum()) for s in run.spikes) for run in (reference, result)]
    print(
        f"    per step: {' '.join(f'{e / size:.4f}' for e in equal)}; spikes reference {totals[0]:.0f}, "
        f"runtime {totals[1]:.0f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
