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
from ..student import SpikingStudent, deployed_layers, has_shortcuts
from .energy import StudentRun, price_layer
from .profile import Profile

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
        raise UserError(f"SANA-FE comparison supports feed-forward students only; {student.config.arch} has residual "
                        "shortcuts: run the energy report without --sanafe")


@torch.no_grad()
def _first_layer_current(student: SpikingStudent, images: torch.Tensor) -> np.ndarray:
    """The host-computed input current of deployed layer 0 per sample, flattened: computed by the
    student's own modules in its own precision, so that SANA-FE integrates the very same values."""
    h = images.to(student.leak.dtype)
    for module in list(student.body)[: deployed_layers(student)[0].source + 1]:
        h = module(h)  # pools, flatten, dropout (eval: identity) and the first Conv/Linear
    return h.flatten(1).double().cpu().numpy()


def _spec(student: SpikingStudent, images: torch.Tensor, per_core: list[int], timesteps: int, seed: int) -> dict[str, np.ndarray]:
    layers = deployed_layers(student)
    direct = student.config.encoding == "direct"
    thresholds = student.thresholds.detach().double().cpu().numpy()
    spec: dict[str, Any] = {"depth": len(layers), "direct": direct, "leak": float(student.leak.detach()), "timesteps": timesteps}
    for j, layer in enumerate(layers):
        spec.update({
            f"kind_{j}": layer.kind, f"weight_{j}": layer.weight, f"in_shape_{j}": np.array(layer.in_shape),
            f"out_shape_{j}": np.array(layer.out_shape), f"stride_{j}": layer.stride, f"padding_{j}": layer.padding,
            f"threshold_{j}": thresholds[layer.lif] if layer.lif is not None else np.inf, f"per_core_{j}": per_core[j],
        })
        if layer.bias is not None and not (direct and j == 0):  # the host's current already holds layer 0's
            per_neuron = layer.bias.reshape(-1, 1, 1) if layer.kind == "conv" else layer.bias
            spec[f"bias_{j}"] = np.broadcast_to(per_neuron, layer.out_shape).reshape(-1).copy()
    given = model_input(student.config.encoding, timesteps, images, seed=seed)
    if direct:
        spec["inputs"] = _first_layer_current(student, given.images)
    else:
        spec["inputs"] = given.spikes.flatten(2).transpose(0, 1).numpy().astype(np.uint8)  # [S, T, C*H*W]
    return spec


@torch.no_grad()
def _our_rasters(student: SpikingStudent, images: torch.Tensor, timesteps: int, seed: int) -> list[np.ndarray]:
    """Our spikes ``[S, T, N]`` of every LIF layer on the same inputs."""
    was_training = student.training
    student.eval()
    given = model_input(student.config.encoding, timesteps, images, seed=seed)
    try:
        trace = student.run(given.images, input_spikes=given.spikes, timesteps=timesteps, record=True)
    finally:
        student.train(was_training)
    return [s.transpose(0, 1).flatten(2).numpy().astype(bool) for s in trace.spikes]


def compare_with_sanafe(student: SpikingStudent, images: torch.Tensor, run: StudentRun, profile: Profile, per_core: list[int], *, timesteps: int, seed: int = 0) -> dict[str, Any]:
    """SANA-FE's Loihi energy of the first ``len(images)`` samples beside the analytical figure.

    ``run`` holds our counts (its first samples are these images), ``per_core`` the neurons per core
    of each deployed layer from ``map_to_cores``, so that both place the network alike.
    """
    check_feed_forward(student)
    if not sanafe_available():
        return {"skipped": "SANA-FE is not installed (optional extra `sanafe`); no second estimate"}
    samples = len(images)
    with tempfile.TemporaryDirectory(prefix="lasnn-sanafe-") as tmp:
        spec_path, out_path = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
        np.savez(spec_path, **_spec(student, images, per_core, timesteps, seed))
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
    ours = sum(sum(price_layer(c, profile).values())[:samples] for c in run.layers)
    theirs = result["energy_total"]
    layers = deployed_layers(student)
    direct = student.config.encoding == "direct"
    agree, total, per_layer = 0, 0, []
    for j, raster in enumerate(_our_rasters(student, images, timesteps, seed)):
        delay = j if direct else j + 1  # SANA-FE, like Loihi, adds one step per layer
        sim = result[f"spikes_{j}"]
        window = sim[:, delay : delay + timesteps]
        agree += int((window == raster).sum()) + (sim.size - window.size) - int(sim.sum() - window.sum())
        total += sim.size
        per_layer.append({"name": layers[j].name, "spikes_sanafe": float(sim.sum() / samples), "spikes_ours": float(raster.sum() / samples)})
    breakdown = {k: float(np.mean(result[f"energy_{k}"])) for k in ("synapse", "dendrite", "soma", "network")}
    return {
        "samples": samples,
        "sanafe_version": importlib.metadata.version("sanafe"),
        "architecture": "sanafe/examples/loihi.yaml (SANA-FE's Loihi model)" + (
            "" if int(result["rows"]) == 4 else
            f", mesh stretched to 8 x {int(result['rows'])} tiles: one virtual chip of {32 * int(result['rows'])} cores, "
            "so traffic between Loihi chips is priced as on-chip mesh hops (SANA-FE models no chip-to-chip links)"),
        "simulated_steps": int(result["steps"]),
        "cores": int(result["cores"]),
        "potential_scale": float(result["scale"]),
        "energy_j": float(np.mean(theirs)),
        "energy_j_std": float(np.std(theirs)),
        "breakdown_j": breakdown,
        "analytical_energy_j": float(np.mean(ours)),
        "relative_difference": float((np.mean(theirs) - np.mean(ours)) / np.mean(ours)),
        "spike_agreement": agree / total,
        "layers": per_layer,
    }
