"""Hardware profiles: per-event energies and core limits, one TOML file per target, each figure with its source.

A profile file (``hw_targets/profiles/<name>.toml``) holds::

    name = "loihi"
    description = "..."
    [energy.synop]   joules = 23.6e-12, source = "..."     # one accumulate per binary synaptic event
    [energy.mac]     joules, source                         # one dense multiply-accumulate
    [energy.neuron]  joules, source                         # one neuron state update
    [energy.spike]   joules, source                         # one emitted spike
    [energy.bias]    joules (or "unknown"), source; optional     # one bias input: a neuron's constant
                                                                # current at one step (no synaptic event)
    [limits.*]       optional, all or none: cores_per_chip, compartments_per_core,
                     synaptic_memory_per_core_bytes, input_axons_per_core (value, source each)
                     and weight_bits (min, max, source)

Adding a profile is adding one file; the loader rejects unknown keys, missing figures and wrong
types with one line naming the file and the key.
"""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError

PROFILE_DIR = Path(__file__).with_name("profiles")
ENERGY_KEYS = ("synop", "mac", "neuron", "spike")
BIAS_KEY = "bias"  # optional: absent or "unknown" both mean the figure is unknown
UNKNOWN = "unknown"
COUNT_LIMITS = ("cores_per_chip", "compartments_per_core", "synaptic_memory_per_core_bytes", "input_axons_per_core")


@dataclass(frozen=True)
class Figure:
    """One number with the publication (or derivation) it comes from."""

    value: float
    source: str


@dataclass(frozen=True)
class Limits:
    """Core and chip limits of constrained hardware (SPEC section 4)."""

    cores_per_chip: Figure
    compartments_per_core: Figure
    synaptic_memory_per_core_bytes: Figure
    input_axons_per_core: Figure
    weight_bits_min: int
    weight_bits_max: int
    weight_bits_source: str

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: {"value": int(getattr(self, k).value), "source": getattr(self, k).source} for k in COUNT_LIMITS}
        out["weight_bits"] = {"min": self.weight_bits_min, "max": self.weight_bits_max, "source": self.weight_bits_source}
        return out


@dataclass(frozen=True)
class Profile:
    """A hardware target's per-event energies (joules) and, for constrained hardware, its limits."""

    name: str
    description: str
    energy: dict[str, Figure]  # keys: synop, mac, neuron, spike; bias when the file gives it (NaN: unknown)
    limits: Limits | None
    path: Path

    @property
    def e_synop(self) -> float:
        return self.energy["synop"].value

    @property
    def e_mac(self) -> float:
        return self.energy["mac"].value

    @property
    def e_neuron(self) -> float:
        return self.energy["neuron"].value

    @property
    def e_spike(self) -> float:
        return self.energy["spike"].value

    @property
    def e_bias(self) -> float:
        """Joules per bias input; NaN when the profile does not know it."""
        return self.energy[BIAS_KEY].value if BIAS_KEY in self.energy else math.nan

    @property
    def bias_known(self) -> bool:
        return not math.isnan(self.e_bias)

    def to_dict(self) -> dict[str, Any]:
        """The figures used, in joules, with their sources (the ``profile`` entry of energy.json)."""
        out: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "energy_j": {k: {"joules": UNKNOWN if math.isnan(f.value) else f.value, "source": f.source}
                         for k, f in self.energy.items()},
        }
        if self.limits is not None:
            out["limits"] = self.limits.to_dict()
        return out


def list_profiles() -> list[str]:
    """Names of the profiles shipped with the package (the ``.toml`` files in ``profiles/``)."""
    return sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))


def load_profile(name_or_path: str | os.PathLike) -> Profile:
    """A shipped profile by name (``"loihi"``) or any profile file by path, validated."""
    text = str(name_or_path)
    path = Path(text)
    if not (path.suffix == ".toml" or os.sep in text or path.is_file()):
        path = PROFILE_DIR / f"{text}.toml"
        if not path.is_file():
            raise UserError(f"unknown hardware profile {text!r}: choose one of {', '.join(list_profiles())} or give a .toml file")
    if not path.is_file():
        raise UserError(f"no hardware profile file at {path}: give one of {', '.join(list_profiles())} or an existing .toml file")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not valid TOML ({err})") from None
    return _parse(data, path)


def _parse(data: dict[str, Any], path: Path) -> Profile:
    def fail(key: str, problem: str) -> UserError:
        return UserError(f"{path}: key '{key}' {problem}")

    def table(d: dict[str, Any], key: str, allowed: set[str], optional: frozenset[str] = frozenset()) -> dict[str, Any]:
        if not isinstance(d, dict):
            raise fail(key, f"must be a table, got {type(d).__name__}")
        unknown = sorted(set(d) - allowed - optional)
        if unknown:
            raise fail(f"{key}.{unknown[0]}" if key else unknown[0],
                       f"is unknown (allowed here: {', '.join(sorted(allowed | optional))})")
        missing = sorted(allowed - set(d))
        if missing:
            raise fail(f"{key}.{missing[0]}" if key else missing[0], "is missing")
        return d

    def text(d: dict[str, Any], key: str, where: str) -> str:
        value = d[key]
        if not isinstance(value, str) or not value.strip():
            raise fail(where, f"must be a non-empty string, got {value!r}")
        return value

    def number(d: dict[str, Any], key: str, where: str) -> float:
        value = d[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise fail(where, f"must be a non-negative number of joules, got {value!r}")
        return float(value)

    def count(d: dict[str, Any], key: str, where: str) -> int:
        value = d[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise fail(where, f"must be a positive integer, got {value!r}")
        return value

    top = {"name", "description", "energy"} | ({"limits"} if "limits" in data else set())
    table(data, "", top)
    name = text(data, "name", "name")
    energy_table = table(data["energy"], "energy", set(ENERGY_KEYS), frozenset({BIAS_KEY}))
    energy = {}
    for key in (*ENERGY_KEYS, BIAS_KEY):
        if key not in energy_table:
            continue
        fig = table(energy_table[key], f"energy.{key}", {"joules", "source"})
        joules = math.nan if key == BIAS_KEY and fig["joules"] == UNKNOWN else number(fig, "joules", f"energy.{key}.joules")
        energy[key] = Figure(joules, text(fig, "source", f"energy.{key}.source"))
    limits = None
    if "limits" in data:
        lim = table(data["limits"], "limits", set(COUNT_LIMITS) | {"weight_bits"})
        figures = {}
        for key in COUNT_LIMITS:
            fig = table(lim[key], f"limits.{key}", {"value", "source"})
            figures[key] = Figure(count(fig, "value", f"limits.{key}.value"), text(fig, "source", f"limits.{key}.source"))
        bits = table(lim["weight_bits"], "limits.weight_bits", {"min", "max", "source"})
        lo, hi = count(bits, "min", "limits.weight_bits.min"), count(bits, "max", "limits.weight_bits.max")
        if lo > hi:
            raise fail("limits.weight_bits", f"has min {lo} > max {hi}")
        limits = Limits(**figures, weight_bits_min=lo, weight_bits_max=hi, weight_bits_source=text(bits, "source", "limits.weight_bits.source"))
    return Profile(name, text(data, "description", "description"), energy, limits, path)
