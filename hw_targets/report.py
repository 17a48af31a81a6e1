"""The ``energy`` command's output: ``energy.json``, ``energy.md`` and PNG plots (docs/semantics.md, 'Files the commands write').

One profile gives the contract's form (``hardware``, ``timesteps``, ``samples``, ``layers``,
``total_energy_j``, ``ann_macs``, ``ann_energy_j``, ``profile`` and, for constrained hardware,
``cores``, ``chips``, ``violations``). Several profiles (``hw="all"``, every shipped one, or a
comma-separated list, ``parse_hw``) give them side by side::

    {"hardware": ["cmos45", "loihi", ...], "timesteps": T, "samples": N, "reports": {"loihi": <one profile's form>, ...}}

Counts are per sample: means over the samples evaluated, with ``*_std`` the population standard
deviation over those samples.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import atomic_path, write_text
from ..errors import UserError
from ..student import SpikingStudent, check_parameters, deployed_layers
from .baselines import baseline_entries
from .constraints import map_to_cores, reset_interval
from .counting import ann_macs
from .energy import StudentRun, first_layer_current, price_layer, run_and_count
from .placement import place
from .profile import Profile, list_profiles, load_profile
from .summary import markdown_summary
from .traffic import TrafficCounter

JSON_FILE, MD_FILE = "energy.json", "energy.md"
CATEGORY_TERMS = ("synops", "macs", "neuron_updates", "spikes", "network")  # synapse, host, soma (two), network


def _stat(values: np.ndarray) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values))


HW = str | os.PathLike | Sequence[str | os.PathLike | Profile]


def parse_hw(hw: HW) -> list[Profile]:
    """The profiles ``hw`` names, in its order: the one ``--hw`` grammar of ``energy`` and ``tradeoff``.

    ``"all"`` (every shipped profile, alone), or shipped profile names and ``.toml`` paths separated
    by commas (``"loihi_calibrated,cmos45"``), or a list of them (or of loaded profiles). An empty
    item, ``all`` beside others, an unknown name or a profile named twice is refused in one line.
    """
    if isinstance(hw, (str, os.PathLike)):
        text = str(hw)
        items: list[str | Profile] = [item.strip() for item in text.split(",")]
    else:
        items = [h if isinstance(h, Profile) else str(h).strip() for h in hw]
        text = ",".join(h.name if isinstance(h, Profile) else h for h in items)
    if items == ["all"]:
        return [load_profile(name) for name in list_profiles()]
    if not items or "" in items:
        raise UserError(f"--hw {text!r}: an empty profile name; separate names by single commas, e.g. loihi,cmos45")
    if "all" in items:
        raise UserError(f"--hw {text!r}: 'all' names every profile already; give it alone or list the profiles")
    profiles = [h if isinstance(h, Profile) else load_profile(h) for h in items]
    names = [p.name for p in profiles]
    twice = next((n for n in names if names.count(n) > 1), None)
    if twice is not None:
        raise UserError(f"--hw {text!r}: profile {twice!r} is named twice; give each profile once")
    return profiles


def traffic_counter(
    student: SpikingStudent, profile: Profile, *, timesteps: int, weight_bits: int = 8
) -> TrafficCounter:
    """A counter of messages, hops and time on ``profile``'s mesh, the network placed with
    ``map_to_cores``' neurons per core (the Poisson input's generators first)."""
    layers = deployed_layers(student)
    direct = student.config.encoding == "direct"
    deployment = map_to_cores(layers, profile.limits, weight_bits=weight_bits, direct_encoding=direct)
    placement = place(
        [m.name for m in deployment.layers],
        [m.neurons for m in deployment.layers],
        [m.neurons_per_core for m in deployment.layers],
        profile,
        0 if direct else int(np.prod(student.config.input_shape)),
    )
    return TrafficCounter(
        layers,
        placement,
        timesteps,
        direct,
        student.config.reset == "hard",
        profile if profile.latency is not None else None,
        partial(first_layer_current, student) if direct else None,
    )


def _known(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def _time_and_static(report: dict[str, Any], profile: Profile, counter: TrafficCounter | None) -> None:
    """Latency per inference and per step, throughput and static energy (None where unknown, with why)."""
    unknown = []
    latency = None
    if counter is None or counter.latency is None:
        unknown.append("time: the profile has no mesh and per-event latencies")
    else:
        result = counter.result()
        latency = _known(float(np.mean(result["inference_s"])))
        if latency is None:
            unknown.append("time: a latency figure of the profile is unknown")
    steps = counter.steps if counter is not None else None
    report.update(
        steps_per_inference=steps,
        latency_s=latency,
        time_per_step_s=latency / steps if latency is not None else None,
        throughput_per_s=1.0 / latency if latency else None,
    )
    power = profile.static_power
    chips = report.get("placement", {}).get("chips", report.get("chips"))
    if power is None or not power.known:
        why = "no static power in the profile" if power is None else "static power unknown"
        unknown.append(f"static energy: {why}")
        static = None
    elif latency is None or chips is None:
        unknown.append("static energy: needs the time per inference")
        static = None
    else:
        static = power.value * chips * latency
    report["static_power_w"] = power.value * chips if power is not None and power.known and chips else None
    report["static_energy_j"] = static
    dynamic = report["dynamic_energy_j"]
    report["energy_with_static_j"] = dynamic + static if dynamic is not None and static is not None else None
    report["unknown"] = [f"energy: {k} unknown" for k in profile.unknown if k.startswith("energy.")] + unknown


def profile_report(
    run: StudentRun,
    student: SpikingStudent,
    profile: Profile,
    *,
    weight_bits: int = 8,
    traffic: TrafficCounter | None = None,
) -> dict[str, Any]:
    """The ``energy.json`` content of one profile, from the counted run, plus (with
    ``traffic``) messages, hops, time and static energy, and both ANN baselines with break-even rates."""
    ann = ann_macs(student.config)
    counts = traffic.result() if traffic is not None else None
    layers, total = [], np.zeros(len(run.predictions))
    fixed = np.zeros(len(run.predictions))
    for j, (c, source) in enumerate(zip(run.layers, (d.source for d in deployed_layers(student)), strict=True)):
        t = counts["layers"][j] if counts is not None else None
        by_cat = price_layer(c, profile, t)
        energy = sum(by_cat.values())
        total = total + energy
        accesses = t["accesses"] * profile.e_neuron if t is not None else by_cat["neuron_updates"]
        fixed = fixed + by_cat["macs"] + accesses
        spikes, rate, synops, macs, e = (
            _stat(c.spikes),
            _stat(c.firing_rate),
            _stat(c.synops),
            _stat(c.macs),
            _stat(energy),
        )
        layers.append(
            {
                "name": c.name,
                "kind": c.kind,
                "spiking": c.spiking,
                "neurons": c.neurons,
                "spikes": spikes[0],
                "spikes_std": spikes[1],
                "firing_rate": rate[0],
                "firing_rate_std": rate[1],
                "synops": synops[0],
                "synops_std": synops[1],
                "macs": macs[0],
                "neuron_updates": c.neuron_updates,
                "energy_j": e[0],
                "energy_j_std": e[1],
                "energy_by_category_j": {k: float(np.mean(v)) for k, v in by_cat.items()},
                "ann_macs": ann[source],
            }
        )
        if t is not None:
            layers[-1].update(
                {k: float(np.mean(t[k])) for k in ("messages", "hops_ew", "hops_ns", "interchip", "updates")}
            )
            layers[-1]["accesses"] = t["accesses"]
        if c.shortcut_synops is not None:
            layers[-1]["shortcut_synops"] = float(np.mean(c.shortcut_synops))
        if c.bias_inputs:
            layers[-1]["bias_inputs"] = c.bias_inputs
    total_mean, total_std = _stat(total)
    ann_total = sum(ann.values())
    spiking = [c for c in run.layers if c.spiking]
    rate = float(sum(np.mean(c.spikes) for c in spiking) / max(1, sum(c.neurons * c.timesteps for c in spiking)))
    dynamic = _known(total_mean)
    fixed_mean = float(np.mean(fixed))
    report: dict[str, Any] = {
        "hardware": profile.name,
        "timesteps": run.timesteps,
        "samples": len(run.predictions),
        "encoding": run.encoding,
        "layers": layers,
        "total_energy_j": dynamic,
        "total_energy_j_std": _known(total_std),
        "dynamic_energy_j": dynamic,
        "dynamic_energy_by_term_j": {
            k: _known(sum(l["energy_by_category_j"][k] for l in layers)) for k in CATEGORY_TERMS
        },
        "firing_rate": rate,
        "ann_macs": ann_total,
        "ann_energy_j": ann_total * profile.e_mac,
        "ann_baselines": baseline_entries(
            ann_total, rate, fixed_mean, (total_mean - fixed_mean) if dynamic is not None else None
        ),
        "profile": profile.to_dict(),
    }
    if run.input_spikes is not None:
        report["input_spikes"], report["input_spikes_std"] = _stat(run.input_spikes)
    bias_inputs = sum(c.bias_inputs for c in run.layers)
    if bias_inputs and not profile.bias_known:
        report["unpriced"] = {
            "bias_inputs": bias_inputs,
            "reason": "the profile's energy per bias input is unknown; total_energy_j leaves them out",
        }
    if profile.limits is not None:
        deployment = map_to_cores(
            deployed_layers(student), profile.limits, weight_bits=weight_bits, direct_encoding=run.input_spikes is None
        )
        report.update(
            cores=deployment.cores,
            chips=deployment.chips,
            violations=deployment.violations,
            mapping={"weight_bits": weight_bits, "layers": [vars(m) for m in deployment.layers]},
        )
    if profile.reset_power_of_two is not None:
        report["reset_interval"] = reset_interval(student.config.timesteps, profile.reset_power_of_two)
    if traffic is not None:
        report["placement"] = traffic.placement.to_dict()
        report["network"] = {
            k: float(sum(l[k] for l in layers)) for k in ("messages", "hops_ew", "hops_ns", "interchip")
        }
        report["chips"] = traffic.placement.chips
    _time_and_static(report, profile, traffic)
    return report


def count_and_report(
    student: SpikingStudent,
    images: torch.Tensor,
    profiles: list[Profile],
    *,
    seed: int,
    batch_size: int,
    progress: bool,
    weight_bits: int,
    also_traffic: Sequence[Profile] = (),
) -> tuple[StudentRun, dict[str, dict[str, Any]], dict[str, TrafficCounter]]:
    """Run ``student`` once over ``images``, counting its events and, for every mesh profile (and each of
    ``also_traffic``), its messages and hops; return the run, one report per profile and the traffic counters."""
    T = student.config.timesteps
    meshes = {p.name: p for p in [*profiles, *also_traffic] if p.mesh is not None}
    counters = {name: traffic_counter(student, p, timesteps=T, weight_bits=weight_bits) for name, p in meshes.items()}
    run = run_and_count(
        student,
        images,
        timesteps=T,
        seed=seed,
        batch_size=batch_size,
        progress=progress,
        observers=[c.add for c in counters.values()],
    )
    reports = {
        p.name: profile_report(run, student, p, weight_bits=weight_bits, traffic=counters.get(p.name)) for p in profiles
    }
    return run, reports, counters


def energy_report(
    student: SpikingStudent,
    images: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    hw: HW = "loihi",
    out_dir: str | os.PathLike,
    seed: int = 0,
    batch_size: int = 64,
    weight_bits: int = 8,
    sanafe_samples: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Count, price and map the student on ``hw`` (``parse_hw``: ``"all"``, or profile names and
    ``.toml`` paths, comma-separated); write ``energy.json``, ``energy.md`` and plots into
    ``out_dir``; return the JSON content.

    ``images`` are ``[N, C, H, W]`` in [0, 1]; with ``labels`` the summary also gives the accuracy.
    Poisson input for sample ``i`` is drawn with seed ``seed + i``. ``sanafe_samples > 0`` adds
    SANA-FE's Loihi estimate of the first samples (run in a separate process) to the loihi report.
    """
    profiles = parse_hw(hw)
    cfg = student.config
    T = cfg.timesteps  # another T: student.with_config(timesteps=T), the one rule (lasnn_deploy/inputs.py)
    if images.dim() != 4 or tuple(images.shape[1:]) != tuple(cfg.input_shape) or len(images) == 0:
        raise UserError(
            f"images must be [N, {', '.join(map(str, cfg.input_shape))}] with N >= 1, got {list(images.shape)}"
        )
    if labels is not None and len(labels) != len(images):
        raise UserError(f"{len(labels)} labels for {len(images)} images: give one label per image")
    if sanafe_samples:
        from .sanafe_compare import check_feed_forward

        if not {"loihi", "loihi_calibrated"} & {p.name for p in profiles}:
            raise UserError(
                "the SANA-FE comparison is against a Loihi profile: use --hw loihi_calibrated, --hw loihi or --hw all"
            )
        check_feed_forward(student)
    deployed_layers(student)  # raises on a pool that cannot be folded, before any work
    check_parameters(student)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder for energy.json, energy.md and the plots")

    # SANA-FE is compared with the calibrated profile's own traffic, priced or not.
    extra = [load_profile("loihi_calibrated")] if sanafe_samples else []
    run, reports, counters = count_and_report(
        student,
        images,
        profiles,
        seed=seed,
        batch_size=batch_size,
        progress=progress,
        weight_bits=weight_bits,
        also_traffic=extra,
    )
    if labels is not None:
        accuracy = float((torch.as_tensor(run.predictions) == labels.cpu()).double().mean())
        for r in reports.values():
            r["accuracy"] = accuracy
    if sanafe_samples:
        from .sanafe_compare import compare_with_sanafe

        target = reports.get("loihi_calibrated") or reports["loihi"]
        target["sanafe"] = compare_with_sanafe(
            student,
            images[:sanafe_samples],
            run,
            load_profile("loihi_calibrated"),
            counters["loihi_calibrated"],
            timesteps=T,
            seed=seed,
        )

    from .neurobench import neurobench_markdown, neurobench_section  # imports NeuroBench: only when a report is made

    neurobench = neurobench_section(student, images, seed=seed, batch_size=batch_size)
    if len(reports) == 1:
        result = next(iter(reports.values()))
    else:
        result = {"hardware": list(reports), "timesteps": T, "samples": len(images), "reports": reports}
    result["neurobench"] = neurobench
    with atomic_path(out / JSON_FILE) as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")
    write_text(out / MD_FILE, markdown_summary(list(reports.values())) + neurobench_markdown(neurobench))
    from .plots import write_plots  # matplotlib costs seconds to import: only when plots are drawn

    write_plots(list(reports.values()), out)
    return result
