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

Optional, for a chip whose messages, time and static power are modelled (``placement``, ``timing``):

    [energy.synop_conv, neuron_update]  joules, source: a conv layer's synaptic event; a neuron-step
                     whose state changes (then ``energy.neuron`` is the access every neuron pays each step)
    [energy.message, hop_ew, hop_ns]    joules, source: one spike message to one core; one mesh hop
                     east-west / north-south. Needs [mesh].
    [mesh.*]         cores_per_tile, tiles_x, tiles_y (value, source each). Needs [limits], and
                     cores_per_tile x tiles_x x tiles_y == limits.cores_per_chip.
    [latency.*]      seconds, source: neuron, neuron_update, spike, message_out, message_in, synop,
                     synop_conv; [latency.barrier] tiles = [...], seconds = [...], source (the barrier
                     synchronisation at the end of a step, by tiles in use). Needs [mesh].
    [static.power_per_chip]  watts, source
    [reset]          interval_power_of_two (true/false), source: whether the chip's neurons reset
                     only at power-of-two intervals of steps (the interval is T, one sample's window)

Any ``joules``, ``seconds`` or ``watts`` may be the string "unknown" (with a source saying why): what
depends on it is then reported as unknown, never guessed.

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
OPTIONAL_ENERGY = ("synop_conv", "neuron_update", "message", "hop_ew", "hop_ns", BIAS_KEY)
NETWORK_ENERGY = ("message", "hop_ew", "hop_ns")
MESH_KEYS = ("cores_per_tile", "tiles_x", "tiles_y")
LATENCY_KEYS = ("neuron", "neuron_update", "spike", "message_out", "message_in", "synop", "synop_conv")
UNKNOWN = "unknown"
COUNT_LIMITS = ("cores_per_chip", "compartments_per_core", "synaptic_memory_per_core_bytes", "input_axons_per_core")


@dataclass(frozen=True)
class Figure:
    """One number with the publication (or derivation) it comes from."""

    value: float  # NaN when the figure is unknown
    source: str

    @property
    def known(self) -> bool:
        return not math.isnan(self.value)

    def to_json(self, unit: str) -> dict[str, Any]:
        return {unit: self.value if self.known else UNKNOWN, "source": self.source}


@dataclass(frozen=True)
class Limits:
    """Core and chip limits of constrained hardware (docs/semantics.md, 'Energy counts')."""

    cores_per_chip: Figure
    compartments_per_core: Figure
    synaptic_memory_per_core_bytes: Figure
    input_axons_per_core: Figure
    weight_bits_min: int
    weight_bits_max: int
    weight_bits_source: str

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            k: {"value": int(getattr(self, k).value), "source": getattr(self, k).source} for k in COUNT_LIMITS
        }
        out["weight_bits"] = {
            "min": self.weight_bits_min,
            "max": self.weight_bits_max,
            "source": self.weight_bits_source,
        }
        return out


@dataclass(frozen=True)
class Mesh:
    """The chip's network on chip: tiles of ``cores_per_tile`` cores on a ``tiles_x`` x ``tiles_y`` mesh."""

    cores_per_tile: Figure
    tiles_x: Figure
    tiles_y: Figure

    def to_dict(self) -> dict[str, Any]:
        return {k: {"value": int(getattr(self, k).value), "source": getattr(self, k).source} for k in MESH_KEYS}


@dataclass(frozen=True)
class Barrier:
    """Barrier synchronisation time at the end of a step, a step function of the tiles in use."""

    tiles: tuple[int, ...]
    seconds: tuple[float, ...]
    source: str

    def at(self, tiles: int) -> float:
        """The entry of the largest ``tiles`` key <= ``tiles`` (the first entry below them all)."""
        index = max([i for i, t in enumerate(self.tiles) if t <= tiles], default=0)
        return self.seconds[index]


@dataclass(frozen=True)
class Profile:
    """A hardware target's per-event energies (joules) and, for constrained hardware, its limits;
    optionally its mesh, per-event latencies (seconds), barrier and static power (watts per chip)."""

    name: str
    description: str
    energy: dict[str, Figure]  # keys: synop, mac, neuron, spike and any of OPTIONAL_ENERGY (NaN: unknown)
    limits: Limits | None
    path: Path
    mesh: Mesh | None = None
    latency: dict[str, Figure] | None = None
    barrier: Barrier | None = None
    static_power: Figure | None = None
    reset_power_of_two: str | None = None  # the source, when neuron resets need a power-of-two interval

    def e(self, key: str) -> float:
        """An energy figure in joules; the optional ones default to 0 when absent."""
        fig = self.energy.get(key)
        if fig is None:
            return self.e_synop if key == "synop_conv" else 0.0
        return fig.value

    @property
    def unknown(self) -> list[str]:
        """Names of the figures the profile marks unknown."""
        out = [f"energy.{k}" for k, f in self.energy.items() if not f.known]
        out += [f"latency.{k}" for k, f in (self.latency or {}).items() if not f.known]
        if self.static_power is not None and not self.static_power.known:
            out.append("static.power_per_chip")
        return out

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
            "energy_j": {k: f.to_json("joules") for k, f in self.energy.items()},
        }
        if self.limits is not None:
            out["limits"] = self.limits.to_dict()
        if self.mesh is not None:
            out["mesh"] = self.mesh.to_dict()
        if self.latency is not None:
            out["latency_s"] = {k: f.to_json("seconds") for k, f in self.latency.items()}
        if self.barrier is not None:
            b = self.barrier
            out["barrier_s"] = {"tiles": list(b.tiles), "seconds": list(b.seconds), "source": b.source}
        if self.static_power is not None:
            out["static_power_per_chip_w"] = self.static_power.to_json("watts")
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
            raise UserError(
                f"unknown hardware profile {text!r}: choose one of {', '.join(list_profiles())} or give a .toml file"
            )
    if not path.is_file():
        raise UserError(
            f"no hardware profile file at {path}: give one of {', '.join(list_profiles())} or an existing .toml file"
        )
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not valid TOML ({err})") from err
    return _parse(data, path)


def _parse(data: dict[str, Any], path: Path) -> Profile:
    def fail(key: str, problem: str) -> UserError:
        return UserError(f"{path}: key '{key}' {problem}")

    def table(d: dict[str, Any], key: str, allowed: set[str], optional: frozenset[str] = frozenset()) -> dict[str, Any]:
        if not isinstance(d, dict):
            raise fail(key, f"must be a table, got {type(d).__name__}")
        unknown = sorted(set(d) - allowed - optional)
        if unknown:
            raise fail(
                f"{key}.{unknown[0]}" if key else unknown[0],
                f"is unknown (allowed here: {', '.join(sorted(allowed | optional))})",
            )
        missing = sorted(allowed - set(d))
        if missing:
            raise fail(f"{key}.{missing[0]}" if key else missing[0], "is missing")
        return d

    def text(d: dict[str, Any], key: str, where: str) -> str:
        value = d[key]
        if not isinstance(value, str) or not value.strip():
            raise fail(where, f"must be a non-empty string, got {value!r}")
        return value

    def number(d: dict[str, Any], key: str, where: str, unit: str = "joules") -> float:
        value = d[key]
        if value == UNKNOWN:
            return math.nan
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise fail(where, f'must be a non-negative number of {unit} or "unknown", got {value!r}')
        return float(value)

    def figure(d: dict[str, Any], key: str, unit: str) -> Figure:
        fig = table(d[key.split(".")[-1]], key, {unit, "source"})
        return Figure(number(fig, unit, f"{key}.{unit}", unit), text(fig, "source", f"{key}.source"))

    def count(d: dict[str, Any], key: str, where: str) -> int:
        value = d[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise fail(where, f"must be a positive integer, got {value!r}")
        return value

    optional = {"limits", "mesh", "latency", "static", "reset"}
    table(data, "", {"name", "description", "energy"} | (optional & set(data)))
    name = text(data, "name", "name")
    energy_table = table(data["energy"], "energy", set(ENERGY_KEYS) | (set(OPTIONAL_ENERGY) & set(data["energy"])))
    energy = {
        key: figure(energy_table, f"energy.{key}", "joules")
        for key in (*ENERGY_KEYS, *OPTIONAL_ENERGY)
        if key in energy_table
    }
    limits = None
    if "limits" in data:
        lim = table(data["limits"], "limits", set(COUNT_LIMITS) | {"weight_bits"})
        figures = {}
        for key in COUNT_LIMITS:
            fig = table(lim[key], f"limits.{key}", {"value", "source"})
            figures[key] = Figure(
                count(fig, "value", f"limits.{key}.value"), text(fig, "source", f"limits.{key}.source")
            )
        bits = table(lim["weight_bits"], "limits.weight_bits", {"min", "max", "source"})
        lo, hi = count(bits, "min", "limits.weight_bits.min"), count(bits, "max", "limits.weight_bits.max")
        if lo > hi:
            raise fail("limits.weight_bits", f"has min {lo} > max {hi}")
        limits = Limits(
            **figures,
            weight_bits_min=lo,
            weight_bits_max=hi,
            weight_bits_source=text(bits, "source", "limits.weight_bits.source"),
        )
    mesh = latency = barrier = static = None
    network = [k for k in NETWORK_ENERGY if k in energy]
    if "mesh" in data:
        m = table(data["mesh"], "mesh", set(MESH_KEYS))
        mesh = Mesh(
            *(
                Figure(
                    count(table(m[k], f"mesh.{k}", {"value", "source"}), "value", f"mesh.{k}.value"),
                    text(m[k], "source", f"mesh.{k}.source"),
                )
                for k in MESH_KEYS
            )
        )
        if limits is None:
            raise fail(
                "limits", "is missing: the mesh placement needs the per-core limits (cores_per_chip, compartments, ...)"
            )
        missing = [k for k in NETWORK_ENERGY if k not in energy]
        if missing:
            raise fail(
                f"energy.{missing[0]}",
                'is missing: a profile with a mesh prices every message and hop (write "unknown" if unpublished)',
            )
        per_chip = int(mesh.cores_per_tile.value * mesh.tiles_x.value * mesh.tiles_y.value)
        if per_chip != int(limits.cores_per_chip.value):
            raise fail(
                "mesh",
                f"is impossible: {int(mesh.cores_per_tile.value)} cores x {int(mesh.tiles_x.value)} x "
                f"{int(mesh.tiles_y.value)} tiles = {per_chip} cores per chip, but "
                f"limits.cores_per_chip is {int(limits.cores_per_chip.value)}",
            )
    elif network:
        raise fail(
            "mesh", f"is missing: energy.{network[0]} is priced per message or hop, which needs a placement on a mesh"
        )
    if "latency" in data:
        if mesh is None:
            raise fail("mesh", "is missing: per-core latencies need a placement on a mesh")
        lat = table(data["latency"], "latency", {*LATENCY_KEYS, "barrier"})
        latency = {k: figure(lat, f"latency.{k}", "seconds") for k in LATENCY_KEYS}
        b = table(lat["barrier"], "latency.barrier", {"tiles", "seconds", "source"})
        tiles, seconds = b["tiles"], b["seconds"]
        lists = isinstance(tiles, list) and isinstance(seconds, list) and tiles and len(tiles) == len(seconds)
        counts = lists and all(isinstance(t, int) and not isinstance(t, bool) and t >= 1 for t in tiles)
        if not counts or tiles != sorted(set(tiles)):
            raise fail(
                "latency.barrier", "needs 'tiles' (increasing positive integers) and 'seconds' of the same length"
            )
        times = tuple(number({"s": v}, "s", "latency.barrier.seconds", "seconds") for v in seconds)
        barrier = Barrier(tuple(tiles), times, text(b, "source", "latency.barrier.source"))
    if "static" in data:
        st = table(data["static"], "static", {"power_per_chip"})
        static = figure(st, "static.power_per_chip", "watts")
    reset = None
    if "reset" in data:
        r = table(data["reset"], "reset", {"interval_power_of_two", "source"})
        if not isinstance(r["interval_power_of_two"], bool):
            raise fail("reset.interval_power_of_two", f"must be true or false, got {r['interval_power_of_two']!r}")
        reset = text(r, "source", "reset.source") if r["interval_power_of_two"] else None
    return Profile(
        name, text(data, "description", "description"), energy, limits, path, mesh, latency, barrier, static, reset
    )
