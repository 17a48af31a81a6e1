"""Markdown summary (``energy.md``) of one or several per-profile energy reports."""

from __future__ import annotations

from typing import Any


def _j(value: float) -> str:
    """Joules in an engineering unit that a reader takes in at a glance."""
    for unit, scale in (("J", 1.0), ("mJ", 1e-3), ("uJ", 1e-6), ("nJ", 1e-9), ("pJ", 1e-12), ("fJ", 1e-15)):
        if abs(value) >= scale:
            return f"{value / scale:.4g} {unit}"
    return f"{value:.3g} J"


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
    lines += ["", "## Events per layer", "", "| layer | neurons | spikes | firing rate | synops | MACs | neuron updates | ANN MACs |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for l in first["layers"]:
        lines.append(
            f"| {l['name']} | {l['neurons']:,} | {_n(l['spikes'])} +- {l['spikes_std']:.1f} | {l['firing_rate']:.4f} | "
            f"{_n(l['synops'])} +- {l['synops_std']:.1f} | {_n(l['macs'])} | {l['neuron_updates']:,} | {l['ann_macs']:,} |"
        )
    lines += ["", "## Energy per sample", "", "| hardware | SNN energy | ANN energy | ANN / SNN | cores | chips |", "|---|---:|---:|---:|---:|---:|"]
    for r in reports:
        ratio = r["ann_energy_j"] / r["total_energy_j"] if r["total_energy_j"] else float("inf")
        lines.append(
            f"| {r['hardware']} | {_j(r['total_energy_j'])} +- {_j(r['total_energy_j_std'])} | {_j(r['ann_energy_j'])} | "
            f"{ratio:.3g} | {r.get('cores', '-')} | {r.get('chips', '-')} |"
        )
    for r in reports:
        lines += ["", f"### {r['hardware']}: {r['profile']['description']}", "", "| layer | synops | MACs | neuron updates | spikes | total |", "|---|---:|---:|---:|---:|---:|"]
        for l in r["layers"]:
            c = l["energy_by_category_j"]
            lines.append(f"| {l['name']} | {_j(c['synops'])} | {_j(c['macs'])} | {_j(c['neuron_updates'])} | {_j(c['spikes'])} | {_j(l['energy_j'])} |")
        biased = sum(l.get("bias_inputs", 0) for l in r["layers"])
        if biased:
            priced = ("unknown on this profile, left out of the total" if "unpriced" in r
                      else f"{_j(r['profile']['energy_j']['bias']['joules'])} each, in the total")
            lines += ["", f"Bias inputs (a neuron's constant current at one step, no synaptic event): "
                          f"{biased:,} per sample, {priced}."]
        lines += ["", "Figures used:", ""]
        lines += [f"- {k}: {f['joules'] if isinstance(f['joules'], str) else _j(f['joules'])} ({f['source']})"
                  for k, f in r["profile"]["energy_j"].items()]
        if "cores" in r:
            per_layer = ", ".join(f"{m['name']} {m['cores']} ({m['neurons_per_core']}/core, {m['limited_by']})" for m in r["mapping"]["layers"])
            lines += ["", f"Deployment with {r['mapping']['weight_bits']}-bit weights: {r['cores']} cores on {r['chips']} chip(s); {per_layer}."]
            lines += ["Violations: " + ("none." if not r["violations"] else "; ".join(r["violations"]))]
        if "sanafe" in r:
            s = r["sanafe"]
            if "energy_j" in s:
                lines += ["", f"SANA-FE (Loihi model, {s['samples']} samples): {_j(s['energy_j'])} per sample against {_j(s['analytical_energy_j'])} here "
                          f"(relative difference {s['relative_difference']:+.1%}); spike agreement {s['spike_agreement']:.6f}."]
            else:
                lines += ["", f"SANA-FE: {s.get('skipped') or s.get('error')}"]
    return "\n".join(lines) + "\n"
