"""Accuracy against energy and latency at several T, for every method present, in one command.

For each run folder given, the methods present are its student (``student.safetensors``, the
run's ``method``) and, when the run kept it and its method is not ``conversion`` already, the
converted SNN before fine-tuning (``converted.safetensors``: threshold-balanced conversion). A
network found in several run folders (runs trained from one intermediate ANN share their converted
SNN) is one network: identity is by content (``fingerprint``: description and tensors), its rows
name every run holding it. Each network is run on the same test images at every T of the list,
counted exactly and priced on every profile (``report.profile_report``: dynamic and static energy,
latency, both ANN baselines).

How each T is obtained is stated in every row: the weights and thresholds trained (or balanced) at
the run's T, run unchanged for T steps; no rebalancing or fine-tuning happens at another T, so a
T below the trained one shows what cutting the steps of that very network costs.

Writes ``tradeoff.json``, ``tradeoff.md`` (one table) and ``pareto.png`` (accuracy against
energy per inference, dynamic plus static where known, one panel per profile, the Pareto front
drawn), atomically, after every check and every run.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_path, write_text
from ..errors import UserError
from ..run_folder import RunFolder
from ..student import STUDENT_FILE, SpikingStudent, check_parameters, check_timesteps, deployed_layers, load_student
from .report import HW, count_and_report, parse_hw

FILES = ("tradeoff.json", "tradeoff.md", "pareto.png")


def parse_timesteps(text: str) -> list[int]:
    """``"2,4,8"`` -> ``[2, 4, 8]``; a zero, a duplicate or a non-integer is refused in one line."""
    items = [t.strip() for t in str(text).split(",")]
    try:
        values = [int(t) for t in items]
    except ValueError as err:
        raise UserError(
            f"--timesteps {text!r}: give a positive integer T or, for tradeoff, a comma-separated list such as 2,4,8"
        ) from err
    for t in values:
        check_timesteps(t)
    duplicates = sorted({t for t in values if values.count(t) > 1})
    if duplicates:
        raise UserError(f"--timesteps {text!r}: T = {duplicates[0]} appears twice; give each T once")
    return values


def fingerprint(student: SpikingStudent) -> str:
    """SHA-256 of the student's description and of every tensor (name, dtype, shape, bytes): the
    same network has the same fingerprint whatever file or folder it was read from."""
    digest = hashlib.sha256(json.dumps(student.config.to_dict(), sort_keys=True).encode())
    for name, tensor in sorted(student.state_dict().items()):
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name} {flat.dtype} {tuple(tensor.shape)}\n".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass
class _Model:
    """One distinct network of the run folders, with every run folder that holds it."""

    runs: list[str]
    method: str
    student: SpikingStudent
    how: str


def _models(runs: Sequence[str | os.PathLike]) -> list[_Model]:
    """Every distinct network present in the run folders (the first run's method and provenance,
    every run that holds it), in the order first found."""
    found: dict[str, _Model] = {}

    def add(folder: Path, method: str, student: SpikingStudent, how: str) -> None:
        model = found.setdefault(fingerprint(student), _Model([], method, student, how))
        if str(folder) not in model.runs:
            model.runs.append(str(folder))

    for r in runs:
        path = Path(r)
        student = load_student(path)
        run = RunFolder.of(path)
        folder, method = run.folder, run.method()
        T = student.config.timesteps
        how = "conversion at T={T}" if method == "conversion" else f"converted, then fine-tuned by {method} at T={T}"
        add(folder, method, student, how.format(T=T))
        converted = run.converted
        if method != "conversion" and converted is not None and (path.is_dir() or path.name == STUDENT_FILE):
            how = f"threshold-balanced conversion at T={T}, not fine-tuned"
            add(folder, "conversion", load_student(converted), how)
    return list(found.values())


def tradeoff(
    runs: Sequence[str | os.PathLike],
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    timesteps: Sequence[int] | str,
    hw: HW = "all",
    out_dir: str | os.PathLike,
    seed: int = 0,
    batch_size: int = 64,
    weight_bits: int = 8,
    progress: bool = True,
) -> dict[str, Any]:
    """Accuracy, energy per profile (dynamic, static) and latency of every method present at every T.

    ``runs``: run folders (or student files); ``timesteps``: a list or ``"2,4,8"``; ``hw``: as
    ``report.parse_hw`` (``"all"``, or profile names and ``.toml`` paths, comma-separated). A network
    held by several runs gives one row per T, whose ``runs`` names them all. Returns the JSON content.
    """
    Ts = parse_timesteps(",".join(map(str, timesteps)) if not isinstance(timesteps, str) else timesteps)
    profiles = parse_hw(hw)
    if not runs:
        raise UserError("give at least one run folder (from `lasnn-deploy train --out`)")
    models = _models(runs)
    for student in (m.student for m in models):
        shape = tuple(student.config.input_shape)
        if images.dim() != 4 or tuple(images.shape[1:]) != shape or len(images) == 0 or len(labels) != len(images):
            raise UserError(
                f"images must be [N, {', '.join(map(str, shape))}] with one label each, got {list(images.shape)}"
            )
        deployed_layers(student)
        check_parameters(student)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder for {', '.join(FILES)}")
    rows = []
    for model in models:
        trained = model.student
        for T in Ts:
            student = trained.with_config(timesteps=T)  # the one way to run at another T (lasnn_deploy/inputs.py)
            counted = count_and_report(
                student,
                images,
                profiles,
                labels,
                seed=seed,
                batch_size=batch_size,
                progress=progress,
                weight_bits=weight_bits,
            )
            energy = {}
            for name, r in counted.reports.items():
                energy[name] = {
                    k: r[k]
                    for k in (
                        "dynamic_energy_j",
                        "static_energy_j",
                        "energy_with_static_j",
                        "latency_s",
                        "time_per_step_s",
                        "throughput_per_s",
                        "unknown",
                    )
                }
                energy[name]["ann_fp32_j"] = r["ann_baselines"]["fp32"]["energy_j"]
                energy[name]["ann_int8_j"] = r["ann_baselines"]["int8"]["energy_j"]
            rows.append(
                {
                    "runs": model.runs,
                    "method": model.method,
                    "timesteps": T,
                    "trained_timesteps": trained.config.timesteps,
                    "obtained": f"{model.how}; run unchanged for T={T} steps (no rebalancing or fine-tuning at this T)",
                    "accuracy": counted.accuracy,
                    "firing_rate": r["firing_rate"],
                    "energy": energy,
                }
            )
    result = {
        "samples": len(images),
        "timesteps": Ts,
        "hardware": [p.name for p in profiles],
        "rows": rows,
        "profiles": {p.name: p.to_dict() for p in profiles},
    }
    with atomic_path(out / FILES[0]) as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")
    write_text(out / FILES[1], tradeoff_markdown(result))
    from .plots import pareto_plot  # matplotlib costs seconds to import

    pareto_plot(result, out / FILES[2])
    return result


def _e(value: float | None) -> str:
    from .summary import _j

    return _j(value)


def tradeoff_markdown(result: dict[str, Any]) -> str:
    """One table: a row per network and T (with the runs holding it), a column group per profile."""
    names = result["hardware"]
    head = (
        "| method | runs | T | accuracy | firing rate | "
        + " | ".join(f"{n} dynamic / static / latency" for n in names)
        + " | obtained |"
    )
    lines = [
        "# Accuracy, energy and latency against T",
        "",
        f"{result['samples']} test samples; energy per inference; static = chips' static power x latency; "
        "unknown where a profile's figure is unpublished.",
        "",
        head,
        "|" + "---|" * (6 + len(names)),
    ]
    for row in result["rows"]:
        cells = []
        for n in names:
            e = row["energy"][n]
            latency = "unknown" if e["latency_s"] is None else f"{e['latency_s'] * 1e6:.4g} us"
            cells.append(f"{_e(e['dynamic_energy_j'])} / {_e(e['static_energy_j'])} / {latency}")
        lines.append(
            f"| {row['method']} | {', '.join(row['runs'])} | {row['timesteps']} | {row['accuracy']:.4f} | {row['firing_rate']:.4f} | "
            + " | ".join(cells)
            + f" | {row['obtained']} |"
        )
    first = next(iter(result["rows"][0]["energy"].values()))
    lines += [
        "",
        "ANN baselines (same network, 45 nm, per inference): "
        + f"fp32 {_e(first['ann_fp32_j'])}, int8 {_e(first['ann_int8_j'])}.",
    ]
    return "\n".join(lines) + "\n"
