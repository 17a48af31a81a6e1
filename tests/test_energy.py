"""Energy and deployability (docs/semantics.md, 'Energy counts' and 'Files the commands write'): exact counts on hand-fixed spikes, profile
files, core mapping, the report files, and SANA-FE in its own process."""

from __future__ import annotations

import json
import math
import re
import sys
import tomllib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import make_student, small_resnet
from lasnn_deploy.hw_targets.constraints import map_to_cores
from lasnn_deploy.hw_targets.counting import ann_macs, conv_reach, count_events
from lasnn_deploy.hw_targets.energy import price_layer
from lasnn_deploy.hw_targets.placement import place
from lasnn_deploy.hw_targets.profile import PROFILE_DIR, list_profiles, load_profile
from lasnn_deploy.hw_targets.report import energy_report, traffic_counter
from lasnn_deploy.hw_targets.sanafe_compare import compare_with_sanafe, sanafe_available
from lasnn_deploy.hw_targets.traffic import TrafficCounter

from lasnn_deploy.errors import UserError
from lasnn_deploy.neurons import poisson_spikes
from lasnn_deploy.student import (
    AvgPool,
    Conv,
    Flatten,
    Linear,
    Shortcut,
    SpikingStudent,
    StudentConfig,
    Trace,
    deployed_layers,
    save_student,
)

SPEC_KEYS = {"hardware", "timesteps", "samples", "layers", "total_energy_j", "ann_macs", "ann_energy_j", "profile"}
LAYER_KEYS = {"name", "neurons", "spikes", "firing_rate", "synops", "macs", "neuron_updates", "energy_j"}


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-30)


# -- independent references: the contract's own formulas, computed with torch convolutions ------------
def ref_synops(spikes: torch.Tensor, conv: Conv | None, pool: int, out_features: int | None = None) -> np.ndarray:
    """Synops per sample of spikes ``[T, B, ...]`` entering a layer: conv(spikes, all-ones kernel of
    the folded shape) summed over time, outputs and channels; or spikes x out_features."""
    s = spikes.double()
    if conv is None:
        return (s.sum(dim=(0, *range(2, s.dim()))) * out_features).numpy()
    ones = torch.ones(
        conv.out_channels, conv.in_channels, conv.kernel_size * pool, conv.kernel_size * pool, dtype=torch.float64
    )
    out = torch.stack(
        [F.conv2d(s[t], ones, stride=conv.stride * pool, padding=conv.padding * pool) for t in range(s.shape[0])]
    )
    return out.sum(dim=(0, 2, 3, 4)).numpy()


def ref_dense_macs(conv: Conv, in_shape: tuple[int, int, int]) -> int:
    ones = torch.ones(conv.out_channels, conv.in_channels, conv.kernel_size, conv.kernel_size, dtype=torch.float64)
    return int(
        F.conv2d(torch.ones(1, *in_shape, dtype=torch.float64), ones, stride=conv.stride, padding=conv.padding).sum()
    )


def ref_energy(spikes, synops, macs, updates, profile) -> float:
    return synops * profile.e_synop + macs * profile.e_mac + updates * profile.e_neuron + spikes * profile.e_spike


# -- counting ------------------------------------------------------------------------------------
def test_reach_by_hand_at_borders():
    reach = conv_reach((1, 4, 4), (2, 4, 4), kernel=3, stride=1, padding=1)[0]
    assert reach[0, 0] == 2 * 4 and reach[0, 1] == 2 * 6 and reach[1, 1] == 2 * 9 and reach[3, 3] == 2 * 4
    # AvgPool(2) then Conv(3, pad 1) on 8x8 == folded Conv(6, stride 2, pad 2): pixel (0, 0) feeds
    # pooled cell (0, 0), which reaches 2 x 2 outputs per channel.
    folded = conv_reach((1, 8, 8), (3, 4, 4), kernel=6, stride=2, padding=2)[0]
    assert folded[0, 0] == 3 * 4 and folded[3, 3] == 3 * 9 and folded[7, 7] == 3 * 4


def test_hand_fixed_spikes_give_exact_counts_and_energy():
    """conv (padded) -> pool -> conv -> pool -> flatten -> linear -> linear on spikes set by hand."""
    student = make_student("poisson", timesteps=3)
    cfg, layers = student.config, deployed_layers(student)
    T, B = 3, 2
    x_in = torch.zeros(T, B, 1, 8, 8)
    x_in[0, 0, 0, 0, 0] = 1  # corner
    x_in[1, 0, 0, 0, 5] = 1  # edge
    x_in[2, 1, 0, 4, 4] = 1  # interior
    s1 = torch.zeros(T, B, 4, 8, 8)
    s1[:, 0, 1, 0, 0] = 1  # corner spike at every step, sample 0
    s1[1, 1, 3, 7, 2] = 1
    s1[2, 1, 0, 3, 3] = 1
    s2 = torch.zeros(T, B, 6, 4, 4)
    s2[0, 0, 5, 3, 3] = 1
    s2[0, 1, :, 1, 2] = 1
    s3 = torch.zeros(T, B, 12)
    s3[1, 0, :4] = 1
    s3[2, 1, 11] = 1
    trace = Trace(logits=torch.zeros(B, 5), spikes=[s1, s2, s3], input_spikes=x_in)
    counts = count_events(layers, trace, T)

    conv_a, conv_b = cfg.layers[0], cfg.layers[3]
    # Spikes by hand: the input spikes above reach 4*4, 4*6 and 4*9 synapses of conv_a (4 channels).
    assert np.array_equal(ref_synops(x_in, conv_a, 1), [4 * 4 + 4 * 6, 4 * 9])
    want_synops = [
        ref_synops(x_in, conv_a, 1),
        ref_synops(s1, conv_b, 2),
        ref_synops(s2, None, 2, 12),
        ref_synops(s3, None, 1, 5),
    ]
    want_spikes = [[3, 2], [1, 6], [4, 1], [0, 0]]
    neurons = [4 * 64, 6 * 16, 12, 5]
    profile = load_profile("loihi")
    for c, synops, spikes, n in zip(counts, want_synops, want_spikes, neurons, strict=True):
        assert c.neurons == n and c.neuron_updates == n * T
        assert np.array_equal(c.synops, synops) and np.array_equal(c.spikes, spikes) and not c.macs.any()
        assert np.allclose(c.firing_rate, np.array(spikes) / (n * T), rtol=1e-12)
        for b in range(B):
            got = sum(v[b] for v in price_layer(c, profile).values())
            assert close(got, ref_energy(spikes[b], synops[b], 0, n * T, profile))
    # The pooled conv reads 2x2 blocks: a spike at (0, 0) of the unpooled map reaches 6 x 4 synapses.
    assert ref_synops(s1[:1, :1], conv_b, 2)[0] == 6 * 4


def test_direct_encoding_counts_first_layer_as_macs_once():
    student = make_student("direct", timesteps=5)
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        trace = student.run(x, record=True)
    counts = count_events(deployed_layers(student), trace, 5)
    macs = ref_dense_macs(student.config.layers[0], (1, 8, 8))
    assert macs == 4 * (36 * 9 + 24 * 6 + 4 * 4)  # 8x8 map: 36 interior x 9 taps, 24 edge x 6, 4 corners x 4
    assert np.array_equal(counts[0].macs, [macs] * 3) and not counts[0].synops.any()
    assert np.array_equal(counts[1].synops, ref_synops(trace.spikes[0], student.config.layers[3], 2))
    assert all(not c.macs.any() for c in counts[1:])


def test_ann_macs_on_the_pooled_graph():
    cfg = make_student().config
    got = ann_macs(cfg)
    assert got == {
        0: ref_dense_macs(cfg.layers[0], (1, 8, 8)),
        3: ref_dense_macs(cfg.layers[3], (4, 4, 4)),
        6: 24 * 12,
        7: 12 * 5,
    }


def tiny_resnet() -> SpikingStudent:
    """Two residual blocks on 1x4x4: an identity shortcut behind a pool, then a 1x1 stride-2 projection.

    LIF populations A..F: A conv0 [2,4,4], B conv2 [2,2,2] (pool folded), C conv3 + identity from
    pool(A) [2,2,2], D conv5 [3,2,2], E conv6 [4,1,1], F conv7 + projection from D [4,1,1].
    """
    layers = (
        Conv(1, 2, 3, 1, 1),
        AvgPool(2),
        Conv(2, 2, 3, 1, 1),
        Conv(2, 2, 3, 1, 1),
        Shortcut(1, 2, 2),
        Conv(2, 3, 1),
        Conv(3, 4, 3, 2, 1),
        Conv(4, 4, 1),
        Shortcut(5, 3, 4, 2),
        Flatten(),
        Linear(4, 2),
    )
    cfg = StudentConfig("tiny-resnet", (1, 4, 4), 2, layers, timesteps=2, encoding="poisson")
    return SpikingStudent(cfg).eval()


def test_residual_hand_fixed_spikes_give_exact_counts():
    """A shortcut's synapses count in the layer it feeds: identity 1 per spike, projection C_out per spike."""
    student = tiny_resnet()
    layers = deployed_layers(student)
    assert [d.name for d in layers] == ["conv0", "conv2", "conv3", "conv5", "conv6", "conv7", "linear10"]
    assert [None if d.shortcut is None else d.shortcut.producer for d in layers] == [None, None, 0, None, None, 3, None]
    T, B = 2, 2
    x_in = torch.zeros(T, B, 1, 4, 4)
    x_in[0, 0, 0, 0, 0] = x_in[1, 0, 0, 1, 1] = 1  # corner (2 x 4 synapses) and interior (2 x 9)
    x_in[0, 1, 0, 0, 2] = 1  # edge (2 x 6)
    a = torch.zeros(T, B, 2, 4, 4)
    a[0, 0, 0, 0, 0] = a[1, 0, 1, 3, 3] = a[0, 0, 1, 1, 2] = 1  # 3 spikes
    a[1, 1, 0] = 1  # 16 spikes
    b = torch.zeros(T, B, 2, 2, 2)
    b[0, 0, 1, 1, 0] = 1
    b[1, 1, 0] = 1
    b[0, 1, 1, 0, 0] = 1
    c = torch.zeros(T, B, 2, 2, 2)
    c[:, 0, 0, 0, 1] = 1
    d = torch.zeros(T, B, 3, 2, 2)
    d[0, 0, 0, 0, 0] = d[1, 0, 2, 0, 0] = d[0, 0, 1, 1, 1] = 1  # 2 of 3 at (0, 0), where the stride-2 1x1 reads
    d[0, 1] = 1  # 12 spikes, 3 at (0, 0)
    e = torch.zeros(T, B, 4, 1, 1)
    e[0, 0, :2] = 1
    e[1, 1, 3] = 1
    f = torch.zeros(T, B, 4, 1, 1)
    f[:, 0, 1:3] = 1
    trace = Trace(logits=torch.zeros(B, 2), spikes=[a, b, c, d, e, f], input_spikes=x_in)
    counts = count_events(layers, trace, T)

    # By hand. conv0: 8 + 18 and 12. conv2 (pool folded): every A spike lands in a pooled cell read
    # by all 2x2 outputs of both channels (8). conv3: a B spike reaches all 2x2 outputs x 2 channels
    # (8), and each A spike 1 synapse through the identity (2x2 pool window, own channel). conv5:
    # 1x1 to 3 channels. conv6: 3x3 stride 2 on 2x2 -> 1x1 reaches 4 channels from anywhere.
    # conv7: 1x1 from E to 4 channels, and 4 per D spike at (0, 0) through the projection.
    shortcut = [None, None, [3, 16], None, None, [4 * 2, 4 * 3], None]
    synops = [
        [26, 12],
        [8 * 3, 8 * 16],
        [8 * 1 + 3, 8 * 5 + 16],
        [3 * 2, 0],
        [4 * 3, 4 * 12],
        [4 * 2 + 8, 4 * 1 + 12],
        [2 * 4, 0],
    ]
    spikes = [[3, 16], [1, 5], [2, 0], [3, 12], [2, 1], [4, 0], [0, 0]]
    for count, want_shortcut, want_synops, want_spikes in zip(counts, shortcut, synops, spikes, strict=True):
        assert np.array_equal(count.synops, want_synops), count.name
        assert np.array_equal(count.spikes, want_spikes), count.name
        assert (count.shortcut_synops is None) == (want_shortcut is None), count.name
        if want_shortcut is not None:
            assert np.array_equal(count.shortcut_synops, want_shortcut), count.name
    # Fan-out: population A's spikes reach 8 synapses of conv2 and 1 of conv3's shortcut each.
    assert np.array_equal(counts[1].synops + counts[2].shortcut_synops, [9 * 3, 9 * 16])
    profile = load_profile("loihi")
    got = sum(price_layer(counts[5], profile).values())
    assert all(close(got[i], ref_energy(spikes[5][i], synops[5][i], 0, 4 * T, profile)) for i in range(B))


def test_residual_core_mapping_counts_the_shortcut_axon_group(tmp_path):
    limits = load_profile(_write(tmp_path, GOOD + TINY_LIMITS)).limits
    d = map_to_cores(deployed_layers(tiny_resnet()), limits, weight_bits=8, direct_encoding=False)
    # conv3's neuron (c, y, x) reads all of B ([2,2,2], 8) and its own channel's 2x2 window of A.
    conv3 = [
        {("B", i) for i in range(8)} | {("A", ch, 2 * y + dy, 2 * x + dx) for dy in (0, 1) for dx in (0, 1)}
        for ch in range(2)
        for y in range(2)
        for x in range(2)
    ]
    # conv7's neuron reads all of E ([4,1,1]) and D's 3 channels at (0, 0).
    conv7 = [{("E", i) for i in range(4)} | {("D", ch) for ch in range(3)} for _ in range(4)]
    for m, fields in ((d.layers[2], conv3), (d.layers[5], conv7)):
        n = m.neurons_per_core
        assert m.synapses == sum(map(len, fields)) and m.max_fan_in == max(map(len, fields)), m.name
        assert _chunks_fit(fields, n, 256, 12, 8) and (
            n == len(fields) or not _chunks_fit(fields, n + 1, 256, 12, 8)
        ), m.name
    # By hand: conv3 has 8 + 4 = 12 synapses per neuron; two neighbours would fit 24 of 32 bytes but
    # read 8 + 8 = 16 axons, beyond 12. conv7: 4 + 3 per neuron, all four in one core.
    assert (d.layers[2].neurons_per_core, d.layers[2].limited_by, d.layers[2].cores) == (1, "input axons", 8)
    assert (d.layers[5].synapses, d.layers[5].neurons_per_core, d.layers[5].cores) == (28, 4, 1)
    assert d.violations == ["conv2: fan-in 32 exceeds 12 input axons per core"]  # the folded pool: 2 x 4x4 inputs


def test_residual_ann_macs_count_projections_with_their_block():
    cfg = tiny_resnet().config
    # conv7: 1x1 4 -> 4 on 1x1, plus the projection 3 -> 4 reading one position; the identity costs none.
    assert ann_macs(cfg) == {
        0: ref_dense_macs(cfg.layers[0], (1, 4, 4)),
        2: ref_dense_macs(cfg.layers[2], (2, 2, 2)),
        3: ref_dense_macs(cfg.layers[3], (2, 2, 2)),
        5: 2 * 3 * 4,
        6: 3 * 4 * 4,
        7: 4 * 4 + 3 * 4,
        10: 4 * 2,
    }


def _ones_shortcut(spikes: torch.Tensor, weight: np.ndarray, stride: int) -> np.ndarray:
    """Independent shortcut synops: spikes through the shortcut's connectivity (non-zero channel pairs)."""
    ones = torch.from_numpy((np.abs(weight).sum(axis=(2, 3), keepdims=True) != 0) * np.ones_like(weight))
    s = spikes.double()
    return torch.stack([F.conv2d(s[t], ones, stride=stride) for t in range(len(s))]).sum(dim=(0, 2, 3, 4)).numpy()


def test_report_on_a_resnet_student(tmp_path):
    student = small_resnet().float()
    x = torch.rand(3, 1, 8, 8)
    result = energy_report(student, x, torch.arange(3), hw="loihi", out_dir=tmp_path, batch_size=2, progress=False)
    with torch.no_grad():
        trace = student.run(x, record=True)
    layers = deployed_layers(student)
    for j, (d, got) in enumerate(zip(layers, result["layers"], strict=True)):
        if d.shortcut is None:
            assert "shortcut_synops" not in got
            continue
        sc = d.shortcut
        want = _ones_shortcut(trace.spikes[layers[sc.producer].lif], sc.weight, sc.stride)
        assert close(got["shortcut_synops"], want.mean()), d.name
        main = ref_synops(trace.spikes[layers[j - 1].lif], student.config.layers[d.source], 1)
        assert close(got["synops"], (main + want).mean()), d.name
    identity = result["layers"][4]  # reads the stem's pooled spikes: one synapse per spike of conv4
    assert close(identity["shortcut_synops"], trace.spikes[2].sum().item() / 3)
    assert result["violations"] == [] and result["cores"] >= len(layers)
    assert result["ann_macs"] == sum(ann_macs(student.config).values())
    assert json.loads((tmp_path / "energy.json").read_text()) == json.loads(json.dumps(result))
    assert "| conv8 |" in (tmp_path / "energy.md").read_text()


def test_energy_cli_on_a_resnet_digits_student(tmp_path, capsys):
    from lasnn_deploy.cli import main
    from lasnn_deploy.models import build_student

    torch.manual_seed(0)
    student = SpikingStudent(build_student("resnet12", (1, 16, 16), 10, timesteps=4, width=0.125)).eval()
    path = save_student(student, tmp_path / "student.safetensors")
    assert (
        main(
            ["energy", str(path), "--dataset", "digits", "--samples", "4", "--hw", "all", "--out", str(tmp_path / "e")]
        )
        == 0
    )
    result = json.loads((tmp_path / "e" / "energy.json").read_text())
    assert result["samples"] == 4 and sum("shortcut_synops" in l for l in result["reports"]["loihi"]["layers"]) == 4


def test_sanafe_refuses_a_residual_student_before_any_work(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(UserError, match="SANA-FE comparison supports feed-forward students only") as err:
        energy_report(
            small_resnet().float(), torch.rand(2, 1, 8, 8), hw="loihi", out_dir=out, sanafe_samples=1, progress=False
        )
    assert "without --sanafe" in str(err.value) and "\n" not in str(err.value)
    assert not out.exists()


# -- report ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("encoding", ["direct", "poisson"])
def test_report_numbers_equal_independent_counts(tmp_path, encoding):
    T, seed = 4, 7
    student = make_student(encoding, timesteps=T)
    cfg = student.config
    x = torch.rand(5, 1, 8, 8)
    result = energy_report(
        student, x, torch.arange(5) % 5, hw="loihi", out_dir=tmp_path, seed=seed, batch_size=2, progress=False
    )
    profile = load_profile("loihi")
    # Independent run: Poisson spikes of sample i drawn with seed + i, whatever the batch.
    s0 = torch.stack([poisson_spikes(x[i], T, seed + i) for i in range(5)], dim=1) if encoding == "poisson" else None
    with torch.no_grad():
        trace = student.run(input_spikes=s0, record=True) if s0 is not None else student.run(x, record=True)
    first = ref_synops(s0, cfg.layers[0], 1) if s0 is not None else np.zeros(5)
    synops = [
        first,
        ref_synops(trace.spikes[0], cfg.layers[3], 2),
        ref_synops(trace.spikes[1], None, 1, 12),
        ref_synops(trace.spikes[2], None, 1, 5),
    ]
    spikes = [s.double().sum(dim=tuple(d for d in range(s.dim()) if d != 1)).numpy() for s in trace.spikes] + [
        np.zeros(5)
    ]
    macs = [ref_dense_macs(cfg.layers[0], (1, 8, 8)) if encoding == "direct" else 0, 0, 0, 0]
    neurons = [256, 96, 12, 5]
    total = np.zeros(5)
    for layer, sy, sp, m, n in zip(result["layers"], synops, spikes, macs, neurons, strict=True):
        energy = ref_energy(sp, sy, m, n * T, profile)
        total += energy
        assert close(layer["synops"], sy.mean()) and close(layer["synops_std"], sy.std())
        assert close(layer["spikes"], sp.mean()) and close(layer["macs"], m) and layer["neuron_updates"] == n * T
        assert close(layer["firing_rate"], sp.mean() / (n * T)) and close(layer["energy_j"], energy.mean())
    assert close(result["total_energy_j"], total.mean()) and close(result["total_energy_j_std"], total.std())
    ann = ref_dense_macs(cfg.layers[0], (1, 8, 8)) + ref_dense_macs(cfg.layers[3], (4, 4, 4)) + 24 * 12 + 12 * 5
    assert result["ann_macs"] == ann and close(result["ann_energy_j"], ann * 4.6e-12)
    if encoding == "poisson":
        assert close(result["input_spikes"], s0.double().sum(dim=(0, 2, 3, 4)).mean().item())
    # Files: the JSON on disk is the result; the contract's keys; a summary and three PNG plots.
    on_disk = json.loads((tmp_path / "energy.json").read_text())
    assert on_disk == json.loads(json.dumps(result))
    assert SPEC_KEYS | {"cores", "chips", "violations"} <= set(on_disk) and on_disk["hardware"] == "loihi"
    assert all(LAYER_KEYS <= set(l) for l in on_disk["layers"])
    assert (
        on_disk["profile"]["energy_j"]["synop"]["joules"] == 23.6e-12
        and "Davies" in on_disk["profile"]["energy_j"]["synop"]["source"]
    )
    assert on_disk["cores"] == 4 and on_disk["chips"] == 1 and on_disk["violations"] == []
    assert "| conv0 |" in (tmp_path / "energy.md").read_text()
    for png in ("firing_rate.png", "energy_by_layer.png", "snn_vs_ann.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*.tmp"))


def test_report_all_profiles_side_by_side(tmp_path):
    result = energy_report(make_student(), torch.rand(2, 1, 8, 8), hw="all", out_dir=tmp_path, progress=False)
    assert result["hardware"] == list_profiles() and set(result["reports"]) == set(list_profiles())
    counts = {name: [l["synops"] for l in r["layers"]] for name, r in result["reports"].items()}
    assert len({tuple(v) for v in counts.values()}) == 1  # counts do not depend on the profile
    assert all(SPEC_KEYS <= set(r) for r in result["reports"].values())
    assert "cores" in result["reports"]["loihi"] and "cores" not in result["reports"]["cmos45"]
    md = (tmp_path / "energy.md").read_text()
    assert all(f"| {name} |" in md for name in list_profiles())


def test_report_checks_input_before_writing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(UserError, match="unknown hardware profile"):
        energy_report(make_student(), torch.rand(2, 1, 8, 8), hw="loihi9", out_dir=out)
    with pytest.raises(UserError, match=r"images must be \[N, 1, 8, 8\]"):
        energy_report(make_student(), torch.rand(2, 3, 8, 8), out_dir=out)
    assert not out.exists()


# -- profiles --------------------------------------------------------------------------------------
def test_shipped_profiles_hold_the_spec_figures():
    assert {"cmos45", "loihi"} <= set(list_profiles())
    cmos, loihi = load_profile("cmos45"), load_profile("loihi")
    assert (cmos.e_synop, cmos.e_mac) == (0.9e-12, 4.6e-12)
    assert (loihi.e_synop, loihi.e_neuron, loihi.e_spike) == (23.6e-12, 81e-12, 1.7e-12)
    lim = loihi.limits
    assert (
        lim.cores_per_chip.value,
        lim.compartments_per_core.value,
        lim.synaptic_memory_per_core_bytes.value,
        lim.input_axons_per_core.value,
        lim.weight_bits_min,
        lim.weight_bits_max,
    ) == (128, 1024, 128 * 1024, 4096, 1, 9)
    for name in list_profiles():  # every figure carries the source written beside it; unknown ones say so
        written = tomllib.loads((PROFILE_DIR / f"{name}.toml").read_text())["energy"]
        loaded = load_profile(name).energy
        assert set(loaded) == set(written), name
        for key, figure in loaded.items():
            assert figure.source == written[key]["source"], (name, key)
            if written[key]["joules"] == "unknown":
                assert math.isnan(figure.value) and re.search(r"unpublished|unknown|no .*figure", figure.source), (
                    name,
                    key,
                )
            else:
                assert figure.value == written[key]["joules"], (name, key)


def _write(tmp_path, text: str):
    path = tmp_path / "custom.toml"
    path.write_text(text)
    return path


GOOD = (load_profile("cmos45").path).read_text()


@pytest.mark.parametrize(
    "text, message",
    [
        ("name = 'x'\n[energy\n", "not valid TOML"),
        (GOOD.replace("[energy.spike]\njoules = 0.0\n", "[energy.spike]\n"), "key 'energy.spike.joules' is missing"),
        (GOOD + "\n[energy.photon]\njoules = 1.0\nsource = 'x'\n", "key 'energy.photon' is unknown"),
        (
            GOOD.replace("joules = 4.6e-12", "joules = 'a lot'", 1),
            "key 'energy.mac.joules' must be a non-negative number",
        ),
        ("colour = 'red'\n" + GOOD, "key 'colour' is unknown"),
    ],
)
def test_malformed_profile_files_fail_with_one_line(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(UserError) as err:
        load_profile(path)
    assert message in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)


def test_unknown_profile_lists_the_known_ones():
    with pytest.raises(UserError) as err:
        load_profile("loihi3")
    assert all(name in str(err.value) for name in list_profiles()) and "\n" not in str(err.value)


def test_a_new_profile_is_one_file(tmp_path):
    path = _write(tmp_path, GOOD.replace('name = "cmos45"', 'name = "mine"').replace("0.9e-12", "2e-12"))
    profile = load_profile(path)
    assert profile.name == "mine" and profile.e_synop == 2e-12 and profile.limits is None


# -- constraints -----------------------------------------------------------------------------------
TINY_LIMITS = """
[limits.cores_per_chip]
value = 4
source = "test"
[limits.compartments_per_core]
value = 8
source = "test"
[limits.synaptic_memory_per_core_bytes]
value = 32
source = "test"
[limits.input_axons_per_core]
value = 12
source = "test"
[limits.weight_bits]
min = 1
max = 8
source = "test"
"""


def _chunks_fit(fan_in_sets: list[set[int]], n: int, mem_bits: int, axons: int, bits: int) -> bool:
    """Brute force: do blocks of n consecutive neurons fit memory and axons on every core?"""
    for a in range(0, len(fan_in_sets), n):
        block = fan_in_sets[a : a + n]
        if sum(len(s) for s in block) * bits > mem_bits or len(set().union(*block)) > axons:
            return False
    return True


def _receptive_fields(conv: Conv, in_hw: int) -> list[set[int]]:
    out_hw = (in_hw + 2 * conv.padding - conv.kernel_size) // conv.stride + 1
    fields = []
    for _co in range(conv.out_channels):
        for oh in range(out_hw):
            for ow in range(out_hw):
                fields.append(
                    {
                        (ci * in_hw + ih) * in_hw + iw
                        for ci in range(conv.in_channels)
                        for ih in range(
                            oh * conv.stride - conv.padding, oh * conv.stride - conv.padding + conv.kernel_size
                        )
                        for iw in range(
                            ow * conv.stride - conv.padding, ow * conv.stride - conv.padding + conv.kernel_size
                        )
                        if 0 <= ih < in_hw and 0 <= iw < in_hw
                    }
                )
    return fields


def test_core_mapping_on_a_network_beyond_the_core_limits(tmp_path):
    limits = load_profile(_write(tmp_path, GOOD + TINY_LIMITS)).limits
    conv = Conv(1, 2, 3, 1, 1)
    cfg = StudentConfig(
        "tiny", (1, 4, 4), 2, (conv, Flatten(), Linear(32, 3), Linear(3, 2)), timesteps=2, encoding="poisson"
    )
    layers = deployed_layers(SpikingStudent(cfg))
    d = map_to_cores(layers, limits, weight_bits=8, direct_encoding=False)
    fields = _receptive_fields(conv, 4)
    n = d.layers[0].neurons_per_core
    assert _chunks_fit(fields, n, 256, 12, 8) and not _chunks_fit(fields, n + 1, 256, 12, 8)
    assert (n, d.layers[0].limited_by) == (4, "synaptic memory")  # by hand: a row of 4 needs <= 30 synapses, 12 axons
    assert d.layers[0].cores == 8 and d.layers[0].synapses == sum(map(len, fields))
    # linear: fan-in 32 > 12 axons (a violation no split fixes); 32 x 8 bits fit 32 bytes, 1 per core
    assert d.violations == ["linear2: fan-in 32 exceeds 12 input axons per core"]
    assert d.layers[1].neurons_per_core == 1 and d.layers[1].cores == 3 and d.layers[2].cores == 1
    assert d.cores == sum(m.cores for m in d.layers) and d.chips == math.ceil(d.cores / 4)
    # direct encoding: the host computes conv0, whose 32 neurons then only need compartments
    direct = map_to_cores(layers, limits, weight_bits=8, direct_encoding=True)
    assert (direct.layers[0].cores, direct.layers[0].limited_by, direct.layers[0].synapses) == (4, "compartments", 0)
    wide = map_to_cores(layers, limits, weight_bits=12, direct_encoding=False)
    assert "conv0: 12-bit weights, the hardware stores 1 to 8 bits" in wide.violations


def test_loihi_flags_fan_in_beyond_4096_axons():
    cfg = StudentConfig("wide", (1, 80, 80), 10, (Flatten(), Linear(6400, 2048), Linear(2048, 10)), encoding="poisson")
    d = map_to_cores(deployed_layers(SpikingStudent(cfg)), load_profile("loihi").limits, direct_encoding=False)
    assert d.violations == ["linear1: fan-in 6400 exceeds 4096 input axons per core"]
    # linear1: 6400 synapses x 8 bits per neuron, 20 neurons fill 128 KB; linear2 (10 neurons) fits one core
    assert (d.layers[0].neurons_per_core, d.layers[0].cores, d.layers[0].limited_by) == (20, 103, "synaptic memory")
    assert (d.layers[1].cores, d.layers[1].limited_by, d.cores, d.chips) == (1, "none", 104, 1)


# -- SANA-FE ---------------------------------------------------------------------------------------
@pytest.mark.skipif(not sanafe_available(), reason="SANA-FE (optional, GPL-3.0) is not installed")
@pytest.mark.parametrize("encoding,bias", [("direct", False), ("poisson", False), ("direct", True), ("poisson", True)])
def test_sanafe_runs_in_its_own_process(encoding, bias):
    # Weights, biases, leak and pixels on a 1/16 grid: every sum is exact in float32 (SANA-FE's precision)
    # whatever the order of accumulation, so the two simulators must agree spike for spike.
    student = make_student(encoding, timesteps=4, leak=0.75, bias=bias)
    with torch.no_grad():
        for m in student.weighted_modules():
            m.weight.copy_(torch.round(m.weight * 16) / 16)
            if bias:
                m.bias.copy_(torch.round(m.bias * 16 * 3) / 16)  # up to +-0.19: every layer's spikes change
    x = torch.round(torch.rand(2, 1, 8, 8) * 16) / 16
    calibrated = load_profile("loihi_calibrated")
    counter = traffic_counter(student, calibrated, timesteps=4)
    result = compare_with_sanafe(student, x, calibrated, counter, timesteps=4, seed=3)
    assert "sanafe" not in sys.modules
    assert result["samples"] == 2 and result["energy_j"] > 0 and result["spike_agreement"] == 1.0, result
    assert [l["spikes_sanafe"] for l in result["layers"]] == [l["spikes_ours"] for l in result["layers"]]
    # Same spikes, same placement, SANA-FE's own figures: synapse and network energy agree to rounding.
    # Soma and time too, but for the updates of potentials that inputs on this 1/16 grid bring back
    # to exactly zero (SANA-FE then skips the update; our count cannot see a zero potential).
    terms = result["terms"]
    assert (
        abs(terms["synapse"]["relative_difference"]) < 1e-9 and abs(terms["network"]["relative_difference"]) < 1e-9
    ), terms
    assert (
        abs(terms["soma"]["relative_difference"]) < 0.01
        and abs(result["time_per_step_s"]["relative_difference"]) < 0.01
    ), result


@pytest.mark.skipif(not sanafe_available(), reason="SANA-FE (optional, GPL-3.0) is not installed")
def test_sanafe_stretches_its_mesh_for_a_network_beyond_one_chip():
    student = make_student("direct", timesteps=3, leak=0.75)
    with torch.no_grad():
        for m in student.weighted_modules():
            m.weight.copy_(torch.round(m.weight * 16) / 16)
    x = torch.round(torch.rand(1, 1, 8, 8) * 16) / 16
    calibrated = load_profile("loihi_calibrated")
    layers = deployed_layers(student)
    sizes = [int(np.prod(l.out_shape)) for l in layers]
    placement = place([l.name for l in layers], sizes, [2] * len(layers), calibrated)  # 185 cores: 2 chips of 128
    counter = TrafficCounter(layers, placement, 3, True, True, calibrated)
    result = compare_with_sanafe(student, x, calibrated, counter, timesteps=3)
    assert placement.chips == 2 and result["cores"] == 185 and "8 x 8 tiles" in result["architecture"], result
    trace = student.run(x, record=True)
    assert result["spike_agreement"] == 1.0 and counter.count(trace, x)["layers"][1]["interchip"][0] > 0
    assert abs(result["terms"]["network"]["relative_difference"]) < 1e-9, result["terms"]


# -- bias ------------------------------------------------------------------------------------------
def test_a_bias_is_its_own_term_priced_per_profile(tmp_path):
    """A biased layer's neurons get one bias input per step (neurons x T), no synaptic event: the other
    counts are those of the biased run's own spikes, and each profile prices the new term with its own
    figure, or leaves it out and says so when its figure is unknown."""
    T, x = 4, torch.rand(3, 1, 8, 8)
    biased, plain = make_student(timesteps=T, bias=True), make_student(timesteps=T)
    result = energy_report(biased, x, hw="all", out_dir=tmp_path / "b", progress=False)
    assert [l["bias_inputs"] for l in result["reports"]["cmos45"]["layers"]] == [256 * T, 96 * T, 12 * T, 5 * T]
    with torch.no_grad():
        trace = biased.run(x, record=True)
    for name, report in result["reports"].items():
        profile = load_profile(name)
        if profile.mesh is not None or any(not f.known for k, f in profile.energy.items() if k != "bias"):
            continue  # priced with messages and activity (test_energy_model.py), or unknown
        total = 0.0
        for layer, spikes in zip(report["layers"], [*trace.spikes, torch.zeros(1, 3)], strict=True):
            assert close(layer["spikes"], float(spikes.sum()) / 3)
            c = layer["energy_by_category_j"]
            expected = (
                layer["synops"] * profile.e_synop
                + layer["macs"] * profile.e_mac
                + layer["neuron_updates"] * profile.e_neuron
                + layer["spikes"] * profile.e_spike
            )
            if profile.bias_known:
                assert close(c["bias_inputs"], layer["bias_inputs"] * profile.e_bias)
                expected += layer["bias_inputs"] * profile.e_bias
            else:
                assert "bias_inputs" not in c
            assert close(layer["energy_j"], expected)
            total += expected
        assert close(report["total_energy_j"], total)
        assert ("unpriced" in report) == (not profile.bias_known), name
    assert result["reports"]["truenorth"]["unpriced"]["bias_inputs"] == (256 + 96 + 12 + 5) * T
    assert close(result["reports"]["cmos45"]["layers"][1]["energy_by_category_j"]["bias_inputs"], 96 * T * 0.9e-12)
    md = (tmp_path / "b" / "energy.md").read_text()
    assert "1,476 per sample, unknown on this profile, left out of the total" in md
    # bias-free: no bias term anywhere, the report as before
    unbiased = energy_report(plain, x, hw="truenorth", out_dir=tmp_path / "p", progress=False)
    assert "unpriced" not in unbiased and all("bias_inputs" not in l for l in unbiased["layers"])
    categories = {"synops", "macs", "neuron_updates", "spikes", "network"}
    assert all(set(l["energy_by_category_j"]) == categories for l in unbiased["layers"])
    assert "Bias inputs" not in (tmp_path / "p" / "energy.md").read_text()


def test_profile_bias_figure_is_optional_and_may_be_unknown(tmp_path):
    assert not load_profile(_write(tmp_path, GOOD.split("[energy.bias]")[0])).bias_known  # absent: unknown
    assert load_profile("cmos45").e_bias == 0.9e-12 and not load_profile("truenorth").bias_known
    # any figure may be "unknown" (Loihi 2 publishes no per-event energies): listed, never guessed
    assert load_profile(_write(tmp_path, GOOD.replace("joules = 4.6e-12", 'joules = "unknown"', 1))).unknown == [
        "energy.mac"
    ]


@pytest.mark.parametrize(("timesteps", "deployable"), [(4, True), (6, False)])
def test_loihi2_names_its_power_of_two_reset_interval(tmp_path, timesteps, deployable):
    """The Lava export resets every layer each T steps; Loihi 2 resets at power-of-two intervals only,
    so its report says whether T fits, and which T would; profiles without the rule say nothing."""
    student = make_student(timesteps=timesteps)
    result = energy_report(student, torch.rand(2, 1, 8, 8), hw="all", out_dir=tmp_path, progress=False)
    by_name = result["reports"]
    rule = by_name["loihi2"]["reset_interval"]
    assert rule["steps"] == timesteps and rule["power_of_two"] is deployable
    assert ("not a power of two" in rule["note"]) is not deployable
    assert deployable or "T = 8 or 4" in rule["note"]
    assert "reset_interval" not in by_name["loihi"]
    energy_md = (tmp_path / "energy.md").read_text()
    assert ("Deployable: " if deployable else "Not deployable: ") + "reset interval T = " in energy_md
