"""The same network as an ANN at 32-bit float and 8-bit integer, and the SNN's break-even firing rate.

``E_ann = ann_macs x E_mac`` with the MAC energies of ``baselines.toml`` (each with its source).

Break-even: the SNN's dynamic energy splits into a part driven by spikes (synaptic events, spike
generation, messages and hops, neuron updates) and a part that is not (neuron accesses at every
step, the host's first-layer MACs). At a fixed T, scaling every spike-driven count with the mean
firing rate ``r`` (spikes / (spiking neurons x T)) gives ``E_snn(r) = E_fixed + (r / r0) E_spiking``
around the measured rate ``r0``, so the SNN costs what the ANN costs at
``r* = r0 (E_ann - E_fixed) / E_spiking``; below ``r*`` the SNN wins. ``r* = 0`` when the fixed part
alone exceeds the ANN (the SNN cannot win at this T).
"""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Any

BASELINES_FILE = Path(__file__).with_name("baselines.toml")


def ann_baselines() -> dict[str, dict[str, Any]]:
    """``{"fp32": {"mac_joules", "source"}, "int8": {...}}`` from ``baselines.toml``."""
    return tomllib.loads(BASELINES_FILE.read_text())


def break_even_rate(rate: float, fixed_j: float, spiking_j: float, ann_j: float) -> float:
    """Firing rate at which the SNN's dynamic energy equals the ANN's (0: never; inf: always wins)."""
    if ann_j <= fixed_j:
        return 0.0
    if spiking_j <= 0 or rate <= 0:
        return math.inf
    return rate * (ann_j - fixed_j) / spiking_j


def baseline_entries(
    ann_macs: int, rate: float, fixed_j: float | None, spiking_j: float | None
) -> dict[str, dict[str, Any]]:
    """Both ANN baselines with their energy and the SNN's break-even rate against each (None if unknown)."""
    out = {}
    for name, b in ann_baselines().items():
        energy = ann_macs * b["mac_joules"]
        even = None
        if fixed_j is not None and spiking_j is not None and math.isfinite(fixed_j) and math.isfinite(spiking_j):
            even = break_even_rate(rate, fixed_j, spiking_j, energy)
        out[name] = {"energy_j": energy, "mac_j": b["mac_joules"], "source": b["source"], "break_even_rate": even}
    return out
