"""Run the student on a set of images batch by batch, count its events per sample, and price them on a profile.

``energy = sum_l synops_l E_synop + macs_l E_mac + neuron_updates_l E_neuron + spikes_l E_spike``
(docs/semantics.md, 'Energy counts'), per sample, so that means and spreads over the samples come out together; plus
``bias_inputs_l E_bias`` for a layer with a bias, when the profile's bias figure is known.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from ..inputs import Batch, batches, loaded, sample_count
from ..modes import eval_mode
from ..student import SpikingStudent, Trace, check_images, deployed_layers
from .counting import LayerCounts, count_events
from .profile import Profile

CATEGORIES = ("synops", "macs", "neuron_updates", "spikes", "network")


@dataclass(frozen=True)
class CountedBatch:
    """One batch of a counted run: its images, labels and input (``inputs.Batch``), the student's
    recorded run on it, and the exact per-sample counts of every deployed layer."""

    batch: Batch
    trace: Trace
    layers: list[LayerCounts]
    input_spikes: np.ndarray | None  # [B] spikes entering layer 0 (None under direct encoding)


def counted_batches(
    student: SpikingStudent,
    images: torch.Tensor | Dataset,
    labels: torch.Tensor | None = None,
    *,
    timesteps: int,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = True,
) -> Iterator[CountedBatch]:
    """Run the student in eval mode batch by batch and count the events of every sample exactly.

    ``images`` are a tensor ``[N, C, H, W]`` (with ``labels``, optional) or a labelled ``Dataset``
    loaded one batch at a time (``inputs.loaded``), so memory holds a batch, not the data set.
    Sample ``i`` is encoded as sample ``i`` of the whole set (``inputs.batches``: Poisson seed ``seed + i``).
    A data set's batches are checked against the student as they load (``check_images``).
    """
    layers = deployed_layers(student)

    def checked() -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        for x, y in loaded(images, labels, batch_size):
            if not isinstance(images, torch.Tensor):
                check_images(student.config, x, y)
            yield x, y

    if not isinstance(images, torch.Tensor) and sample_count(images):  # a wrong shape before the progress bar
        first = images[0][0]
        check_images(student.config, first.expand(sample_count(images), *first.shape))  # a view: no copy
    with eval_mode(student), torch.no_grad():
        source = batches(student.config.encoding, timesteps, checked(), seed=seed)
        total = -(-sample_count(images) // batch_size)
        for batch in tqdm(source, total=total, desc="energy", unit="batch", disable=not progress):
            given = batch.input
            trace = student.run(given.images, input_spikes=given.spikes, timesteps=timesteps, record=True)
            spikes, entering = trace.input_spikes, None
            if spikes is not None:  # Poisson: spikes enter layer 0
                entering = spikes.double().sum(dim=tuple(d for d in range(spikes.dim()) if d != 1)).numpy()
            yield CountedBatch(batch, trace, count_events(layers, trace, timesteps), entering)


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
