"""Messages, mesh hops, neuron activity and time per step of one student run on a placed network.

Counted exactly from the recorded spikes, per sample, on a ``placement.Placement``:

- ``messages``: a spike sends one message to every core that holds at least one of its synapses
  (its axon's destination cores: the next layer's cores its receptive fields touch, plus those of
  every shortcut that reads it); each message crosses ``hops_ew`` east-west and ``hops_ns``
  north-south hops, and ``interchip`` counts the messages whose two cores sit on different chips;
- ``accesses``: every neuron of a layer at every step the chip runs per sample, ``S = T + depth``
  (Poisson input, which enters through one more hop) or ``T + depth - 1`` (direct), since each
  layer adds a step of latency (``lag``: layer j integrates its inputs from step ``lag_j`` on);
- ``updates``: neuron-steps whose neuron has a non-zero input, a non-zero bias (the layer's own, on
  during the T steps its inputs arrive, as our SANA-FE runner sets it; under direct encoding the
  host-computed first-layer current, zero where the image is blank) or a non-zero potential left
  from the step before (set by any input, cleared by a hard reset when it fires), as Loihi and
  SANA-FE skip the update of a resting neuron. A potential that inputs bring back to exactly zero
  is not seen (rare in float; weights on a coarse grid make it common).

Time per step, from a profile's per-event latencies (SANA-FE's "simple" model): each core spends
``neurons x t_access + updates x t_update + spikes x t_spike + messages sent x t_out`` on its
neurons and ``messages in x t_in + synaptic events x t_synop`` on its messages; a step lasts as long
as the busiest core's larger share, plus the barrier synchronisation for the tiles in use.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from ..student import DeployedLayer, Trace
from .counting import is_identity
from .placement import Group, Placement
from .profile import Profile

DENSE_LIMIT = 2**24  # axon maps up to this many entries (64 MB in float32) are kept dense


@dataclass
class Link:
    """Synapses from one population (``source``: -1 input, else a deployed layer index) into a layer's cores."""

    source: int
    axons: sp.csr_matrix  # [N_source, cores of the layer] True where the spike needs a message to that core
    messages: np.ndarray  # [N_source] messages per spike
    hops_ew: np.ndarray
    hops_ns: np.ndarray
    interchip: np.ndarray
    kernel: tuple[str, int, int, int]  # ("dense"|"conv"|"depthwise", k, stride, padding) of the synapse pattern
    src_shape: tuple[int, ...]  # the source's spikes as the synapses read them
    dense: torch.Tensor | None = None  # float32 copy of ``axons`` when small enough for a dense matmul


def _cover(group: Group, out_shape: tuple[int, ...]) -> np.ndarray:
    """[cores, C, H*W] bool: which output neurons each core of the group holds."""
    n = int(np.prod(out_shape))
    c, hw = out_shape[0], n // out_shape[0]
    cover = np.zeros((group.cores, c, hw), dtype=bool)
    idx = np.arange(n)
    cover[idx // group.per_core, idx // hw, idx % hw] = True
    return cover


def _touched(
    cover: np.ndarray, in_shape: tuple[int, ...], out_hw: tuple[int, ...], k: int, s: int, p: int, depthwise: bool
) -> np.ndarray:
    """[cores, C_in, H, W] bool: inputs read by each core's neurons through a conv (all channels, or
    the own channel only when ``depthwise``), found with a transposed conv of the cover by ones."""
    c_in, h, w = in_shape
    planes = cover if depthwise else cover.any(axis=1, keepdims=True)
    x = torch.from_numpy(planes.reshape(planes.shape[0], planes.shape[1], *out_hw).astype(np.float32))
    t = F.conv_transpose2d(x, torch.ones(x.shape[1], 1, k, k), stride=s, padding=p, groups=x.shape[1])
    t = F.pad(t, (0, max(0, w - t.shape[-1]), 0, max(0, h - t.shape[-2])))[..., :h, :w] > 0
    return t.expand(-1, c_in, -1, -1).numpy() if not depthwise else t.numpy()


def make_link(
    source: int,
    src: Group,
    src_shape: tuple[int, ...],
    dst: Group,
    layer: DeployedLayer,
    placement: Placement,
    shortcut: bool = False,
) -> Link:
    """The axons of ``src``'s neurons into ``dst``'s cores, with messages and hops per spike."""
    n_src = int(np.prod(src_shape))
    if shortcut:
        sc = layer.shortcut
        assert sc is not None, "a shortcut link is made for a layer with a shortcut"
        k, s, p, depthwise = sc.weight.shape[-1], sc.stride, 0, is_identity(sc)
        kind = "depthwise" if depthwise else "conv"
    elif layer.convolutional:
        k, s, p, depthwise, kind = layer.weight.shape[-1], layer.stride, layer.padding, False, "conv"
    else:
        k, s, p, depthwise, kind = 0, 1, 0, False, "dense"
    if kind == "dense":
        axons = sp.csr_matrix(np.ones((n_src, dst.cores), dtype=bool))
    else:
        touched = _touched(_cover(dst, layer.out_shape), src_shape, tuple(layer.out_shape[1:]), k, s, p, depthwise)
        axons = sp.csr_matrix(touched.reshape(dst.cores, n_src).T)
    rows, cols = axons.nonzero()
    xs, ys, cs = placement.site(src.core_of(rows))
    xd, yd, cd = placement.site(dst.first + cols)
    per = lambda v: np.bincount(rows, weights=v.astype(np.float64), minlength=n_src)  # noqa: E731
    dense = torch.from_numpy(axons.toarray().astype(np.float32)) if n_src * dst.cores <= DENSE_LIMIT else None
    return Link(
        source,
        axons,
        per(np.ones(len(rows))),
        per(np.abs(xs - xd)),
        per(np.abs(ys - yd)),
        per(cs != cd),
        (kind, k, s, p),
        tuple(src_shape),
        dense,
    )


def _events_per_neuron(spikes: torch.Tensor, link: Link, out_shape: tuple[int, ...]) -> torch.Tensor:
    """Synaptic events into every neuron of the layer per step: ``[T, B, N_out]`` from spikes ``[T, B, N_src]``."""
    T, B = spikes.shape[:2]
    kind, k, s, p = link.kernel
    src_shape = link.src_shape
    n_out = int(np.prod(out_shape))
    if kind == "dense":
        return spikes.sum(-1, keepdim=True).expand(T, B, n_out)
    x = spikes.reshape(T * B, *src_shape)
    if kind == "depthwise":
        y = F.conv2d(x, torch.ones(src_shape[0], 1, k, k, dtype=x.dtype), stride=s, padding=p, groups=src_shape[0])
    else:
        y = F.conv2d(x, torch.ones(1, src_shape[0], k, k, dtype=x.dtype), stride=s, padding=p)
        y = y.expand(-1, out_shape[0], -1, -1)
    return y.reshape(T, B, n_out)


def _messages_in(spikes: torch.Tensor, link: Link) -> np.ndarray:
    """Messages each destination core receives per row of ``spikes`` ``[R, N_src]``: ``[R, cores]``.

    Counts are small integers, exact in float32; a dense matmul when the axon map is small enough."""
    if link.dense is not None:
        return (spikes @ link.dense).double().numpy()
    return np.asarray(link.axons.T.dot(spikes.double().numpy().T).T)


def _per_core(values: torch.Tensor, group: Group) -> torch.Tensor:
    """``[T, B, N]`` -> ``[T, B, cores]`` sums over each core's neurons."""
    pad = group.cores * group.per_core - values.shape[-1]
    return F.pad(values, (0, pad)).reshape(*values.shape[:2], group.cores, group.per_core).sum(-1)


KEYS = ("messages", "hops_ew", "hops_ns", "interchip", "updates")  # per-sample counts of a layer, in count()'s result


class TrafficCounter:
    """Counts messages, hops and neuron activity (and, with latencies, the time of every step) of one batch at a time."""

    def __init__(
        self,
        layers: list[DeployedLayer],
        placement: Placement,
        timesteps: int,
        direct: bool,
        hard_reset: bool,
        latency_profile: Profile | None = None,
        first_current: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        self.layers, self.placement, self.T, self.direct, self.hard = layers, placement, timesteps, direct, hard_reset
        self.depth = len(layers)
        self.steps = timesteps + self.depth - (1 if direct else 0)
        self.lag = [j if direct else j + 1 for j in range(self.depth)]
        self.links: list[list[Link]] = []
        for j, layer in enumerate(layers):
            links = []
            if j > 0 or not direct:
                src = placement.input if j == 0 else placement.layers[j - 1]
                assert src is not None, "Poisson input: the placement holds its generators"
                links.append(make_link(j - 1, src, layer.in_shape, placement.layers[j], layer, placement))
            if layer.shortcut is not None:
                s = layer.shortcut.producer
                links.append(
                    make_link(
                        s, placement.layers[s], layer.shortcut.in_shape, placement.layers[j], layer, placement, True
                    )
                )
            self.links.append(links)
        # messages each neuron of a population sends per spike, over all the layers that read it
        self.sent: dict[int, float | np.ndarray] = {-1: 0.0, **{j: 0.0 for j in range(self.depth)}}
        for links in self.links:
            for link in links:
                self.sent[link.source] = self.sent[link.source] + link.messages
        self.latency = latency_profile
        self.first_current = first_current  # direct encoding: images -> layer 0's bias; None: every bias non-zero

    def accesses(self, j: int) -> float:
        """Neuron accesses of deployed layer ``j`` per sample: every neuron at every step the chip runs."""
        return float(self.placement.layers[j].neurons * self.steps)

    def count(self, trace: Trace, images: torch.Tensor | None = None) -> dict[str, Any]:
        """The counts of one batch (``student.run(..., record=True)``) of ``images``, per sample: ``layers``,
        one dict per deployed layer of ``KEYS`` arrays ``[B]`` and its ``accesses``, and, with latencies,
        ``inference_s`` ``[B]`` (the time of every step, summed)."""
        B = trace.logits.shape[0]
        T = self.T
        pops: dict[int, torch.Tensor] = {}
        if not self.direct:
            assert trace.input_spikes is not None, "a Poisson run records its input spikes"
            pops[-1] = trace.input_spikes.detach().float().reshape(T, B, -1)
        for j, layer in enumerate(self.layers):
            n = int(np.prod(layer.out_shape))
            pops[j] = (
                trace.spikes[layer.lif].detach().float().reshape(T, B, n)
                if layer.lif is not None
                else torch.zeros(T, B, n)
            )
        lat = self.latency.latency if self.latency is not None else None
        barrier = self.latency.barrier if self.latency is not None else None
        S = self.steps
        neuron_max, message_max = np.zeros((S, B)), np.zeros((S, B))
        if lat is not None and not self.direct:  # input generators: only their messages take time
            generators = self.placement.input
            assert generators is not None, "Poisson input: the placement holds its generators"
            per_spike = torch.from_numpy(np.asarray(self.sent[-1], dtype=np.float32))
            sent = _per_core(pops[-1] * per_spike, generators).double()
            neuron_max[:T] = np.maximum(neuron_max[:T], (sent * lat["message_out"].value).amax(-1).numpy())
        layers: list[dict[str, Any]] = []
        for j, layer in enumerate(self.layers):
            group = self.placement.layers[j]
            n = group.neurons
            events = torch.zeros(T, B, n)
            msgs_in = np.zeros((T * B, group.cores))
            totals = {"messages": 0.0, "hops_ew": 0.0, "hops_ns": 0.0, "interchip": 0.0}
            for link in self.links[j]:
                spikes = pops[link.source]
                events = events + _events_per_neuron(spikes, link, tuple(layer.out_shape))
                per_neuron = spikes.sum(0).double().numpy()  # [B, N_src]
                for key in totals:
                    totals[key] = totals[key] + per_neuron @ getattr(link, key)
                msgs_in = msgs_in + _messages_in(spikes.reshape(T * B, -1), link)
            counts = {key: np.broadcast_to(value, (B,)).astype(np.float64) for key, value in totals.items()}
            received = events > 0
            if self.direct and j == 0:  # the host-computed current (its bias included) is a bias at every step
                bias = (
                    torch.ones(B, n, dtype=torch.bool)
                    if self.first_current is None or images is None
                    else (self.first_current(images).reshape(B, n) != 0)
                )
                received = bias.unsqueeze(0).expand(T, B, n)
            elif layer.bias is not None:  # a layer's own bias is on during the T steps of its inputs
                shaped = layer.bias.reshape(-1, *([1] * (len(layer.out_shape) - 1)))
                per_neuron = np.broadcast_to(shaped, layer.out_shape)
                received = received | torch.from_numpy(per_neuron.reshape(-1) != 0)
            fired = pops[j] > 0
            nonzero = torch.zeros(B, n, dtype=torch.bool)
            updated = torch.zeros(T, B, n, dtype=torch.bool)
            for t in range(T):
                updated[t] = nonzero | received[t]
                nonzero = updated[t] & ~fired[t] if self.hard else updated[t]
            tail = S - self.lag[j] - T
            counts["updates"] = updated.sum(dim=(0, 2)).double().numpy() + tail * nonzero.sum(1).double().numpy()
            layers.append({**counts, "accesses": self.accesses(j)})
            if lat is None:
                continue
            occupancy = _per_core(torch.ones(1, 1, n), group)[0, 0].double()  # neurons per core
            upd_c = _per_core(updated.float(), group).double()
            per_spike = torch.from_numpy((np.asarray(self.sent[j]) * np.ones(n)).astype(np.float32))
            sent_c = _per_core(pops[j] * per_spike, group).double()
            spk_c = _per_core(pops[j], group).double()
            work = (
                occupancy * lat["neuron"].value
                + upd_c * lat["neuron_update"].value
                + spk_c * lat["spike"].value
                + sent_c * lat["message_out"].value
            )
            a = self.lag[j]
            neuron_max[a : a + T] = np.maximum(neuron_max[a : a + T], work.amax(-1).numpy())
            neuron_max[:a] = np.maximum(neuron_max[:a], float(occupancy.max()) * lat["neuron"].value)
            end = _per_core(nonzero.float()[None], group)[0].double()  # [B, cores]
            idle = (occupancy * lat["neuron"].value + end * lat["neuron_update"].value).amax(-1).numpy()
            neuron_max[a + T :] = np.maximum(neuron_max[a + T :], idle[None, :])
            if self.links[j]:
                synop = lat["synop_conv" if layer.convolutional else "synop"].value
                msg_work = (
                    msgs_in.reshape(T, B, -1) * lat["message_in"].value
                    + _per_core(events, group).double().numpy() * synop
                )
                message_max[a - 1 : a - 1 + T] = np.maximum(message_max[a - 1 : a - 1 + T], msg_work.max(-1))
        out: dict[str, Any] = {"layers": layers}
        if lat is not None:
            assert barrier is not None, "a profile's latency table holds its barrier"
            step_times = np.maximum(neuron_max, message_max) + barrier.at(self.placement.tiles)  # [S, B]
            out["inference_s"] = np.ascontiguousarray(step_times.T).sum(1)  # each sample's row: one order, any batch
        return out
