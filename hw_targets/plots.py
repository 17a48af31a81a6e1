"""PNG plots of an energy report (matplotlib, Agg backend): firing rates, energy by layer and
category, and SNN against ANN energy. Each file is written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..atomic import atomic_path  # noqa: E402
from .energy import CATEGORIES  # noqa: E402

PLOTS = ("firing_rate.png", "energy_by_layer.png", "snn_vs_ann.png")


def _save(fig: plt.Figure, path: Path) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)


def _firing_rates(report: dict[str, Any], path: Path) -> None:
    layers = [l for l in report["layers"] if l["spiking"]]
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(layers) + 2), 3.5))
    ax.bar([l["name"] for l in layers], [l["firing_rate"] for l in layers], yerr=[l["firing_rate_std"] for l in layers], capsize=4, color="tab:blue")
    ax.set_ylabel("firing rate (spikes / neuron / step)")
    ax.set_title(f"Firing rate per layer ({report['samples']} samples, T={report['timesteps']}, {report['encoding']} input)")
    _save(fig, path)


def _energy_by_layer(reports: list[dict[str, Any]], path: Path) -> None:
    fig, axes = plt.subplots(1, len(reports), figsize=(5 * len(reports), 3.8), squeeze=False)
    for ax, report in zip(axes[0], reports):
        names = [l["name"] for l in report["layers"]]
        bottom = [0.0] * len(names)
        biased = any("bias_inputs" in l["energy_by_category_j"] for l in report["layers"])
        for cat in (*CATEGORIES, "bias_inputs") if biased else CATEGORIES:  # a bias's own term, where priced
            values = [l["energy_by_category_j"].get(cat, 0.0) for l in report["layers"]]
            ax.bar(names, values, bottom=bottom, label=cat.replace("_", " "))
            bottom = [b + v for b, v in zip(bottom, values)]
        ax.set_ylim(0, 1.08 * max(bottom, default=0.0) or 1.0)  # a zero-height top bar would pin the limit to the stack
        ax.set_title(report["hardware"])
        ax.set_ylabel("energy per sample (J)")
        ax.tick_params(axis="x", rotation=45)
    axes[0][0].legend(fontsize="small")
    fig.suptitle("Energy per layer by event category")
    _save(fig, path)


def _snn_vs_ann(reports: list[dict[str, Any]], path: Path) -> None:
    names = [r["hardware"] for r in reports]
    x = range(len(names))
    fig, ax = plt.subplots(figsize=(max(4, 1.6 * len(names) + 2), 3.8))
    ax.bar([i - 0.2 for i in x], [r["total_energy_j"] for r in reports], 0.4, yerr=[r["total_energy_j_std"] for r in reports], capsize=4, label="SNN")
    ax.bar([i + 0.2 for i in x], [r["ann_energy_j"] for r in reports], 0.4, label="ANN (same network, dense MACs)")
    for i, r in enumerate(reports):
        if "energy_j" in r.get("sanafe", {}):
            ax.plot([i - 0.2], [r["sanafe"]["energy_j"]], "kD", label=f"SANA-FE Loihi model ({r['sanafe']['samples']} samples)")
    ax.set_xticks(list(x), names)
    ax.set_yscale("log")
    ax.set_ylabel("energy per sample (J)")
    ax.set_title("SNN against ANN energy")
    ax.legend(fontsize="small")
    _save(fig, path)


def write_plots(reports: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """Write the three plots of one or several per-profile reports; return their paths."""
    paths = [out_dir / name for name in PLOTS]
    _firing_rates(reports[0], paths[0])
    _energy_by_layer(reports, paths[1])
    _snn_vs_ann(reports, paths[2])
    return paths
