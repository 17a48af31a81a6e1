"""The ``energy`` command's output: ``energy.json``, ``energy.md`` and PNG plots (SPEC section 5).

One profile gives the SPEC form (``hardware``, ``timesteps``, ``samples``, ``layers``,
``total_energy_j``, ``ann_macs``, ``ann_energy_j``, ``profile`` and, for constrained hardware,
``cores``, ``chips``, ``violations``). ``hw="all"`` gives every shipped profile side by side::

    {"hardware": ["cmos45", "loihi", ...], "timesteps": T, "samples": N, "reports": {"loihi": <SPEC form>, ...}}

Counts are per sample: means over the samples evaluated, with ``*_std`` the population standard
deviation over those samples.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import atomic_path, write_text
from ..errors import UserError
from ..student import SpikingStudent, check_parameters, deployed_layers
from .constraints import map_to_cores
from .counting import ann_macs
from .energy import StudentRun, price_layer, run_and_count
from .profile import Profile, list_profiles, load_profile
from .summary import markdown_summary

JSON_FILE, MD_FILE = "energy.json", "energy.md"


def _stat(values: np.ndarray) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values))


def _resolve_profiles(hw: str | os.PathLike) -> list[Profile]:
    if str(hw) == "all":
        return [load_profile(name) for name in list_profiles()]
    return [load_profile(hw)]


def profile_report(run: StudentRun, student: SpikingStudent, profile: Profile, *, weight_bits: int = 8) -> dict[str, Any]:
    """The SPEC section 5 ``energy.json`` content of one profile, from the counted run."""
    ann = ann_macs(student.config)
    layers, total = [], np.zeros(len(run.predictions))
    for c, source in zip(run.layers, (d.source for d in deployed_layers(student))):
        by_cat = price_layer(c, profile)
        energy = sum(by_cat.values())
        total = total + energy
        spikes, rate, synops, macs, e = _stat(c.spikes), _stat(c.firing_rate), _stat(c.synops), _stat(c.macs), _stat(energy)
        layers.append({
            "name": c.name, "kind": c.kind, "spiking": c.spiking, "neurons": c.neurons,
            "spikes": spikes[0], "spikes_std": spikes[1],
            "firing_rate": rate[0], "firing_rate_std": rate[1],
            "synops": synops[0], "synops_std": synops[1],
            "macs": macs[0],
            "neuron_updates": c.neuron_updates,
            "energy_j": e[0], "energy_j_std": e[1],
            "energy_by_category_j": {k: float(np.mean(v)) for k, v in by_cat.items()},
            "ann_macs": ann[source],
        })
        if c.shortcut_synops is not None:
            layers[-1]["shortcut_synops"] = float(np.mean(c.shortcut_synops))
        if c.bias_inputs:
            layers[-1]["bias_inputs"] = c.bias_inputs
    total_mean, total_std = _stat(total)
    ann_total = sum(ann.values())
    report: dict[str, Any] = {
        "hardware": profile.name,
        "timesteps": run.timesteps,
        "samples": len(run.predictions),
        "encoding": run.encoding,
        "layers": layers,
        "total_energy_j": total_mean,
        "total_energy_j_std": total_std,
        "ann_macs": ann_total,
        "ann_energy_j": ann_total * profile.e_mac,
        "profile": profile.to_dict(),
    }
    if run.input_spikes is not None:
        report["input_spikes"], report["input_spikes_std"] = _stat(run.input_spikes)
    bias_inputs = sum(c.bias_inputs for c in run.layers)
    if bias_inputs and not profile.bias_known:
        report["unpriced"] = {"bias_inputs": bias_inputs,
                              "reason": "the profile's energy per bias input is unknown; total_energy_j leaves them out"}
    if profile.limits is not None:
        deployment = map_to_cores(deployed_layers(student), profile.limits, weight_bits=weight_bits, direct_encoding=run.input_spikes is None)
        report.update(cores=deployment.cores, chips=deployment.chips, violations=deployment.violations,
                      mapping={"weight_bits": weight_bits, "layers": [vars(m) for m in deployment.layers]})
    return report


def energy_report(
    student: SpikingStudent,
    images: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    hw: str | os.PathLike = "loihi",
    out_dir: str | os.PathLike,
    seed: int = 0,
    batch_size: int = 64,
    weight_bits: int = 8,
    sanafe_samples: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Count, price and map the student on ``hw`` (a profile name, a ``.toml`` path or ``"all"``);
    write ``energy.json``, ``energy.md`` and plots into ``out_dir``; return the JSON content.

    ``images`` are ``[N, C, H, W]`` in [0, 1]; with ``labels`` the summary also gives the accuracy.
    Poisson input for sample ``i`` is drawn with seed ``seed + i``. ``sanafe_samples > 0`` adds
    SANA-FE's Loihi estimate of the first samples (run in a separate process) to the loihi report.
    """
    profiles = _resolve_profiles(hw)
    cfg = student.config
    T = cfg.timesteps  # another T: student.with_config(timesteps=T), the one rule (lasnn_deploy/inputs.py)
    if images.dim() != 4 or tuple(images.shape[1:]) != tuple(cfg.input_shape) or len(images) == 0:
        raise UserError(f"images must be [N, {', '.join(map(str, cfg.input_shape))}] with N >= 1, got {list(images.shape)}")
    if labels is not None and len(labels) != len(images):
        raise UserError(f"{len(labels)} labels for {len(images)} images: give one label per image")
    if sanafe_samples:
        from .sanafe_compare import check_feed_forward

        if "loihi" not in [p.name for p in profiles]:
            raise UserError("the SANA-FE comparison is against the loihi profile: use --hw loihi or --hw all")
        check_feed_forward(student)
    deployed_layers(student)  # raises on a pool that cannot be folded, before any work
    check_parameters(student)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder for energy.json, energy.md and the plots")

    run = run_and_count(student, images, timesteps=T, seed=seed, batch_size=batch_size, progress=progress)
    reports = {p.name: profile_report(run, student, p, weight_bits=weight_bits) for p in profiles}
    if labels is not None:
        accuracy = float((torch.as_tensor(run.predictions) == labels.cpu()).double().mean())
        for r in reports.values():
            r["accuracy"] = accuracy
    if sanafe_samples:
        from .sanafe_compare import compare_with_sanafe

        loihi = reports["loihi"]
        per_core = [m["neurons_per_core"] for m in loihi["mapping"]["layers"]]
        profile = next(p for p in profiles if p.name == "loihi")
        loihi["sanafe"] = compare_with_sanafe(student, images[:sanafe_samples], run, profile, per_core, timesteps=T, seed=seed)

    if len(reports) == 1:
        result = next(iter(reports.values()))
    else:
        result = {"hardware": list(reports), "timesteps": T, "samples": len(images), "reports": reports}
    with atomic_path(out / JSON_FILE) as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")
    write_text(out / MD_FILE, markdown_summary(list(reports.values())))
    from .plots import write_plots  # matplotlib costs seconds to import: only when plots are drawn

    write_plots(list(reports.values()), out)
    return result
