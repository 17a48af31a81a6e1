"""Run the deployed student in SANA-FE's Loihi model. Runs only as its own process:

    python path/to/hw_targets/sanafe_runner.py IN.npz OUT.npz

SANA-FE is GPL-3.0, so this module is the only one that imports it, and nothing in the package
imports this module: ``sanafe_compare`` writes the network and inputs to ``IN.npz``, starts this
process, and reads ``OUT.npz``. The network is built exactly: one neuron group per deployed layer
(pools folded), every real synapse an explicit edge with its weight, SANA-FE's Loihi LIF
(``v = trunc64(leak * v) + bias + input``, fire if ``v > theta``, hard reset to 0, no synaptic
current memory) with the student's thresholds and leak, and the output integrator a neuron that
never fires. Neurons are placed on SANA-FE's Loihi cores exactly as ``placement.place`` puts them
(the spec names each group's SANA-FE cores and the mesh's tile rows). Poisson input spikes come from SANA-FE input
neurons replaying the given spike trains; under direct encoding the host-computed first layer
drives layer 0 through its bias for T steps. Each layer adds one step of latency, so a sample runs
T + depth (direct: T + depth - 1) steps. A layer with a bias (``bias_<j>``, per neuron) gets it as
SANA-FE's per-neuron ``bias``, switched on only during the T steps its inputs arrive in (layer j's
window starts at step j, direct, or j + 1, Poisson): a bias on before its first input would charge
the neuron early and on after its window would make it fire when ours has stopped.
"""

from __future__ import annotations

import math
import sys
import tempfile
from importlib import resources
from pathlib import Path

import numpy as np
import sanafe

CHIP_ROWS = 4  # SANA-FE's Loihi model: 8 x 4 tiles of 4 cores, 128 cores, one chip
NEVER = 1e300  # threshold of the output integrator
SIM = {"timing_model": "simple", "processing_threads": 1, "spike_trace": True}


def conv_edges(
    w: np.ndarray, in_shape, out_shape, stride: int, padding: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(source, destination, weight) of every real synapse of a conv, neurons indexed in (C, H, W) order."""
    c_out, c_in, k, _ = w.shape
    _, h, wd = in_shape
    _, ho, wo = out_shape
    src, dst, wt = [], [], []
    for i in range(k):
        ih = np.arange(ho) * stride - padding + i
        vh = (ih >= 0) & (ih < h)
        for j in range(k):
            iw = np.arange(wo) * stride - padding + j
            vw = (iw >= 0) & (iw < wd)
            pos_in = (ih[vh][:, None] * wd + iw[vw][None, :]).reshape(-1)
            pos_out = (np.flatnonzero(vh)[:, None] * wo + np.flatnonzero(vw)[None, :]).reshape(-1)
            s = np.arange(c_in)[None, :, None] * (h * wd) + pos_in[None, None, :]
            d = np.arange(c_out)[:, None, None] * (ho * wo) + pos_out[None, None, :]
            shape = (c_out, c_in, len(pos_in))
            src.append(np.broadcast_to(s, shape).reshape(-1))
            dst.append(np.broadcast_to(d, shape).reshape(-1))
            wt.append(np.broadcast_to(w[:, :, i, j][:, :, None], shape).reshape(-1))
    return np.concatenate(src), np.concatenate(dst), np.concatenate(wt)


def potential_scale(spec) -> float:
    """A power of two to scale weights, biases and thresholds by (the spikes do not change).

    SANA-FE's Loihi LIF truncates the potential to a multiple of 1/64 after each leak (Loihi's 6
    fractional bits) through a 32-bit int. Scaling moves that truncation below the student's float32
    resolution while keeping 64 * |potential| under 2**30, with |potential| <= T * max |input|.
    """
    depth, T = int(spec["depth"]), int(spec["timesteps"])
    largest = float(np.abs(spec["inputs"]).max(initial=0.0)) if bool(spec["direct"]) else 0.0
    for j in range(depth):
        w = np.abs(spec[f"weight_{j}"])
        bias = float(np.abs(spec[f"bias_{j}"]).max()) if f"bias_{j}" in spec else 0.0
        largest = max(largest, float(w.reshape(w.shape[0], -1).sum(axis=1).max()) + bias)
    thresholds = [float(spec[f"threshold_{j}"]) for j in range(depth) if np.isfinite(spec[f"threshold_{j}"])]
    bound = max([T * largest, *thresholds, 1e-30])
    return float(2.0 ** min(16, math.floor(math.log2(2**30 / (64 * bound)))))


def loihi_arch(input_units: int, folder: str, rows: int = CHIP_ROWS):
    """SANA-FE's Loihi model with ``input_units`` input soma units per core instead of 1,024.

    Each input neuron needs a soma unit of its own; the units cost no energy or time, but building
    128 x 1,024 of them takes seconds, so only as many as are used are kept. ``rows`` > 4 stretches
    the 8 x 4 tile mesh (4 cores per tile) into one larger virtual chip for networks that need
    several Loihi chips: SANA-FE has no model of the links between chips.
    """
    text = (resources.files("sanafe.examples") / "loihi.yaml").read_text()
    text = text.replace("loihi_inputs[0..1023]", f"loihi_inputs[0..{input_units - 1}]")
    text = text.replace(f"height: {CHIP_ROWS}", f"height: {rows}").replace(
        f"loihi_tile[0..{8 * CHIP_ROWS - 1}]", f"loihi_tile[0..{8 * rows - 1}]"
    )
    path = Path(folder) / "loihi.yaml"
    path.write_text(text)
    return sanafe.load_arch(str(path))


def build(spec, folder: str, scale: float):
    """The chip with the network loaded, the number of cores it occupies and the mesh's tile rows."""
    depth, direct = int(spec["depth"]), bool(spec["direct"])
    n_in = 0 if direct else int(np.prod(spec["in_shape_0"]))
    input_units = int(spec["input_per_core"]) if not direct else 1
    rows = int(spec["rows"])
    arch = loihi_arch(input_units, folder, rows)
    cores = arch.cores()
    net = sanafe.Network()
    groups, placement = [], []
    if not direct:
        groups.append(net.create_neuron_group("input", n_in, log_spikes=True))
    for j in range(depth):
        kind = str(spec[f"kind_{j}"])
        theta = float(spec[f"threshold_{j}"])
        spiking = math.isfinite(theta)
        attrs = {
            "threshold": theta * scale if spiking else NEVER,
            "leak_decay": float(spec["leak"]) if spiking else 1.0,
            "reset_mode": "hard",
            "reset": 0.0,
            "reverse_reset_mode": "none",
            "input_decay": 0.0,
        }
        synapse = "loihi_conv_synapse" if kind == "conv" else "loihi_dense_synapse"
        group = net.create_neuron_group(
            f"layer{j}",
            int(np.prod(spec[f"out_shape_{j}"])),
            model_attributes=attrs,
            default_synapse_hw_name=synapse,
            log_spikes=True,
        )
        placement.append((group, int(spec[f"per_core_{j}"])))
        if groups:  # not the host-computed first layer under direct encoding
            w = spec[f"weight_{j}"] * scale
            if kind == "conv":
                s, d, wt = conv_edges(
                    w,
                    tuple(spec[f"in_shape_{j}"]),
                    tuple(spec[f"out_shape_{j}"]),
                    int(spec[f"stride_{j}"]),
                    int(spec[f"padding_{j}"]),
                )
            else:
                d, s = np.indices(w.shape).reshape(2, -1)
                wt = w.reshape(-1)
            groups[-1].connect_neurons_sparse(group, {"w": wt.tolist()}, list(zip(s.tolist(), d.tolist(), strict=True)))
        groups.append(group)
    used = 0
    if not direct:
        sites = spec["sites_input"]
        for i, neuron in enumerate(groups[0].neurons):
            neuron.set_attributes(soma_hw_name=f"loihi_inputs[{i % input_units}]")
            neuron.map_to_core(cores[int(sites[i // input_units])])
        used += len(sites)
    for j, (group, per_core) in enumerate(placement):
        sites = spec[f"sites_{j}"]
        if int(sites.max()) >= len(cores):
            raise SystemExit(f"the placement needs more than the {len(cores)} cores of the SANA-FE mesh built for it")
        for i, neuron in enumerate(group.neurons):
            neuron.map_to_core(cores[int(sites[i // per_core])])
        used += len(sites)
    chip = sanafe.SpikingChip(arch)
    chip.load(net)
    return chip, used, rows


def simulate(chip, spec, scale: float) -> dict[str, np.ndarray]:
    """Energies per sample and spike rasters ``[S, steps, N]`` per layer."""
    depth, direct, T = int(spec["depth"]), bool(spec["direct"]), int(spec["timesteps"])
    inputs = spec["inputs"]  # direct: [S, N0] first-layer currents; poisson: [S, T, N_in] spikes
    steps = T + depth - (1 if direct else 0)
    groups = chip.mapped_neuron_groups
    energy: dict[str, list[float]] = {k: [] for k in ("total", "synapse", "dendrite", "soma", "network")}
    sim_time: list[float] = []
    rasters = [np.zeros((len(inputs), steps, int(np.prod(spec[f"out_shape_{j}"]))), dtype=bool) for j in range(depth)]
    biases = {j: spec[f"bias_{j}"] * scale for j in range(depth) if f"bias_{j}" in spec}
    for s, x in enumerate(inputs):
        chip.reset()
        windows = {j: (j if direct else j + 1, b) for j, b in biases.items()}  # layer -> (first step, bias)
        if direct:
            windows[0] = (0, x * scale)
        else:
            trains = np.zeros((steps, x.shape[1]), dtype=bool)
            trains[:T] = x.astype(bool)
            for neuron, train in zip(groups["input"], trains.T.tolist(), strict=True):
                neuron.set_attributes(model_attributes={"spikes": train})
        changes: dict[int, list[tuple[int, np.ndarray]]] = {}  # step -> (layer, bias from that step on)
        for j, (start, bias) in windows.items():
            changes.setdefault(start, []).append((j, bias))
            changes.setdefault(start + T, []).append((j, np.zeros_like(bias)))
        parts, done = [], 0
        for step in sorted({*changes, steps}):
            if step > done:
                parts.append(chip.sim(step - done, **SIM))
                done = step
            for j, bias in changes.get(step, []):  # those at ``steps`` clear the biases for the next sample
                for neuron, b in zip(groups[f"layer{j}"], bias.tolist(), strict=True):
                    neuron.set_attributes(model_attributes={"bias": b})
        for k in energy:
            energy[k].append(sum(p["energy"][k] for p in parts))
        sim_time.append(sum(p["sim_time"] for p in parts))
        for t, fired in enumerate(step for p in parts for step in p["spike_trace"]):
            for address in fired:
                if address.group_name.startswith("layer"):
                    rasters[int(address.group_name[5:])][s, t, address.neuron_offset] = True
    out = {f"energy_{k}": np.array(v) for k, v in energy.items()}
    out.update({f"spikes_{j}": r for j, r in enumerate(rasters)})
    out["steps"] = np.array(steps)
    out["sim_time"] = np.array(sim_time)
    return out


def main(argv: list[str]) -> None:
    spec = np.load(argv[1], allow_pickle=False)
    scale = potential_scale(spec)
    with tempfile.TemporaryDirectory() as folder:
        chip, cores, rows = build(spec, folder, scale)
    np.savez(argv[2], cores=cores, rows=rows, scale=scale, **simulate(chip, spec, scale))


if __name__ == "__main__":
    main(sys.argv)
