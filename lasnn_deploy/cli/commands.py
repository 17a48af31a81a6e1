"""What each command does with its parsed arguments: read them, call the Python API, print a summary.

Each ``cmd_*`` returns the exit status; heavy modules (torch, the runtimes) are imported inside the
command that needs them, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable

from ..errors import UserError


def _timesteps(args: argparse.Namespace) -> int | None:
    """The one T of ``--timesteps`` (None: the student's own)."""
    return None if args.timesteps is None else _one_timestep(args)


def _one_timestep(args: argparse.Namespace) -> int:
    """The one T ``--timesteps`` gives (``import``'s has a default); a list is refused in one line."""
    from ..hw_targets.tradeoff import parse_timesteps

    values = parse_timesteps(args.timesteps)
    if len(values) > 1:
        raise UserError(
            f"--timesteps {args.timesteps!r}: {args.command} runs one T; give one, or compare several with "
            f"`lasnn-deploy tradeoff --timesteps {args.timesteps}`"
        )
    return values[0]


def _test_split(args: argparse.Namespace):
    from ..data import first_samples, load_split

    return first_samples(load_split(args.dataset, args.data_dir, "test"), args.samples)


def _test_subset(args: argparse.Namespace):
    """The first ``--samples`` test samples as a data set, loaded batch by batch by whoever streams it."""
    from torch.utils.data import Subset

    from ..data import load_split, sample_count

    split = load_split(args.dataset, args.data_dir, "test")
    return split if args.samples is None or args.samples >= sample_count(split) else Subset(split, range(args.samples))


def _print_json_or(args: argparse.Namespace, result: dict, summary: Callable[[dict], str]) -> None:
    if getattr(args, "json", None):
        from ..atomic import write_text

        write_text(args.json, json.dumps(result, indent=2) + "\n")
    print(summary(result))


# -- commands --------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    summary = run_demo(args.out, fast=args.fast)
    return 0 if all(v["passed"] for v in summary["validation"].values()) else 1


def cmd_train(args: argparse.Namespace) -> int:
    from ..training import train
    from ..training.config import config_from_args

    run = train(config_from_args(args))
    if os.environ.get("RANK", "0") == "0":  # under torchrun only the first process reports
        print(f"run folder: {run}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from torch.utils.data import Subset

    from ..data import load_split, sample_count
    from ..evaluation import evaluate_student
    from ..student import load_student

    timesteps = _timesteps(args)
    student = load_student(args.model)
    split = load_split(args.dataset, args.data_dir, "test")
    if args.samples is not None:
        split = Subset(split, range(min(args.samples, sample_count(split))))
    if timesteps is not None:
        student = student.with_config(timesteps=timesteps)
    result = {
        **evaluate_student(student, split, seed=args.seed, progress=True, loihi=args.loihi),
        "timesteps": student.config.timesteps,
        "encoding": student.config.encoding,
        "dataset": args.dataset,
        "mode": "loihi-quantised" if args.loihi else "float",
    }
    _print_json_or(
        args,
        result,
        lambda r: (
            f"test_accuracy {r['test_accuracy']:.4f}  spikes_per_sample {r['spikes_per_sample']:.1f}  "
            f"({r['samples']} samples, T={r['timesteps']}, {r['encoding']}, {r['mode']})"
        ),
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ..exporters import get_target
    from ..student import load_student

    options = {} if args.nir_for is None else {"runtime": args.nir_for}  # --nir-for R is the option runtime=R
    target = get_target(args.target, **options)
    student = load_student(args.model)
    folder = args.model if args.model.is_dir() else args.model.parent
    out = args.out or folder / f"student{target.suffixes[0]}"
    path = target.export(student, out)
    print(f"wrote {args.target} export" + (f" for {args.nir_for}" if args.nir_for else "") + f": {path}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from ..nir_import import import_nir

    path = import_nir(
        args.file,
        args.out,
        library=args.source,
        dt=args.dt,
        timesteps=_one_timestep(args),
        encoding=args.encoding,
        input_shape=args.input_shape,
    )
    print(f"wrote student: {path}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from ..student import load_student
    from ..validation import validate

    student = load_student(args.model)
    if not args.file.is_file():
        raise UserError(f"no exported file at {args.file}: create one with `lasnn-deploy export`")
    if args.trace is not None and args.trace.is_dir():
        raise UserError(f"--trace {args.trace} is a folder; give a file name such as golden.h5")
    report = validate(
        student, args.file, _test_subset(args), seed=args.seed, progress=True, runtime=args.runtime, trace=args.trace
    )

    def summary(r: dict) -> str:
        lines = [f"FAILED: the runtime's layers are not the reference's: {p}" for p in r["layer_mismatch"]]
        if r["first_divergence"]:
            d = r["first_divergence"]
            potentials = ", ".join(
                f"{side} potential {d[f'potential_{side}']:.9g}"
                for side in ("reference", "runtime")
                if f"potential_{side}" in d
            )
            lines.append(
                f"first divergence: layer {d['layer']}, step {d['step']}, sample {d['sample']}, neuron "
                f"{tuple(d['neuron'])}: spike {d['spike_reference']:g} in the reference, "
                f"{d['spike_runtime']:g} in the runtime" + (f" ({potentials})" if potentials else "")
            )
        lines += [f"{'layer':<12}{'spike agreement':>18}"]
        lines += [f"{l['name']:<12}{l['spike_agreement']:>18.6f}" for l in r["layers"]]
        spikes = "not compared" if r["spike_agreement"] is None else f"{r['spike_agreement']:.6f}"
        target = r["target"] + (f" in {r['runtime']}" if "runtime" in r else "")
        lines.append(
            f"{target}: output_agreement {r['output_agreement']:.6f}  spike_agreement {spikes}  "
            f"max_abs_logit_error {r['max_abs_logit_error']:.3g}  ({r['samples']} samples)  "
            + ("PASSED" if r["passed"] else "FAILED: the export does not reproduce PyTorch")
        )
        if "runtime_accuracy" in r:
            reference = "Loihi-quantised PyTorch" if r["target"] == "lava" else "PyTorch reference"
            lines.append(
                f"accuracy: runtime {r['runtime_accuracy']:.4f}, {reference} {r['reference_accuracy']:.4f}, "
                f"float student {r['float_accuracy']:.4f}"
            )
        return "\n".join(lines)

    _print_json_or(args, report, summary)
    return 0 if report["passed"] else 1


def cmd_tradeoff(args: argparse.Namespace) -> int:
    from ..hw_targets.report import parse_hw
    from ..hw_targets.tradeoff import parse_timesteps, tradeoff

    timesteps, profiles = parse_timesteps(args.timesteps), parse_hw(args.hw)  # before the data loads
    images, labels = _test_split(args)
    tradeoff(
        args.runs,
        images,
        labels,
        timesteps=timesteps,
        hw=profiles,
        out_dir=args.out,
        seed=args.seed,
        weight_bits=args.weight_bits,
    )
    print(f"trade-off in {args.out} (tradeoff.json, tradeoff.md, pareto.png)")
    return 0


def cmd_energy(args: argparse.Namespace) -> int:
    from ..hw_targets.report import energy_report, parse_hw
    from ..student import load_student

    timesteps, profiles = _timesteps(args), parse_hw(args.hw)  # before the data loads
    student = load_student(args.model)
    if timesteps is not None:
        student = student.with_config(timesteps=timesteps)
    report = energy_report(
        student,
        _test_subset(args),  # loaded batch by batch: memory does not grow with --samples
        hw=profiles,
        out_dir=args.out,
        seed=args.seed,
        weight_bits=args.weight_bits,
        sanafe_samples=args.sanafe,
    )
    _print_json_or(args, report, lambda _: f"energy report in {args.out} (energy.json, energy.md, plots)")
    return 0
