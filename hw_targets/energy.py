"""Run the student on a set of images, count its events per sample, and price them on a profile.

``energy = sum_l synops_l E_synop + macs_l E_mac + neuron_updates_l E_neuron + spikes_l E_spike``
(docs/semantics.md, 'Energy counts'), per sample, so that means and spreads over the samples come out together; plus
``bias_inputs_l E_bias`` for a layer with a bias, when the profile's bias figure is known.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from ..inputs import batches
from ..modes import eval_mode
from ..neurons import Encoding
from ..student import SpikingStudent, Trace, deployed_layers
from .counting import LayerCounts, concat_counts, count_events
from .profile import Profile

CATEGORIES = ("synops", "macs", "neuron_updates", "spikes", "network")


@dataclass
class StudentRun:
    """Per-sample event counts of every deployed layer, and what else one pass over the images gave."""

    layers: list[LayerCounts]
    timesteps: int
    encoding: str
    predictions: np.ndarray  # [N] predicted classes
    input_spikes: np.ndarray | None  # [N] spikes entering layer 0 (None under direct encoding)


@torch.no_grad()
def run_and_count(
    student: SpikingStudent,
    images: torch.Tensor,
    *,
    timesteps: int,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = True,
    observers: Sequence[Callable[[Trace, torch.Tensor], None]] = (),
) -> StudentRun:
    """Run the student in eval mode, in batches, and count the events of every sample exactly.

    Each observer (e.g. ``traffic.TrafficCounter.add``) also sees every batch's trace and images."""
    layers = deployed_layers(student)
    poisson = student.config.encoding == Encoding.POISSON
    parts, predictions, entering = [], [], []
    with eval_mode(student):
        source = batches(student.config.encoding, timesteps, images.split(batch_size), seed=seed)
        for batch in tqdm(
            source, total=-(-len(images) // batch_size), desc="energy", unit="batch", disable=not progress
        ):
            given, x = batch.input, batch.images
            trace = student.run(given.images, input_spikes=given.spikes, timesteps=timesteps, record=True)
            if poisson:
                entering.append(
                    trace.input_spikes.double()
                    .sum(dim=tuple(d for d in range(trace.input_spikes.dim()) if d != 1))
                    .numpy()
                )
            parts.append(count_events(layers, trace, timesteps))
            for observe in observers:
                observe(trace, x)
            predictions.append(trace.logits.argmax(1).cpu().numpy())
    return StudentRun(
        concat_counts(parts),
        timesteps,
        student.config.encoding,
        np.concatenate(predictions),
        np.concatenate(entering) if poisson else None,
    )


@torch.no_grad()
def first_layer_current(student: SpikingStudent, images: torch.Tensor) -> torch.Tensor:
    """The host-computed input current of deployed layer 0 (direct encoding), computed by the
    student's own modules in its own precision: what drives the first layer as a bias."""
    h = images.to(student.leak.dtype)
    for module in list(student.body)[: deployed_layers(student)[0].source + 1]:
        h = module(h)  # pools, flatten, dropout (eval: identity) and the first Conv/Linear
    return h.flatten(1)


def price_layer(
    counts: LayerCounts, profile: Profile, traffic: dict[str, np.ndarray] | None = None
) -> dict[str, np.ndarray]:
    """Per-sample energy of one layer in joules, by event category.

    Without ``traffic`` (a profile with no mesh): ``neuron_updates`` is neurons x T x E_neuron and
    ``network`` is 0. With a layer's ``traffic.TrafficCounter`` counts: ``neuron_updates`` is
    accesses x E_neuron + updates x E_neuron_update, ``network`` the messages carrying spikes into
    the layer x E_message plus their hops x E_hop. A conv layer's events cost ``synop_conv`` when
    the profile gives it. ``bias_inputs`` appears only for a layer with a bias on a profile whose
    bias figure is known; with an unknown figure the term is left out (the report says so).
    """
    synop = profile.e("synop_conv") if counts.convolutional else profile.e_synop
    n = len(counts.spikes)
    if traffic is None:
        neuron, network = np.full(n, counts.neuron_updates * profile.e_neuron), np.zeros(n)
    else:
        neuron = traffic["accesses"] * profile.e_neuron + traffic["updates"] * profile.e("neuron_update")
        network = (
            traffic["messages"] * profile.e("message")
            + traffic["hops_ew"] * profile.e("hop_ew")
            + traffic["hops_ns"] * profile.e("hop_ns")
        )
    priced = {
        "synops": counts.synops * synop,
        "macs": counts.macs * profile.e_mac,
        "neuron_updates": np.broadcast_to(neuron, (n,)).astype(np.float64),
        "spikes": counts.spikes * profile.e_spike,
        "network": np.broadcast_to(network, (n,)).astype(np.float64),
    }
    if counts.bias_inputs and profile.bias_known:
        priced["bias_inputs"] = np.full(len(counts.spikes), counts.bias_inputs * profile.e_bias)
    return priced
