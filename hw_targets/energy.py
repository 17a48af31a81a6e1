"""Run the student on a set of images, count its events per sample, and price them on a profile.

``energy = sum_l synops_l E_synop + macs_l E_mac + neuron_updates_l E_neuron + spikes_l E_spike``
(SPEC section 4), per sample, so that means and spreads over the samples come out together; plus
``bias_inputs_l E_bias`` for a layer with a bias, when the profile's bias figure is known.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from ..inputs import model_input
from ..student import SpikingStudent, deployed_layers
from .counting import LayerCounts, concat_counts, count_events
from .profile import Profile

CATEGORIES = ("synops", "macs", "neuron_updates", "spikes")


@dataclass
class StudentRun:
    """Per-sample event counts of every deployed layer, and what else one pass over the images gave."""

    layers: list[LayerCounts]
    timesteps: int
    encoding: str
    predictions: np.ndarray  # [N] predicted classes
    input_spikes: np.ndarray | None  # [N] spikes entering layer 0 (None under direct encoding)


@torch.no_grad()
def run_and_count(student: SpikingStudent, images: torch.Tensor, *, timesteps: int, seed: int = 0, batch_size: int = 64, progress: bool = True) -> StudentRun:
    """Run the student in eval mode, in batches, and count the events of every sample exactly."""
    layers = deployed_layers(student)
    poisson = student.config.encoding == "poisson"
    parts, predictions, entering = [], [], []
    was_training = student.training
    student.eval()
    try:
        for start in tqdm(range(0, len(images), batch_size), desc="energy", unit="batch", disable=not progress):
            given = model_input(student.config.encoding, timesteps, images[start : start + batch_size], seed=seed,
                                first_index=start)
            trace = student.run(given.images, input_spikes=given.spikes, timesteps=timesteps, record=True)
            if poisson:
                entering.append(trace.input_spikes.double().sum(dim=tuple(d for d in range(trace.input_spikes.dim()) if d != 1)).numpy())
            parts.append(count_events(layers, trace, timesteps))
            predictions.append(trace.logits.argmax(1).cpu().numpy())
    finally:
        student.train(was_training)
    return StudentRun(concat_counts(parts), timesteps, student.config.encoding, np.concatenate(predictions), np.concatenate(entering) if poisson else None)


def price_layer(counts: LayerCounts, profile: Profile) -> dict[str, np.ndarray]:
    """Per-sample energy of one layer in joules, by event category.

    ``bias_inputs`` appears only for a layer with a bias on a profile whose bias figure is known;
    with an unknown figure the term is left out (the report says so) rather than guessed.
    """
    priced = {
        "synops": counts.synops * profile.e_synop,
        "macs": counts.macs * profile.e_mac,
        "neuron_updates": np.full(len(counts.spikes), counts.neuron_updates * profile.e_neuron),
        "spikes": counts.spikes * profile.e_spike,
    }
    if counts.bias_inputs and profile.bias_known:
        priced["bias_inputs"] = np.full(len(counts.spikes), counts.bias_inputs * profile.e_bias)
    return priced
