"""Energy and deployability (SPEC sections 4 and 5): exact counts on hand-fixed spikes, profile
files, core mapping, the report files, and SANA-FE in its own process."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import make_student
from lasnn_deploy.errors import UserError
from lasnn_deploy.hw_targets.constraints import map_to_cores
from lasnn_deploy.hw_targets.counting import ann_macs, conv_reach, count_events
from lasnn_deploy.hw_targets.energy import price_layer, run_and_count
from lasnn_deploy.hw_targets.profile import list_profiles, load_profile
from lasnn_deploy.hw_targets.report import energy_report
from lasnn_deploy.hw_targets.sanafe_compare import compare_with_sanafe, sanafe_available
from lasnn_deploy.neurons import poisson_spikes
from lasnn_deploy.student import Conv, Flatten, Linear, SpikingStudent, StudentConfig, Trace, deployed_layers

SPEC_KEYS = {"hardware", "timesteps", "samples", "layers", "total_energy_j", "ann_macs", "ann_energy_j", "profile"}
LAYER_KEYS = {"name", "neurons", "spikes", "firing_rate", "synops", "macs", "neuron_updates", "energy_j"}


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-30)


# -- independent references: the SPEC's own formulas, computed with torch convolutions ------------
def ref_synops(spikes: torch.Tensor, conv: Conv | None, pool: int, out_features: int | None = None) -> np.ndarray:
    """Synops per sample of spikes ``[T, B, ...]`` entering a layer: conv(spikes, all-ones kernel of
    the folded shape) summed over time, outputs and channels; or spikes x out_features."""
    s = spikes.double()
    if conv is None:
        return (s.sum(dim=(0, *range(2, s.dim()))) * out_features).numpy()
    ones = torch.ones(conv.out_channels, conv.in_channels, conv.kernel_size * pool, conv.kernel_size * pool, dtype=torch.float64)
    out = torch.stack([F.conv2d(s[t], ones, stride=conv.stride * pool, padding=conv.padding * pool) for t in range(s.shape[0])])
    return out.sum(dim=(0, 2, 3, 4)).numpy()


def ref_dense_macs(conv: Conv, in_shape: tuple[int, int, int]) -> int:
    ones = torch.ones(conv.out_channels, conv.in_channels, conv.kernel_size, conv.kernel_size, dtype=torch.float64)
    return int(F.conv2d(torch.ones(1, *in_shape, dtype=torch.float64), ones, stride=conv.stride, padding=conv.padding).sum())


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
    want_synops = [ref_synops(x_in, conv_a, 1), ref_synops(s1, conv_b, 2), ref_synops(s2, None, 2, 12), ref_synops(s3, None, 1, 5)]
    want_spikes = [[3, 2], [1, 6], [4, 1], [0, 0]]
    neurons = [4 * 64, 6 * 16, 12, 5]
    profile = load_profile("loihi")
    for c, synops, spikes, n in zip(counts, want_synops, want_spikes, neurons):
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
    assert got == {0: ref_dense_macs(cfg.layers[0], (1, 8, 8)), 3: ref_dense_macs(cfg.layers[3], (4, 4, 4)), 6: 24 * 12, 7: 12 * 5}


# -- report ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("encoding", ["direct", "poisson"])
def test_report_numbers_equal_independent_counts(tmp_path, encoding):
    T, seed = 4, 7
    student = make_student(encoding, timesteps=T)
    cfg = student.config
    x = torch.rand(5, 1, 8, 8)
    result = energy_report(student, x, torch.arange(5) % 5, hw="loihi", out_dir=tmp_path, seed=seed, batch_size=2, progress=False)
    profile = load_profile("loihi")
    # Independent run: Poisson spikes of sample i drawn with seed + i, whatever the batch.
    s0 = torch.stack([poisson_spikes(x[i], T, seed + i) for i in range(5)], dim=1) if encoding == "poisson" else None
    with torch.no_grad():
        trace = student.run(input_spikes=s0, record=True) if s0 is not None else student.run(x, record=True)
    first = ref_synops(s0, cfg.layers[0], 1) if s0 is not None else np.zeros(5)
    synops = [first, ref_synops(trace.spikes[0], cfg.layers[3], 2), ref_synops(trace.spikes[1], None, 1, 12), ref_synops(trace.spikes[2], None, 1, 5)]
    spikes = [s.double().sum(dim=tuple(d for d in range(s.dim()) if d != 1)).numpy() for s in trace.spikes] + [np.zeros(5)]
    macs = [ref_dense_macs(cfg.layers[0], (1, 8, 8)) if encoding == "direct" else 0, 0, 0, 0]
    neurons = [256, 96, 12, 5]
    total = np.zeros(5)
    for layer, sy, sp, m, n in zip(result["layers"], synops, spikes, macs, neurons):
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
    # Files: the JSON on disk is the result; SPEC keys; a summary and three PNG plots.
    on_disk = json.loads((tmp_path / "energy.json").read_text())
    assert on_disk == json.loads(json.dumps(result))
    assert SPEC_KEYS | {"cores", "chips", "violations"} <= set(on_disk) and on_disk["hardware"] == "loihi"
    assert all(LAYER_KEYS <= set(l) for l in on_disk["layers"])
    assert on_disk["profile"]["energy_j"]["synop"]["joules"] == 23.6e-12 and "Davies" in on_disk["profile"]["energy_j"]["synop"]["source"]
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
        energy_report(make_student(), torch.rand(2, 1, 8, 8), hw="loihi2", out_dir=out)
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
    assert (lim.cores_per_chip.value, lim.compartments_per_core.value, lim.synaptic_memory_per_core_bytes.value,
            lim.input_axons_per_core.value, lim.weight_bits_min, lim.weight_bits_max) == (128, 1024, 128 * 1024, 4096, 1, 9)
    for name in list_profiles():
        assert all(f.source for f in load_profile(name).energy.values())


def _write(tmp_path, text: str):
    path = tmp_path / "custom.toml"
    path.write_text(text)
    return path


GOOD = (load_profile("cmos45").path).read_text()


@pytest.mark.parametrize("text, message", [
    ("name = 'x'\n[energy\n", "not valid TOML"),
    (GOOD.replace("[energy.spike]\njoules = 0.0\n", "[energy.spike]\n"), "key 'energy.spike.joules' is missing"),
    (GOOD + "\n[energy.photon]\njoules = 1.0\nsource = 'x'\n", "key 'energy.photon' is unknown"),
    (GOOD.replace("joules = 4.6e-12", "joules = 'a lot'", 1), "key 'energy.mac.joules' must be a non-negative number"),
    ("colour = 'red'\n" + GOOD, "key 'colour' is unknown"),
])
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
                fields.append({
                    (ci * in_hw + ih) * in_hw + iw
                    for ci in range(conv.in_channels)
                    for ih in range(oh * conv.stride - conv.padding, oh * conv.stride - conv.padding + conv.kernel_size)
                    for iw in range(ow * conv.stride - conv.padding, ow * conv.stride - conv.padding + conv.kernel_size)
                    if 0 <= ih < in_hw and 0 <= iw < in_hw
                })
    return fields


def test_core_mapping_on_a_network_beyond_the_core_limits(tmp_path):
    limits = load_profile(_write(tmp_path, GOOD + TINY_LIMITS)).limits
    conv = Conv(1, 2, 3, 1, 1)
    cfg = StudentConfig("tiny", (1, 4, 4), 2, (conv, Flatten(), Linear(32, 3), Linear(3, 2)), timesteps=2, encoding="poisson")
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
@pytest.mark.parametrize("encoding", ["direct", "poisson"])
def test_sanafe_runs_in_its_own_process(encoding):
    # Weights, leak and pixels on a 1/16 grid: every sum is exact in float32 (SANA-FE's precision)
    # whatever the order of accumulation, so the two simulators must agree spike for spike.
    student = make_student(encoding, timesteps=4, leak=0.75)
    with torch.no_grad():
        for m in student.weighted_modules():
            m.weight.copy_(torch.round(m.weight * 16) / 16)
    x = torch.round(torch.rand(2, 1, 8, 8) * 16) / 16
    run = run_and_count(student, x, timesteps=4, seed=3, progress=False)
    loihi = load_profile("loihi")
    per_core = [m.neurons_per_core for m in map_to_cores(deployed_layers(student), loihi.limits, direct_encoding=encoding == "direct").layers]
    result = compare_with_sanafe(student, x, run, loihi, per_core, timesteps=4, seed=3)
    assert "sanafe" not in sys.modules
    assert result["samples"] == 2 and result["energy_j"] > 0 and result["spike_agreement"] == 1.0, result
    assert [l["spikes_sanafe"] for l in result["layers"]] == [l["spikes_ours"] for l in result["layers"]]
    assert math.isfinite(result["relative_difference"])


@pytest.mark.skipif(not sanafe_available(), reason="SANA-FE (optional, GPL-3.0) is not installed")
def test_sanafe_stretches_its_mesh_for_a_network_beyond_one_chip():
    student = make_student("direct", timesteps=3, leak=0.75)
    with torch.no_grad():
        for m in student.weighted_modules():
            m.weight.copy_(torch.round(m.weight * 16) / 16)
    x = torch.round(torch.rand(1, 1, 8, 8) * 16) / 16
    run = run_and_count(student, x, timesteps=3, progress=False)
    per_core = [2] * len(deployed_layers(student))  # 2 neurons per core: 185 cores, more than one chip's 128
    result = compare_with_sanafe(student, x, run, load_profile("loihi"), per_core, timesteps=3)
    assert result["cores"] == 185 and "8 x 6 tiles" in result["architecture"], result
    assert result["spike_agreement"] == 1.0
