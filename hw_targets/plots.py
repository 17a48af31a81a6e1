"""PNG plots of an energy report (matplotlib, Agg backend): firing rates, energy by layer and
category, and SNN against ANN energy. Each file is written atomically."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.colors as mcolors  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

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
    ax.bar(
        [l["name"] for l in layers],
        [l["firing_rate"] for l in layers],
        yerr=[l["firing_rate_std"] for l in layers],
        capsize=4,
        color="tab:blue",
    )
    ax.set_ylabel("firing rate (spikes / neuron / step)")
    ax.set_title(
        f"Firing rate per layer ({report['samples']} samples, T={report['timesteps']}, {report['encoding']} input)"
    )
    _save(fig, path)


def _energy_by_layer(reports: list[dict[str, Any]], path: Path) -> None:
    reports = [r for r in reports if r["dynamic_energy_j"] is not None] or reports[:1]  # unknown figures: no bars
    fig, axes = plt.subplots(1, len(reports), figsize=(5 * len(reports), 3.8), squeeze=False)
    for ax, report in zip(axes[0], reports, strict=True):
        names = [l["name"] for l in report["layers"]]
        bottom = [0.0] * len(names)
        biased = any("bias_inputs" in l["energy_by_category_j"] for l in report["layers"])
        for cat in (*CATEGORIES, "bias_inputs") if biased else CATEGORIES:  # a bias's own term, where priced
            values = [np.nan_to_num(l["energy_by_category_j"].get(cat, 0.0)) for l in report["layers"]]
            ax.bar(names, values, bottom=bottom, label=cat.replace("_", " "))
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        ax.set_ylim(0, 1.08 * max(bottom, default=0.0) or 1.0)  # a zero-height top bar would pin the limit to the stack
        ax.set_title(report["hardware"])
        ax.set_ylabel("energy per sample (J)")
        ax.tick_params(axis="x", rotation=45)
    axes[0][0].legend(fontsize="small")
    fig.suptitle("Energy per layer by event category")
    _save(fig, path)


def _snn_vs_ann(reports: list[dict[str, Any]], path: Path) -> None:
    """Per profile: the SNN's dynamic and static energy stacked, beside the ANN at fp32 and int8."""
    names = [r["hardware"] for r in reports]
    x = np.arange(len(names))
    dynamic = [r["dynamic_energy_j"] or 0.0 for r in reports]
    static = [r["static_energy_j"] or 0.0 for r in reports]
    fig, ax = plt.subplots(figsize=(max(5, 1.8 * len(names) + 2), 4))
    ax.bar(x - 0.27, dynamic, 0.27, label="SNN dynamic")
    ax.bar(x - 0.27, static, 0.27, bottom=dynamic, label="SNN static (power x time)", hatch="//", alpha=0.6)
    ax.bar(x, [r["ann_baselines"]["fp32"]["energy_j"] for r in reports], 0.27, label="ANN fp32 (same network, 45 nm)")
    ax.bar(x + 0.27, [r["ann_baselines"]["int8"]["energy_j"] for r in reports], 0.27, label="ANN int8 (45 nm)")
    for i, r in enumerate(reports):
        if r["dynamic_energy_j"] is None:
            ax.annotate(
                "SNN energy\nunknown",
                (i - 0.27, r["ann_baselines"]["int8"]["energy_j"]),
                ha="center",
                fontsize="x-small",
            )
        if "energy_j" in r.get("sanafe", {}):
            ax.plot(
                [i - 0.27],
                [r["sanafe"]["energy_j"]],
                "kD",
                label=f"SANA-FE Loihi model ({r['sanafe']['samples']} samples)",
            )
    ax.set_xticks(list(x), names)
    ax.set_yscale("log")
    ax.set_ylabel("energy per sample (J)")
    ax.set_title("SNN (dynamic + static) against the ANN")
    ax.legend(fontsize="small")
    _save(fig, path)


def write_plots(reports: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """Write the three plots of one or several per-profile reports; return their paths."""
    paths = [out_dir / name for name in PLOTS]
    _firing_rates(reports[0], paths[0])
    _energy_by_layer(reports, paths[1])
    _snn_vs_ann(reports, paths[2])
    return paths


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats in both lower energy and higher accuracy, by energy."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -np.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def _series_labels(rows: list[dict[str, Any]]) -> dict[tuple[str, ...], str]:
    """One legend label per network (its method and runs): the method, with the runs' folder names
    where two networks share a method."""
    series = list(dict.fromkeys((r["method"], *r["runs"]) for r in rows))
    methods = [key[0] for key in series]
    return {
        key: key[0] if methods.count(key[0]) == 1 else f"{key[0]} ({', '.join(Path(r).name for r in key[1:])})"
        for key in series
    }


def pareto_plot(result: dict[str, Any], path: Path) -> plt.Figure:
    """Accuracy against energy per inference (dynamic + static where known), one panel per profile
    with known energy, the Pareto front drawn; return the figure (written to ``path``, closed).

    No text sits among the points: a colour (and line) per network, a marker shape per T, both
    named in one legend beside the panels. Markers are hollow and smaller for each later network, so
    points that coincide (several methods at one T) stay visible as concentric rings.
    """

    def energy(row: dict[str, Any], name: str) -> float | None:
        e = row["energy"][name]
        return e["energy_with_static_j"] if e["energy_with_static_j"] is not None else e["dynamic_energy_j"]

    names = [n for n in result["hardware"] if all(energy(r, n) is not None for r in result["rows"])]
    names = names or result["hardware"][:1]
    labels = _series_labels(result["rows"])
    colours = dict(zip(labels, itertools.cycle(mcolors.TABLEAU_COLORS.values())))  # matplotlib's tab10, in order
    sizes = {key: max(4.0, 14.0 - 3.5 * i) for i, key in enumerate(labels)}
    shapes = dict(zip(result["timesteps"], itertools.cycle("osD^v<>p")))
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names) + 1.8, 3.8), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        rows = [r for r in result["rows"] if energy(r, name) is not None]
        for key in labels:
            mine = sorted((r for r in rows if (r["method"], *r["runs"]) == key), key=lambda r: r["timesteps"])
            ax.plot([energy(r, name) for r in mine], [r["accuracy"] for r in mine], "-", color=colours[key], lw=0.8)
            for r in mine:
                ax.plot(
                    energy(r, name),
                    r["accuracy"],
                    shapes[r["timesteps"]],
                    markersize=sizes[key],
                    markerfacecolor="none",
                    markeredgecolor=colours[key],
                    markeredgewidth=1.5,
                )
        points = [
            (e, r["accuracy"]) for r in rows if (e := energy(r, name)) is not None
        ]  # rows hold known energies only
        front = [points[i] for i in pareto_front(points)]
        if front:
            ax.step([p[0] for p in front], [p[1] for p in front], "k--", where="post", linewidth=0.8)
        ax.set_xscale("log")
        static = rows and rows[0]["energy"][name]["static_energy_j"] is not None
        ax.set_xlabel("energy per inference (J)" + (", dynamic + static" if static else ""))
        ax.set_ylabel("accuracy")
        ax.set_title(name)
    handles = [Line2D([], [], color=colours[k], lw=2) for k in labels] + [Line2D([], [], color="k", ls="--", lw=0.8)]
    handles += [Line2D([], [], ls="", marker=shapes[T], color="0.3", markerfacecolor="none") for T in shapes]
    entries = [*labels.values(), "Pareto front", *(f"T = {T}" for T in shapes)]
    axes[0][-1].legend(handles, entries, loc="upper left", bbox_to_anchor=(1.03, 1.0), fontsize="small")
    fig.suptitle(f"Accuracy against energy ({result['samples']} samples)")
    _save(fig, path)
    return fig
