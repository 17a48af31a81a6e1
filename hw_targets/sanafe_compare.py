"""A second Loihi energy estimate from SANA-FE, beside the analytical ``loihi`` profile.

SANA-FE (GPL-3.0, optional) is never imported here: the deployed network and the exact inputs go
to ``sanafe_runner`` in a separate process through an ``.npz`` file, and its energies and spike
rasters come back the same way. SANA-FE's Loihi model (its ``loihi.yaml``, fitted to the real chip)
simulates the same weights, thresholds, leak and input spikes (Poisson) or host-computed first-layer
currents (direct), so its spikes can be checked against ours before its energy is compared. A
layer's bias goes as each neuron's SANA-FE ``bias``, on during that layer's T steps only.
Feed-forward students only: residual ones are refused (``check_feed_forward``).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UserError
from ..inputs import model_input
from ..modes import eval_mode
from ..neurons import Encoding
from ..student import SpikingStudent, Trace, deployed_layers, has_shortcuts
from .counting import count_events
from .energy import first_layer_current, price_layer
from .profile import Profile
from .traffic import TrafficCounter

TIMEOUT_S = 900
RUNNER = Path(__file__).with_name("sanafe_runner.py")


def sanafe_available() -> bool:
    """Whether SANA-FE is installed (checked without importing it)."""
    return importlib.util.find_spec("sanafe") is not None


def check_feed_forward(student: SpikingStudent) -> None:
    """Refuse a residual student: SANA-FE, like Loihi, delays every hop by one step, so a shortcut
    edge would deliver its source's spikes a step early for every layer it skips, and SANA-FE would
    simulate another network (relay neurons to delay them would add energy of their own)."""
    if has_shortcuts(student.config):
        raise UserError(
            f"SANA-FE comparison supports feed-forward students only; {student.config.arch} has residual "
            "shortcuts: run the energy report without --sanafe"
        )


def _spec(
    student: SpikingStudent, images: torch.Tensor, counter: TrafficCounter, timesteps: int, seed: int
) -> dict[str, np.ndarray]:
    layers = deployed_layers(student)
    direct = student.config.encoding == Encoding.DIRECT
    thresholds = student.thresholds.detach().double().cpu().numpy()
    placement = counter.placement
    per_core = [g.per_core for g in placement.layers]

    def sites(group) -> np.ndarray:  # SANA-FE core index of each of the group's cores
        cores = group.first + np.arange(group.cores)
        return placement.sanafe_tile(cores) * placement.cores_per_tile + cores % placement.cores_per_tile

    spec: dict[str, Any] = {
        "depth": len(layers),
        "direct": direct,
        "leak": float(student.leak.detach()),
        "timesteps": timesteps,
        "rows": placement.tiles_y * placement.chips,
    }
    spec.update({f"sites_{j}": sites(g) for j, g in enumerate(placement.layers)})
    if placement.input is not None:
        spec.update(sites_input=sites(placement.input), input_per_core=placement.input.per_core)
    for j, layer in enumerate(layers):
        spec.update(
            {
                f"kind_{j}": layer.kind,
                f"weight_{j}": layer.weight,
                f"in_shape_{j}": np.array(layer.in_shape),
                f"out_shape_{j}": np.array(layer.out_shape),
                f"stride_{j}": layer.stride,
                f"padding_{j}": layer.padding,
                f"threshold_{j}": thresholds[layer.lif] if layer.lif is not None else np.inf,
                f"per_core_{j}": per_core[j],
            }
        )
        if layer.bias is not None and not (direct and j == 0):  # the host's current already holds layer 0's
            per_neuron = layer.bias.reshape(-1, 1, 1) if layer.convolutional else layer.bias
            spec[f"bias_{j}"] = np.broadcast_to(per_neuron, layer.out_shape).reshape(-1).copy()
    given = model_input(student.config.encoding, timesteps, images, seed=seed)
    if direct:
        spec["inputs"] = first_layer_current(student, given.image()).double().cpu().numpy()
    else:
        spec["inputs"] = given.steps(timesteps).flatten(2).transpose(0, 1).numpy().astype(np.uint8)  # [S, T, C*H*W]
    return spec


@torch.no_grad()
def _our_run(student: SpikingStudent, images: torch.Tensor, timesteps: int, seed: int) -> Trace:
    """Our recorded run on the same inputs (samples ``0 .. S-1`` of the energy report's)."""
    given = model_input(student.config.encoding, timesteps, images, seed=seed)
    with eval_mode(student):
        return student.run(given.images, input_spikes=given.spikes, timesteps=timesteps, record=True)


def _relative(theirs: float, ours: float) -> float:
    return float((theirs - ours) / ours) if ours else float("inf")


def compare_with_sanafe(
    student: SpikingStudent,
    images: torch.Tensor,
    profile: Profile,
    counter: TrafficCounter,
    *,
    timesteps: int,
    seed: int = 0,
) -> dict[str, Any]:
    """SANA-FE's Loihi energy and time of the first ``len(images)`` samples beside ``profile``'s.

    Our counts come from our run on these images, and ``counter`` (``report.traffic_counter``)
    counts our messages, hops and step times on the placement that SANA-FE is given too.
    ``profile`` prices them (``loihi_calibrated``: SANA-FE's own figures). The
    host-computed first layer (direct encoding) costs nothing in SANA-FE and is left out of ours.
    Terms: synapse (synaptic events), soma (neuron accesses and updates, spike generation),
    network (messages and hops).
    """
    check_feed_forward(student)
    if not sanafe_available():
        return {"skipped": "SANA-FE is not installed (optional extra `sanafe`); no second estimate"}
    samples = len(images)
    with tempfile.TemporaryDirectory(prefix="lasnn-sanafe-") as tmp:
        spec_path, out_path = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
        np.savez(spec_path, **_spec(student, images, counter, timesteps, seed))
        # Run as a script, not ``-m``: the package's import of torch would cost seconds for nothing.
        cmd = [sys.executable, str(RUNNER), str(spec_path), str(out_path)]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return {"error": f"SANA-FE did not finish {samples} samples within {TIMEOUT_S} s; use fewer samples"}
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no message"])[-1]
            return {"error": f"SANA-FE run failed: {last}"}
        with np.load(out_path, allow_pickle=False) as res:
            result = {k: res[k] for k in res.files}
    layers = deployed_layers(student)
    trace = _our_run(student, images, timesteps, seed)
    traffic = counter.count(trace, images)
    counts = count_events(layers, trace, timesteps)
    priced = [price_layer(c, profile, t) for c, t in zip(counts, traffic["layers"], strict=True)]
    ours_terms = {
        "synapse": sum(float(np.mean(p["synops"])) for p in priced),
        "soma": sum(float(np.mean(p["neuron_updates"] + p["spikes"])) for p in priced),
        "network": sum(float(np.mean(p["network"])) for p in priced),
    }
    ours = sum(ours_terms.values())
    theirs = float(np.mean(result["energy_total"]))
    direct = student.config.encoding == Encoding.DIRECT
    agree, total, per_layer = 0, 0, []
    rasters = [s.transpose(0, 1).flatten(2).numpy().astype(bool) for s in trace.spikes]  # [S, T, N] per LIF layer
    for j, raster in enumerate(rasters):
        delay = j if direct else j + 1  # SANA-FE, like Loihi, adds one step per layer
        sim = result[f"spikes_{j}"]
        window = sim[:, delay : delay + timesteps]
        agree += int((window == raster).sum()) + (sim.size - window.size) - int(sim.sum() - window.sum())
        total += sim.size
        per_layer.append(
            {
                "name": layers[j].name,
                "spikes_sanafe": float(sim.sum() / samples),
                "spikes_ours": float(raster.sum() / samples),
            }
        )
    breakdown = {k: float(np.mean(result[f"energy_{k}"])) for k in ("synapse", "dendrite", "soma", "network")}
    steps = int(result["steps"])
    out = {
        "samples": samples,
        "sanafe_version": importlib.metadata.version("sanafe"),
        "architecture": "sanafe/examples/loihi.yaml (SANA-FE's Loihi model)"
        + (
            ""
            if int(result["rows"]) == 4
            else f", mesh stretched to 8 x {int(result['rows'])} tiles: one virtual chip of {32 * int(result['rows'])} cores, "
            "so traffic between Loihi chips is priced as on-chip mesh hops (SANA-FE models no chip-to-chip links)"
        ),
        "simulated_steps": steps,
        "cores": int(result["cores"]),
        "potential_scale": float(result["scale"]),
        "energy_j": theirs,
        "energy_j_std": float(np.std(result["energy_total"])),
        "breakdown_j": breakdown,
        "profile": profile.name,
        "analytical_energy_j": ours,
        "relative_difference": _relative(theirs, ours),
        "terms": {
            k: {"sanafe_j": breakdown[k], "ours_j": v, "relative_difference": _relative(breakdown[k], v)}
            for k, v in ours_terms.items()
        },
        "spike_agreement": agree / total,
        "layers": per_layer,
    }
    if "inference_s" in traffic:
        theirs_t = float(np.mean(result["sim_time"])) / steps
        ours_t = float(np.mean(traffic["inference_s"])) / counter.steps
        out["time_per_step_s"] = {
            "sanafe": theirs_t,
            "ours": ours_t,
            "relative_difference": _relative(theirs_t, ours_t),
        }
    return out
