"""Where every deployed layer's cores sit on the chips' mesh, and how far a message travels.

A profile with a ``[mesh]`` describes one chip as ``tiles_x`` x ``tiles_y`` tiles of ``cores_per_tile``
cores (Loihi 1: 8 x 4 tiles of 4 cores). Several chips are stacked north-south into one mesh
``tiles_x`` wide and ``tiles_y x chips`` high, as the boards that tile Loihi chips extend the mesh
across chip boundaries. Cores are filled in order: the input spike generators (Poisson input),
then each deployed layer in turn, with ``constraints.map_to_cores``'s neurons per core, so a layer's
neurons fill its cores in the flattened (C, H, W) order. Within a chip, tiles are filled column by
column (tile ``t`` at ``x = t // tiles_y``, ``y = t % tiles_y``), SANA-FE's own tile numbering.

A message from core ``a`` to core ``b`` takes ``|x_a - x_b|`` east-west and ``|y_a - y_b|``
north-south hops (dimension-order routing on the mesh); a message between two cores of one tile
takes none. Input spike generators: the host's input spikes enter the chip from neurons that
only relay them, ``ceil(n / 16)`` per core (at most ``compartments_per_core``), as in our SANA-FE
runner; they cost messages and hops but no neuron work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import UserError
from .profile import Profile

INPUT_SPREAD = 16  # input spike generators are spread over up to this many cores


@dataclass(frozen=True)
class Group:
    """One population's cores: neurons ``n`` go to core ``first + n // per_core``."""

    name: str
    neurons: int
    per_core: int
    first: int

    @property
    def cores(self) -> int:
        return math.ceil(self.neurons / self.per_core)

    def core_of(self, neuron: np.ndarray) -> np.ndarray:
        return self.first + neuron // self.per_core


@dataclass(frozen=True)
class Placement:
    """Groups (the input generators first when present, then one per deployed layer) on the mesh."""

    cores_per_tile: int
    tiles_x: int
    tiles_y: int
    input: Group | None
    layers: tuple[Group, ...]

    @property
    def cores(self) -> int:
        last = self.layers[-1]
        return last.first + last.cores

    @property
    def tiles_per_chip(self) -> int:
        return self.tiles_x * self.tiles_y

    @property
    def chips(self) -> int:
        return math.ceil(self.tiles / self.tiles_per_chip)

    @property
    def tiles(self) -> int:
        """Tiles in use (every core up to the last one is mapped)."""
        return math.ceil(self.cores / self.cores_per_tile)

    def site(self, core: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(x, y, chip) of global core indices: chips stacked north-south, tiles column by column."""
        core = np.asarray(core)
        tile = core // self.cores_per_tile
        chip, local = tile // self.tiles_per_chip, tile % self.tiles_per_chip
        return local // self.tiles_y, chip * self.tiles_y + local % self.tiles_y, chip

    def sanafe_tile(self, core: np.ndarray) -> np.ndarray:
        """The tile's index in SANA-FE's mesh ``tiles_x`` wide and ``tiles_y * chips`` high (column-major)."""
        x, y, _ = self.site(core)
        return x * (self.tiles_y * self.chips) + y

    def to_dict(self) -> dict:
        groups = ([self.input] if self.input else []) + list(self.layers)
        return {
            "mesh": f"{self.tiles_x} x {self.tiles_y} tiles of {self.cores_per_tile} cores per chip, "
            "chips stacked north-south",
            "cores": self.cores,
            "tiles": self.tiles,
            "chips": self.chips,
            "groups": [
                {
                    "name": g.name,
                    "neurons": g.neurons,
                    "neurons_per_core": g.per_core,
                    "first_core": g.first,
                    "cores": g.cores,
                }
                for g in groups
            ],
        }


def place(
    names: list[str], neurons: list[int], per_core: list[int], profile: Profile, input_neurons: int = 0
) -> Placement:
    """Place the layers (and ``input_neurons`` input generators, 0 for none) on ``profile``'s mesh."""
    if profile.mesh is None or profile.limits is None:
        raise UserError(
            f"{profile.path}: key 'mesh' is missing: profile {profile.name!r} has no mesh to place the network on"
        )
    compartments = int(profile.limits.compartments_per_core.value)
    first, inp = 0, None
    if input_neurons:
        inp = Group("input", input_neurons, min(compartments, math.ceil(input_neurons / INPUT_SPREAD)), 0)
        first = inp.cores
    layers = []
    for name, n, p in zip(names, neurons, per_core, strict=True):
        if not 1 <= p <= compartments:
            raise UserError(f"layer {name}: {p} neurons per core, the mesh's cores hold 1 to {compartments}")
        layers.append(Group(name, n, p, first))
        first += layers[-1].cores
    m = profile.mesh
    return Placement(int(m.cores_per_tile.value), int(m.tiles_x.value), int(m.tiles_y.value), inp, tuple(layers))
