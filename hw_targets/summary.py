"""Markdown summary (``energy.md``) of one or several per-profile energy reports."""

from __future__ import annotations

from typing import Any


def _j(value: float | None, base: str = "J") -> str:
    """Joules (or seconds) in an engineering unit that a reader takes in at a glance; None is unknown."""
    if value is None:
        return "unknown"
    for unit, scale in (("", 1.0), ("m", 1e-3), ("u", 1e-6), ("n", 1e-9), ("p", 1e-12), ("f", 1e-15)):
        if abs(value) >= scale:
            return f"{value / scale:.4g} {unit}{base}"
    return f"{value:.3g} {base}"


def _s(value: float | None) -> str:
    return _j(value, "s")


def _rate(value: float | None) -> str:
    if value is None:
        return "unknown"
    return "never" if value == 0 else ("always" if value == float("inf") else f"{value:.4f}")


def _n(value: float) -> str:
    return f"{value:,.1f}" if value != int(value) else f"{int(value):,}"


def markdown_summary(reports: list[dict[str, Any]]) -> str:
    """Counts once (they do not depend on the profile), then energy and deployability per profile."""
    first = reports[0]
    lines = [
        "# Energy report",
        "",
        f"- samples: {first['samples']}, time steps: {first['timesteps']}, encoding: {first['encoding']}"
        + (f", accuracy: {first['accuracy']:.4f}" if "accuracy" in first else ""),
        "- counts are per sample (mean, with the standard deviation over samples after +-), on the deployed graph (pools folded)",
    ]
    if "input_spikes" in first:
        lines.append(f"- input spikes per sample: {_n(first['input_spikes'])} +- {first['input_spikes_std']:.1f}")
    lines += [
        "",
        "## Events per layer",
        "",
        "| layer | neurons | spikes | firing rate | synops | MACs | neuron updates | ANN MACs |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for l in first["layers"]:
        lines.append(
            f"| {l['name']} | {l['neurons']:,} | {_n(l['spikes'])} +- {l['spikes_std']:.1f} | {l['firing_rate']:.4f} | "
            f"{_n(l['synops'])} +- {l['synops_std']:.1f} | {_n(l['macs'])} | {l['neuron_updates']:,} | {l['ann_macs']:,} |"
        )
    lines += [
        "",
        "## Energy, time and ANN baselines per sample",
        "",
        "Dynamic energy is the events' (and the host's first-layer MACs'); static energy is the chips' static "
        "power x the time per inference. ANN: the same network, dense, at 45 nm (arithmetic only). Break-even: "
        f"the mean firing rate (measured: {first['firing_rate']:.4f}) below which the SNN's dynamic energy is "
        "below the ANN's, all spike-driven counts scaled with it at this T.",
        "",
        "| hardware | dynamic | static | dynamic + static | latency / inference | time / step | ANN fp32 "
        "| ANN int8 | break-even rate vs fp32 / int8 | cores | chips |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in reports:
        b = r["ann_baselines"]
        spread = r["total_energy_j_std"]
        dyn = _j(r["dynamic_energy_j"]) + (f" +- {_j(spread)}" if spread is not None else "")
        lines.append(
            f"| {r['hardware']} | {dyn} | {_j(r['static_energy_j'])} | {_j(r['energy_with_static_j'])} | "
            f"{_s(r['latency_s'])} | {_s(r['time_per_step_s'])} | {_j(b['fp32']['energy_j'])} | "
            f"{_j(b['int8']['energy_j'])} | {_rate(b['fp32']['break_even_rate'])} / "
            f"{_rate(b['int8']['break_even_rate'])} | {r.get('cores', '-')} | {r.get('chips', '-')} |"
        )
    for r in reports:
        lines += [
            "",
            f"### {r['hardware']}: {r['profile']['description']}",
            "",
            "| layer | synops | MACs | neurons | spikes | network | total |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for l in r["layers"]:
            c = {k: v if v == v else None for k, v in l["energy_by_category_j"].items()}  # NaN: unknown figure
            e = l["energy_j"] if l["energy_j"] == l["energy_j"] else None
            lines.append(
                f"| {l['name']} | {_j(c['synops'])} | {_j(c['macs'])} | {_j(c['neuron_updates'])} | "
                f"{_j(c['spikes'])} | {_j(c['network'])} | {_j(e)} |"
            )
        if r["unknown"]:
            lines += ["", "Unknown (not guessed): " + "; ".join(r["unknown"]) + "."]
        if "placement" in r:
            p, n = r["placement"], r["network"]
            lines += [
                "",
                f"Placement: {p['cores']} cores on {p['tiles']} tiles, {p['chips']} chip(s) ({p['mesh']}); "
                f"per sample {n['messages']:,.0f} spike messages, {n['hops_ew']:,.0f} east-west and "
                f"{n['hops_ns']:,.0f} north-south hops, {n['interchip']:,.0f} messages between chips; "
                f"{r['steps_per_inference']} steps per inference (T plus the pipeline's depth), throughput "
                f"{r['throughput_per_s'] or 0:,.1f} inferences/s one sample at a time.",
            ]
        biased = sum(l.get("bias_inputs", 0) for l in r["layers"])
        if biased:
            priced = (
                "unknown on this profile, left out of the total"
                if "unpriced" in r
                else f"{_j(r['profile']['energy_j']['bias']['joules'])} each, in the total"
            )
            lines += [
                "",
                f"Bias inputs (a neuron's constant current at one step, no synaptic event): "
                f"{biased:,} per sample, {priced}.",
            ]
        lines += ["", "Figures used:", ""]
        lines += [
            f"- {k}: {_j(f['joules']) if f['joules'] != 'unknown' else 'unknown'} ({f['source']})"
            for k, f in r["profile"]["energy_j"].items()
        ]
        lines += [
            f"- latency {k}: {_s(f['seconds']) if f['seconds'] != 'unknown' else 'unknown'} ({f['source']})"
            for k, f in r["profile"].get("latency_s", {}).items()
        ]
        if "static_power_per_chip_w" in r["profile"]:
            f = r["profile"]["static_power_per_chip_w"]
            watts = _j(f["watts"], "W") if f["watts"] != "unknown" else "unknown"
            lines.append(f"- static power per chip: {watts} ({f['source']})")
        lines += [f"- ANN {k} MAC: {_j(b['mac_j'])} ({b['source']})" for k, b in r["ann_baselines"].items()]
        if "cores" in r:
            per_layer = ", ".join(
                f"{m['name']} {m['cores']} ({m['neurons_per_core']}/core, {m['limited_by']})"
                for m in r["mapping"]["layers"]
            )
            lines += [
                "",
                f"Deployment with {r['mapping']['weight_bits']}-bit weights: {r['cores']} cores on {r['chips']} chip(s); {per_layer}.",
            ]
            lines += ["Violations: " + ("none." if not r["violations"] else "; ".join(r["violations"]))]
        if "reset_interval" in r:
            ri = r["reset_interval"]
            lines += ["", ("Deployable" if ri["power_of_two"] else "Not deployable") + f": {ri['note']}."]
        if "sanafe" in r:
            s = r["sanafe"]
            if "energy_j" in s:
                terms = ", ".join(
                    f"{k} {_j(t['sanafe_j'])} vs {_j(t['ours_j'])} ({t['relative_difference']:+.1%})"
                    for k, t in s["terms"].items()
                )
                lines += [
                    "",
                    f"SANA-FE (Loihi model, {s['samples']} samples, same placement): {_j(s['energy_j'])} "
                    f"per sample against {_j(s['analytical_energy_j'])} on {s['profile']} without the host's "
                    "MACs (relative difference "
                    f"{s['relative_difference']:+.1%}); {terms}; spike agreement {s['spike_agreement']:.6f}.",
                ]
                if "time_per_step_s" in s:
                    t = s["time_per_step_s"]
                    lines.append(
                        f"Time per step: SANA-FE {_s(t['sanafe'])} against {_s(t['ours'])} "
                        f"({t['relative_difference']:+.1%})."
                    )
            else:
                lines += ["", f"SANA-FE: {s.get('skipped') or s.get('error')}"]
    return "\n".join(lines) + "\n"
