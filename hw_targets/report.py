"""The ``energy`` command's output: ``energy.json``, ``energy.md`` and PNG plots (docs/semantics.md, 'Files the commands write').

One profile gives the contract's form (``hardware``, ``timesteps``, ``samples``, ``layers``,
``total_energy_j``, ``ann_macs``, ``ann_energy_j``, ``profile`` and, for constrained hardware,
``cores``, ``chips``, ``violations``). Several profiles (``hw="all"``, every shipped one, or a
comma-separated list, ``parse_hw``) give them side by side::

    {"hardware": ["cmos45", "loihi", ...], "timesteps": T, "samples": N, "reports": {"loihi": <one profile's form>, ...}}

Counts are per sample: means over the samples evaluated, with ``*_std`` the population standard
deviation over those samples. The samples go through in batches; each profile keeps the exact sums
of its per-sample values (``Tally``), so memory does not grow with the number of samples and the
report does not depend on the batch size.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..atomic import atomic_path, write_text
from ..errors import UserError
from ..inputs import loaded, sample_count
from ..student import SpikingStudent, check_parameters, deployed_layers
from .baselines import baseline_entries
from .constraints import map_to_cores, reset_interval
from .counting import ann_macs
from .energy import CountedBatch, counted_batches, first_layer_current, price_layer
from .moments import Moments
from .placement import place
from .profile import Profile, list_profiles, load_profile
from .summary import markdown_summary
from .traffic import KEYS as TRAFFIC_KEYS
from .traffic import TrafficCounter

JSON_FILE, MD_FILE = "energy.json", "energy.md"
CATEGORY_TERMS = ("synops", "macs", "neuron_updates", "spikes", "network")  # synapse, host, soma (two), network


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
    if profile.limits is None:
        raise UserError(f"profile {profile.name}: a mesh needs the [limits] that place the network on its cores")
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


def _time_and_static(
    report: dict[str, Any], profile: Profile, counter: TrafficCounter | None, latency_mean: float | None
) -> None:
    """Latency per inference and per step, throughput and static energy (None where unknown, with why)."""
    unknown = []
    latency = None
    if counter is None or counter.latency is None or latency_mean is None:
        unknown.append("time: the profile has no mesh and per-event latencies")
    else:
        latency = _known(latency_mean)
        if latency is None:
            unknown.append("time: a latency figure of the profile is unknown")
    steps = counter.steps if counter is not None else None
    report.update(
        steps_per_inference=steps,
        latency_s=latency,
        time_per_step_s=latency / steps if latency is not None and steps is not None else None,
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


Key = tuple[Any, ...]  # ("total",), (layer, "spikes"), (layer, "energy", category), ...


def sample_values(
    counted: CountedBatch, profile: Profile, traffic: dict[str, Any] | None = None
) -> dict[Key, np.ndarray]:
    """Every per-sample value of one batch behind ``profile``'s report: each layer's counts, its energy
    (``price_layer``, by category and in all), with ``traffic`` (``TrafficCounter.count``) its
    messages, hops and updates, and the totals; the report gives their means and spreads (``Tally``)."""
    values: dict[Key, np.ndarray] = {}
    n = len(counted.batch.images)
    total = np.zeros(n)
    fixed = np.zeros(n)  # the energy that does not scale with spikes: host MACs and neuron accesses
    for j, c in enumerate(counted.layers):
        t = traffic["layers"][j] if traffic is not None else None
        by_cat = price_layer(c, profile, t)
        energy = sum(by_cat.values(), np.zeros(n))
        total = total + energy
        accesses = t["accesses"] * profile.e_neuron if t is not None else by_cat["neuron_updates"]
        fixed = fixed + by_cat["macs"] + accesses
        values.update(
            {
                (j, "spikes"): c.spikes,
                (j, "firing_rate"): c.firing_rate,
                (j, "synops"): c.synops,
                (j, "macs"): c.macs,
                (j, "energy_j"): energy,
            }
        )
        values.update({(j, "energy", k): v for k, v in by_cat.items()})
        if t is not None:
            values.update({(j, k): t[k] for k in TRAFFIC_KEYS})
        if c.shortcut_synops is not None:
            values[j, "shortcut_synops"] = c.shortcut_synops
    values["total",] = total
    values["fixed",] = fixed
    if counted.input_spikes is not None:
        values["input_spikes",] = counted.input_spikes
    if traffic is not None and "inference_s" in traffic:
        values["inference_s",] = traffic["inference_s"]
    return values


class Tally(defaultdict[Key, Moments]):
    """Exact running sums of ``sample_values`` over the batches seen (``moments.Moments`` per key)."""

    def __init__(self) -> None:
        super().__init__(Moments)

    def add(self, values: dict[Key, np.ndarray]) -> None:
        for key, value in values.items():
            self[key].add(value)

    def stat(self, *key: Any) -> tuple[float, float]:
        """Mean and population standard deviation of ``key``'s per-sample values."""
        return self[key].mean, self[key].std


def profile_report(
    tally: Tally,
    student: SpikingStudent,
    profile: Profile,
    *,
    weight_bits: int = 8,
    traffic: TrafficCounter | None = None,
) -> dict[str, Any]:
    """The ``energy.json`` content of one profile, from the means and spreads of its counted run's
    per-sample values (``tally``), plus (with ``traffic``) messages, hops, time and static energy,
    and both ANN baselines with break-even rates."""
    ann = ann_macs(student.config)
    T = student.config.timesteps
    deployed = deployed_layers(student)
    layers: list[dict[str, Any]] = []
    for j, d in enumerate(deployed):
        neurons = int(np.prod(d.out_shape))
        spiking = d.lif is not None
        spikes, firing, synops, energy = (tally.stat(j, k) for k in ("spikes", "firing_rate", "synops", "energy_j"))
        categories = [key[2] for key in tally if key[:2] == (j, "energy")]
        layers.append(
            {
                "name": d.name,
                "kind": d.kind,
                "spiking": spiking,
                "neurons": neurons,
                "spikes": spikes[0],
                "spikes_std": spikes[1],
                "firing_rate": firing[0],
                "firing_rate_std": firing[1],
                "synops": synops[0],
                "synops_std": synops[1],
                "macs": tally[j, "macs"].mean,
                "neuron_updates": neurons * T,
                "energy_j": energy[0],
                "energy_j_std": energy[1],
                "energy_by_category_j": {k: tally[j, "energy", k].mean for k in categories},
                "ann_macs": ann[d.source],
            }
        )
        if traffic is not None:
            layers[-1].update({k: tally[j, k].mean for k in TRAFFIC_KEYS})
            layers[-1]["accesses"] = traffic.accesses(j)
        if d.shortcut is not None:
            layers[-1]["shortcut_synops"] = tally[j, "shortcut_synops"].mean
        if d.bias is not None:
            layers[-1]["bias_inputs"] = neurons * T
    total_mean, total_std = tally.stat("total")
    ann_total = sum(ann.values())
    spiking_layers = [(j, layer) for j, layer in enumerate(layers) if layer["spiking"]]
    rate = float(
        sum(tally[j, "spikes"].mean for j, _ in spiking_layers)
        / max(1, sum(l["neurons"] * T for _, l in spiking_layers))
    )
    dynamic = _known(total_mean)
    fixed_mean = tally["fixed",].mean
    samples = tally["total",].count
    report: dict[str, Any] = {
        "hardware": profile.name,
        "timesteps": T,
        "samples": samples,
        "encoding": student.config.encoding,
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
    if ("input_spikes",) in tally:
        report["input_spikes"], report["input_spikes_std"] = tally.stat("input_spikes")
    bias_inputs = sum(l.get("bias_inputs", 0) for l in layers)
    if bias_inputs and not profile.bias_known:
        report["unpriced"] = {
            "bias_inputs": bias_inputs,
            "reason": "the profile's energy per bias input is unknown; total_energy_j leaves them out",
        }
    if profile.limits is not None:
        deployment = map_to_cores(
            deployed, profile.limits, weight_bits=weight_bits, direct_encoding=student.config.encoding == "direct"
        )
        report.update(
            cores=deployment.cores,
            chips=deployment.chips,
            violations=deployment.violations,
            mapping={"weight_bits": weight_bits, "layers": [vars(m) for m in deployment.layers]},
        )
    if profile.reset_power_of_two is not None:
        report["reset_interval"] = reset_interval(T, profile.reset_power_of_two)
    if traffic is not None:
        report["placement"] = traffic.placement.to_dict()
        report["network"] = {
            k: float(sum(l[k] for l in layers)) for k in ("messages", "hops_ew", "hops_ns", "interchip")
        }
        report["chips"] = traffic.placement.chips
    latency = tally["inference_s",].mean if ("inference_s",) in tally else None
    _time_and_static(report, profile, traffic, latency)
    return report


@dataclass
class CountedRun:
    """One pass of a student over a data set: one report per profile, the traffic counters, and the accuracy."""

    reports: dict[str, dict[str, Any]]
    counters: dict[str, TrafficCounter]
    samples: int
    accuracy: float | None  # None: the data had no labels


def count_and_report(
    student: SpikingStudent,
    images: torch.Tensor | Dataset,
    profiles: list[Profile],
    labels: torch.Tensor | None = None,
    *,
    seed: int,
    batch_size: int,
    progress: bool,
    weight_bits: int,
    also_traffic: Sequence[Profile] = (),
) -> CountedRun:
    """Run ``student`` once over ``images`` (a tensor, or a labelled ``Dataset`` loaded batch by batch),
    counting its events and, for every mesh profile, its messages and hops, batch by batch: memory
    holds one batch and each profile's exact running sums (``Tally``). ``also_traffic``: profiles
    whose traffic counter (placement) is returned too, unpriced (SANA-FE's comparison counts its own samples)."""
    T = student.config.timesteps
    meshes = {p.name: p for p in [*profiles, *also_traffic] if p.mesh is not None}
    counters = {name: traffic_counter(student, p, timesteps=T, weight_bits=weight_bits) for name, p in meshes.items()}
    tallies = {p.name: Tally() for p in profiles}
    samples, correct, labelled = 0, 0, False
    for counted in counted_batches(
        student, images, labels, timesteps=T, seed=seed, batch_size=batch_size, progress=progress
    ):
        batch = counted.batch
        traffic = {p.name: counters[p.name].count(counted.trace, batch.images) for p in profiles if p.name in counters}
        for p in profiles:
            tallies[p.name].add(sample_values(counted, p, traffic.get(p.name)))
        samples += len(batch.images)
        if batch.labels is not None:
            labelled = True
            correct += int((counted.trace.logits.argmax(1).cpu() == batch.labels.cpu()).sum())
    reports = {
        p.name: profile_report(tallies[p.name], student, p, weight_bits=weight_bits, traffic=counters.get(p.name))
        for p in profiles
    }
    return CountedRun(reports, counters, samples, correct / samples if labelled else None)


def _first(images: torch.Tensor | Dataset, count: int) -> torch.Tensor:
    """The first ``count`` images of a tensor or a data set."""
    return next(loaded(images, None, count))[0]


def energy_report(
    student: SpikingStudent,
    images: torch.Tensor | Dataset,
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

    ``images`` are a tensor ``[N, C, H, W]`` in [0, 1] (with ``labels``, optional) or a labelled
    ``Dataset``, loaded batch by batch (the whole test split fits in one batch's memory); with labels
    the summary also gives the accuracy. Poisson input for sample ``i`` is drawn with seed
    ``seed + i``. ``sanafe_samples > 0`` adds SANA-FE's Loihi estimate of the first samples (run in a
    separate process) to the loihi report.
    """
    profiles = parse_hw(hw)
    cfg = student.config
    T = cfg.timesteps  # another T: student.with_config(timesteps=T), the one rule (lasnn_deploy/inputs.py)
    if isinstance(images, torch.Tensor):
        if images.dim() != 4 or tuple(images.shape[1:]) != tuple(cfg.input_shape) or len(images) == 0:
            raise UserError(
                f"images must be [N, {', '.join(map(str, cfg.input_shape))}] with N >= 1, got {list(images.shape)}"
            )
        if labels is not None and len(labels) != len(images):
            raise UserError(f"{len(labels)} labels for {len(images)} images: give one label per image")
    elif sample_count(images) == 0:
        raise UserError("the data set has no samples to count")
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
    run = count_and_report(
        student,
        images,
        profiles,
        labels,
        seed=seed,
        batch_size=batch_size,
        progress=progress,
        weight_bits=weight_bits,
        also_traffic=extra,
    )
    reports = run.reports
    if run.accuracy is not None:
        for r in reports.values():
            r["accuracy"] = run.accuracy
    if sanafe_samples:
        from .sanafe_compare import compare_with_sanafe

        target = reports.get("loihi_calibrated") or reports["loihi"]
        target["sanafe"] = compare_with_sanafe(
            student,
            _first(images, sanafe_samples),
            load_profile("loihi_calibrated"),
            run.counters["loihi_calibrated"],
            timesteps=T,
            seed=seed,
        )

    from .neurobench import neurobench_markdown, neurobench_section  # imports NeuroBench: only when a report is made

    neurobench = neurobench_section(student, images, seed=seed, batch_size=batch_size)
    if len(reports) == 1:
        result = next(iter(reports.values()))
    else:
        result = {"hardware": list(reports), "timesteps": T, "samples": run.samples, "reports": reports}
    result["neurobench"] = neurobench
    with atomic_path(out / JSON_FILE) as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")
    write_text(out / MD_FILE, markdown_summary(list(reports.values())) + neurobench_markdown(neurobench))
    from .plots import write_plots  # matplotlib costs seconds to import: only when plots are drawn

    write_plots(list(reports.values()), out)
    return result
