"""The command line's grammar: every command's options, defined once each, with argparse.

Each subcommand's parser sets ``func`` to its ``commands.cmd_*``; argument types turn a bad value
into one line (exit 2).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from .. import __version__
from .commands import cmd_demo, cmd_energy, cmd_evaluate, cmd_export, cmd_import, cmd_tradeoff, cmd_train, cmd_validate

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


def _add_hw(p: argparse.ArgumentParser, default: str) -> None:
    """``--hw``: one grammar and parser (``report.parse_hw``) for ``energy`` and ``tradeoff``."""
    from ..hw_targets.profile import list_profiles  # reads a folder listing, no torch

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


def _shape(text: str) -> tuple[int, ...]:
    """argparse type: ``C,H,W`` positive integers."""
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected C,H,W integers, got {text!r}") from err
    if len(shape) != 3 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected three positive integers C,H,W, got {text!r}")
    return shape


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
    from ..training.config import add_train_arguments

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
