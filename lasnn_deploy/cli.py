"""``lasnn-deploy``: argument parsing only; every command calls a function of the Python API.

Bad input (a ``UserError`` or a bad option) prints one line on stderr and exits 2; any other
failure prints one line and exits 1, with the traceback only under ``--debug``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from . import __version__
from .errors import UserError

# exporters.nir_runtimes.RUNTIMES, named here so that --help does not import torch (a test keeps them equal)
RUNTIME_NAMES = ("snntorch", "spikingjelly", "norse", "sinabs", "spyx")

DATASET_HELP = "data set: digits (bundled, default), mnist, fashion-mnist, cifar10, cifar100, imagefolder"
DATA_DIR_HELP = (
    "folder with the data set's official files: the folder holding MNIST/ (or MNIST/ itself), "
    "cifar-10-batches-py/, or train/ and test/ class folders for imagefolder"
)


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line (exit 2) instead of usage + error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """argparse type: an integer >= ``minimum`` (argparse turns the error into one line, exit 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from err
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def _samples(text: str) -> int | None:
    """argparse type of ``--samples``: an integer >= 1, or ``all`` (None: the whole test split)."""
    if text == "all":
        return None
    if not text.lstrip("-").isdigit():
        raise argparse.ArgumentTypeError(f"expected an integer or 'all', got {text!r}")
    return _int_at_least(1)(text)


_samples.__name__ = "integer >= 1 or 'all'"


# -- options shared by several commands: each defined once, here -------------------------------
def _add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", type=Path, help="run folder or student.safetensors")


def _add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", type=Path, help="also write the full result to this JSON file")


OWN_T = "the student's own T"


def _add_timesteps(p: argparse.ArgumentParser, default: str | None) -> None:
    """``--timesteps``: one grammar (``tradeoff.parse_timesteps``); all but ``tradeoff`` take one T."""
    p.add_argument(
        "--timesteps",
        default=default,
        metavar="T[,T...]",
        help=f"time steps per sample; tradeoff takes several, comma-separated, each once (default: {default or OWN_T})",
    )


def _timesteps(args: argparse.Namespace) -> int | None:
    """The one T of ``--timesteps`` (None: the student's own); a list is refused in one line."""
    if args.timesteps is None:
        return None
    from .hw_targets.tradeoff import parse_timesteps

    values = parse_timesteps(args.timesteps)
    if len(values) > 1:
        raise UserError(
            f"--timesteps {args.timesteps!r}: {args.command} runs one T; give one, or compare several with "
            f"`lasnn-deploy tradeoff --timesteps {args.timesteps}`"
        )
    return values[0]


def _add_hw(p: argparse.ArgumentParser, default: str) -> None:
    """``--hw``: one grammar and parser (``report.parse_hw``) for ``energy`` and ``tradeoff``."""
    from .hw_targets.profile import list_profiles  # reads a folder listing, no torch

    p.add_argument(
        "--hw",
        default=default,
        metavar="PROFILES",
        help="hardware: 'all' (every shipped profile), or profile names and .toml files separated by commas, "
        f"e.g. loihi_calibrated,cmos45; shipped: {', '.join(list_profiles())} (default: {default})",
    )


def _add_weight_bits(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--weight-bits",
        type=_int_at_least(1),
        default=8,
        metavar="B",
        help="synaptic weight bits for the core mapping (default: 8)",
    )


def _add_data(p: argparse.ArgumentParser, samples_default: int | None) -> None:
    p.add_argument("--dataset", default="digits", help=DATASET_HELP)
    p.add_argument("--data-dir", type=Path, help=DATA_DIR_HELP)
    p.add_argument(
        "--samples",
        type=_samples,
        default=samples_default,
        metavar="N",
        help="use the first N test samples in file order, or 'all' of them"
        + (" (default: all)" if samples_default is None else f" (default: {samples_default})"),
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the Poisson input spikes (default: 0)")


def _test_split(args: argparse.Namespace):
    from .data import first_samples, load_split

    return first_samples(load_split(args.dataset, args.data_dir, "test"), args.samples)


def _test_subset(args: argparse.Namespace):
    """The first ``--samples`` test samples as a data set, loaded batch by batch by whoever streams it."""
    from torch.utils.data import Subset

    from .data import load_split

    split = load_split(args.dataset, args.data_dir, "test")
    return split if args.samples is None or args.samples >= len(split) else Subset(split, range(args.samples))


def _print_json_or(args: argparse.Namespace, result: dict, summary: Callable[[dict], str]) -> None:
    if getattr(args, "json", None):
        from .atomic import write_text

        write_text(args.json, json.dumps(result, indent=2) + "\n")
    print(summary(result))


# -- commands --------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    summary = run_demo(args.out, fast=args.fast)
    return 0 if all(v["passed"] for v in summary["validation"].values()) else 1


def cmd_train(args: argparse.Namespace) -> int:
    from .training import train
    from .training.config import config_from_args

    run = train(config_from_args(args))
    if os.environ.get("RANK", "0") == "0":  # under torchrun only the first process reports
        print(f"run folder: {run}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from torch.utils.data import Subset

    from .data import load_split
    from .evaluation import evaluate_student
    from .student import load_student

    timesteps = _timesteps(args)
    student = load_student(args.model)
    split = load_split(args.dataset, args.data_dir, "test")
    if args.samples is not None:
        split = Subset(split, range(min(args.samples, len(split))))
    if timesteps is not None:
        student = student.with_config(timesteps=timesteps)
    result = evaluate_student(student, split, seed=args.seed, progress=True, loihi=args.loihi)
    result.update(
        timesteps=student.config.timesteps,
        encoding=student.config.encoding,
        dataset=args.dataset,
        mode="loihi-quantised" if args.loihi else "float",
    )
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
    from .exporters import get_target
    from .student import load_student

    options = {} if args.nir_for is None else {"runtime": args.nir_for}  # --nir-for R is the option runtime=R
    target = get_target(args.target, **options)
    student = load_student(args.model)
    folder = args.model if args.model.is_dir() else args.model.parent
    out = args.out or folder / f"student{target.suffixes[0]}"
    path = target.export(student, out)
    print(f"wrote {args.target} export" + (f" for {args.nir_for}" if args.nir_for else "") + f": {path}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from .nir_import import import_nir

    path = import_nir(
        args.file,
        args.out,
        library=args.source,
        dt=args.dt,
        timesteps=_timesteps(args),
        encoding=args.encoding,
        input_shape=args.input_shape,
    )
    print(f"wrote student: {path}")
    return 0


def _shape(text: str) -> tuple[int, ...]:
    """argparse type: ``C,H,W`` positive integers."""
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected C,H,W integers, got {text!r}") from err
    if len(shape) != 3 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected three positive integers C,H,W, got {text!r}")
    return shape


def cmd_validate(args: argparse.Namespace) -> int:
    from .student import load_student
    from .validation import validate

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
    from .hw_targets.report import parse_hw
    from .hw_targets.tradeoff import parse_timesteps, tradeoff

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
    from .hw_targets.report import energy_report, parse_hw
    from .student import load_student

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


# -- parser ----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="lasnn-deploy",
        formatter_class=_formatter,
        description="Train spiking neural networks by layer-wise ANN-to-SNN distillation (LaSNN), export them to "
        "NIR, ONNX and Lava, prove each export reproduces PyTorch spike for spike, and report energy.",
        epilog="typical flow:\n  lasnn-deploy train --dataset mnist --data-dir DATA --preset quick --out runs/mnist\n"
        "  lasnn-deploy export runs/mnist --target onnx --out runs/mnist/student.onnx\n"
        "  lasnn-deploy validate runs/mnist runs/mnist/student.onnx --dataset mnist --data-dir DATA --samples 256\n"
        "  lasnn-deploy energy runs/mnist --dataset mnist --data-dir DATA --hw all --out runs/mnist/energy\n"
        "or all of it on bundled data: lasnn-deploy demo",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True

    def add(name: str, func: Callable[[argparse.Namespace], int], help: str, example: str) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name, help=help, description=help, epilog=f"example:\n  {example}", formatter_class=_formatter
        )
        p.set_defaults(func=func)
        return p

    p = add(
        "demo",
        cmd_demo,
        "run the whole pipeline (train, export x3, validate, energy) on the bundled digits data",
        "lasnn-deploy demo --out runs/demo",
    )
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="run folder (default: runs/demo)")
    p.add_argument("--fast", action="store_true", help="a shorter schedule (used by the tests)")

    p = add(
        "train",
        cmd_train,
        "train a student SNN: teacher ANN, intermediate ANN, conversion, distillation",
        "lasnn-deploy train --dataset mnist --data-dir ../shared/data --preset quick --method lasnn --out runs/mnist",
    )
    from .training.config import add_train_arguments

    add_train_arguments(p)

    p = add(
        "evaluate",
        cmd_evaluate,
        "test accuracy and spikes per sample of a trained student",
        "lasnn-deploy evaluate runs/mnist --dataset mnist --data-dir ../shared/data --timesteps 16",
    )
    _add_model(p)
    _add_data(p, samples_default=None)
    _add_timesteps(p, None)
    p.add_argument(
        "--loihi",
        action="store_true",
        help="run the Loihi-quantised mode (8-bit weights, integer neurons: what the Lava export computes)",
    )
    _add_json(p)

    p = add(
        "export",
        cmd_export,
        "export a student to NIR, ONNX (time unrolled) or Lava netx HDF5",
        "lasnn-deploy export runs/mnist --target lava --out runs/mnist/student.h5",
    )
    _add_model(p)
    p.add_argument("--target", required=True, help="nir | onnx | lava")
    p.add_argument("--out", type=Path, help="output file (default: student.<ext> in the run folder)")
    p.add_argument(
        "--nir-for",
        metavar="RUNTIME",
        choices=RUNTIME_NAMES,
        help="with --target nir: an equivalent graph that RUNTIME's importer runs as it ships "
        f"({', '.join(RUNTIME_NAMES)}; docs/interop.md); default: the plain NIR file",
    )

    p = add(
        "import",
        cmd_import,
        "read a NIR graph (ours, or written by snnTorch, Norse, Sinabs or SpikingJelly) into a "
        "student run folder that export, validate and energy take",
        "lasnn-deploy import net.nir --from snntorch --out runs/net",
    )
    p.add_argument("file", type=Path, help="the .nir file")
    p.add_argument("--out", type=Path, required=True, help="run folder to write student.safetensors into")
    p.add_argument(
        "--from",
        dest="source",
        choices=["snntorch", "norse", "sinabs", "spikingjelly"],
        help="the exporter that wrote the file: sets its dt and tau convention (docs/semantics.md)",
    )
    p.add_argument("--dt", type=float, help="time step in seconds (overrides the exporter's default or the file's)")
    _add_timesteps(p, "8")
    p.add_argument(
        "--encoding", choices=["direct", "poisson"], default="direct", help="input encoding (default: direct)"
    )
    p.add_argument("--input-shape", type=_shape, metavar="C,H,W", help="read a vector input as this image shape")

    p = add(
        "validate",
        cmd_validate,
        "run an export in its own runtime and compare its spikes with PyTorch (exit 1 on disagreement)",
        "lasnn-deploy validate runs/mnist runs/mnist/student.onnx --dataset mnist --data-dir ../shared/data --samples 256 --json v.json",
    )
    _add_model(p)
    p.add_argument("file", type=Path, help="the exported file (.onnx, .nir, or .h5 / .net for netx)")
    _add_data(p, samples_default=64)
    _add_json(p)
    p.add_argument(
        "--runtime",
        choices=RUNTIME_NAMES,
        help="NIR importer to run a .nir file in (default: the one it was exported for, else snntorch)",
    )
    p.add_argument(
        "--trace",
        type=Path,
        metavar="FILE",
        help="also write the reference's spikes per LIF layer as a golden trace (NIR data, HDF5)",
    )

    p = add(
        "energy",
        cmd_energy,
        "spikes, synaptic operations, energy and deployability on named hardware",
        "lasnn-deploy energy runs/mnist --dataset mnist --data-dir ../shared/data --hw all --out runs/mnist/energy",
    )
    _add_model(p)
    _add_data(p, samples_default=256)
    _add_hw(p, "loihi")
    p.add_argument("--out", type=Path, required=True, help="folder for energy.json, energy.md and the plots")
    _add_timesteps(p, None)
    _add_weight_bits(p)
    p.add_argument(
        "--sanafe",
        type=_int_at_least(0),
        default=0,
        metavar="N",
        help="also simulate the first N samples with SANA-FE's Loihi model (optional extra, GPL-3.0, run in a separate process)",
    )
    _add_json(p)

    p = add(
        "tradeoff",
        cmd_tradeoff,
        "accuracy, energy (dynamic and static) and latency at several T, for every method present",
        "lasnn-deploy tradeoff runs/mnist --dataset mnist --data-dir ../shared/data --timesteps 2,4,8 "
        "--out runs/mnist/tradeoff",
    )
    p.add_argument("runs", type=Path, nargs="+", help="run folders (their student, and their converted SNN when kept)")
    _add_data(p, samples_default=256)
    _add_timesteps(p, "2,4,8")
    _add_hw(p, "all")
    p.add_argument("--out", type=Path, required=True, help="folder for tradeoff.json, tradeoff.md and pareto.png")
    _add_weight_bits(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UserError as err:
        if args.debug:
            raise
        print(f"lasnn-deploy {args.command}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lasnn-deploy {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - one line for users, the traceback under --debug
        if args.debug:
            raise
        first = str(err).splitlines()[0] if str(err) else ""
        print(
            f"lasnn-deploy {args.command}: error: {type(err).__name__}: {first} (rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
