"""Placement, messages and hops, time and static energy, ANN baselines and the trade-off command,
checked against numbers worked out by hand; bad input refused in one line with nothing written."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from helpers import make_student
from lasnn_deploy.hw_targets.baselines import break_even_rate
from lasnn_deploy.hw_targets.counting import ann_macs
from lasnn_deploy.hw_targets.energy import counted_batches
from lasnn_deploy.hw_targets.placement import place
from lasnn_deploy.hw_targets.profile import load_profile
from lasnn_deploy.hw_targets.report import Tally, energy_report, profile_report, sample_values
from lasnn_deploy.hw_targets.tradeoff import parse_timesteps
from lasnn_deploy.hw_targets.traffic import TrafficCounter

from lasnn_deploy.cli import main
from lasnn_deploy.errors import UserError
from lasnn_deploy.student import Flatten, Linear, SpikingStudent, StudentConfig, Trace, deployed_layers, save_student

CALIBRATED = load_profile("loihi_calibrated").path.read_text()
# A chip of 2 x 2 tiles of 2 cores, every latency 0 but 1 ns per neuron access, a flat 1 us barrier.
SMALL_MESH = (
    CALIBRATED.replace("[mesh.cores_per_tile]\nvalue = 4", "[mesh.cores_per_tile]\nvalue = 2")
    .replace("[mesh.tiles_x]\nvalue = 8", "[mesh.tiles_x]\nvalue = 2")
    .replace("[mesh.tiles_y]\nvalue = 4", "[mesh.tiles_y]\nvalue = 2")
    .replace("[limits.cores_per_chip]\nvalue = 128", "[limits.cores_per_chip]\nvalue = 8")
    .replace("tiles = [1, 2, 4, 29]\nseconds = [0.6e-6, 1.0e-6, 1.4e-6, 1.8e-6]", "tiles = [1]\nseconds = [1e-6]")
    .replace("[static.power_per_chip]\nwatts = 0.029", "[static.power_per_chip]\nwatts = 0.5")
)
for key in ("neuron_update", "spike", "message_out", "message_in", "synop", "synop_conv"):
    SMALL_MESH = SMALL_MESH.replace(f"[latency.{key}]\nseconds = ", f"[latency.{key}]\nseconds = 0.0 #")
SMALL_MESH = SMALL_MESH.replace("[latency.neuron]\nseconds = 6.0e-9", "[latency.neuron]\nseconds = 1e-9")


def _profile(tmp_path, text: str, name: str = "p.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _two_layer() -> SpikingStudent:
    """Linear(16 -> 6)-LIF-Linear(6 -> 3) under direct encoding: the host computes layer 0."""
    cfg = StudentConfig("two", (1, 4, 4), 3, (Flatten(), Linear(16, 6), Linear(6, 3)), timesteps=3, encoding="direct")
    return SpikingStudent(cfg).eval()


def test_messages_and_hops_on_a_hand_placed_two_layer_network(tmp_path):
    profile = load_profile(_profile(tmp_path, SMALL_MESH))
    student = _two_layer()
    layers = deployed_layers(student)
    # layer 0: 6 neurons, 2 per core -> cores 0, 1, 2; layer 1: 3 neurons, 1 per core -> cores 3, 4, 5.
    # Core c sits on tile c // 2, tiles column by column on a 2 x 2 mesh: tile 0 (0, 0), 1 (0, 1), 2 (1, 0).
    placement = place(["l0", "l1"], [6, 3], [2, 1], profile)
    assert [placement.site(c)[:2] for c in range(6)] == [(0, 0), (0, 0), (0, 1), (0, 1), (1, 0), (1, 0)]
    counter = TrafficCounter(layers, placement, 3, direct=True, hard_reset=True, latency_profile=profile)
    spikes = torch.zeros(3, 1, 6)
    spikes[0, 0, 0] = 1  # core 0 -> cores 3 (1 N-S hop), 4 and 5 (1 E-W hop each)
    spikes[2, 0, 5] = 1  # core 2 (tile 1) -> core 3 (same tile, no hop), 4 and 5 (1 E-W + 1 N-S each)
    spikes[2, 0, 1] = 1  # core 0 again
    out = counter.count(Trace(logits=torch.zeros(1, 3), spikes=[spikes]))
    l1 = out["layers"][1]
    assert (l1["messages"][0], l1["hops_ew"][0], l1["hops_ns"][0], l1["interchip"][0]) == (9, 6, 4, 0)
    assert out["layers"][0]["messages"][0] == 0  # the host drives layer 0: no messages in
    # Updates: layer 0 has a bias at all 3 steps (18), then one tail step (S = T + depth - 1 = 4) for
    # the 4 neurons whose potential is not zero (neurons 1 and 5 fired last and reset): 22. Layer 1
    # receives at steps 0 and 2 and holds its potential in between: 3 neurons x 3 steps, no tail.
    assert (out["layers"][0]["updates"][0], l1["updates"][0], counter.steps) == (22, 9, 4)
    assert (out["layers"][0]["accesses"], l1["accesses"]) == (6 * 4, 3 * 4)
    # Time: 1 ns per neuron access, 2 neurons on the busiest core, plus the 1 us barrier, 4 steps.
    assert math.isclose(out["inference_s"][0], 4 * (2e-9 + 1e-6), rel_tol=1e-12)


def test_static_energy_is_static_power_times_chips_times_time(tmp_path):
    profile = load_profile(_profile(tmp_path, SMALL_MESH))
    student = _two_layer()
    layers = deployed_layers(student)
    # 3 neurons per core would fit, but 1 per core over 9 cores needs 2 chips of 8 cores.
    placement = place(["l0", "l1"], [6, 3], [1, 1], profile)
    counter = TrafficCounter(layers, placement, 3, direct=True, hard_reset=True, latency_profile=profile)
    x = torch.rand(2, 1, 4, 4)
    tally = Tally()
    for counted in counted_batches(student, x, timesteps=3, progress=False):
        tally.add(sample_values(counted, profile, counter.count(counted.trace, counted.batch.images)))
    report = profile_report(tally, student, profile, traffic=counter)
    step = 1e-9 + 1e-6  # one neuron per core
    assert placement.chips == 2 and math.isclose(report["time_per_step_s"], step, rel_tol=1e-12)
    assert math.isclose(report["latency_s"], 4 * step, rel_tol=1e-12)
    assert math.isclose(report["static_energy_j"], 0.5 * 2 * 4 * step, rel_tol=1e-12)
    both = report["dynamic_energy_j"] + report["static_energy_j"]
    assert math.isclose(report["energy_with_static_j"], both, rel_tol=1e-12)


def test_int8_and_fp32_baselines_and_the_break_even_rate(tmp_path):
    student = make_student("poisson")
    macs = sum(ann_macs(student.config).values())
    report = energy_report(
        student, torch.rand(3, 1, 8, 8), hw="loihi_calibrated", out_dir=tmp_path / "e", progress=False
    )
    b = report["ann_baselines"]
    assert math.isclose(b["int8"]["energy_j"], macs * (0.2e-12 + 0.03e-12), rel_tol=1e-12)
    assert math.isclose(b["fp32"]["energy_j"], macs * (3.7e-12 + 0.9e-12), rel_tol=1e-12)
    assert break_even_rate(0.1, 1.0, 2.0, 3.0) == pytest.approx(0.1) and break_even_rate(0.1, 3.0, 2.0, 2.0) == 0.0
    # At the break-even rate the linear model costs exactly the ANN: fixed + (r* / r0) spiking == E_ann.
    layers = report["layers"]
    fixed = sum(l["accesses"] * 51.2e-12 + l["energy_by_category_j"]["macs"] for l in layers)
    spiking = report["dynamic_energy_j"] - fixed
    r0 = report["firing_rate"]
    for name in ("fp32", "int8"):
        r = b[name]["break_even_rate"]
        ann = b[name]["energy_j"]
        assert r == 0.0 and fixed >= ann or math.isclose(fixed + r / r0 * spiking, ann, rel_tol=1e-9)
    text = (tmp_path / "e" / "energy.md").read_text()
    assert "ANN int8" in text and "break-even" in text and "static" in text and "latency" in text


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A run folder shaped like the demo's (its tiny student on digits, the converted SNN beside the
    fine-tuned one, the method in config.json), without the training, so that the test stays fast."""
    from lasnn_deploy.models import build_student

    out = tmp_path_factory.mktemp("digits") / "run"
    out.mkdir()
    torch.manual_seed(0)
    cfg = build_student("tiny", (1, 16, 16), 10, timesteps=4)
    converted = SpikingStudent(cfg, thresholds=[0.4] * len(cfg.spiking_layers)).eval()
    save_student(converted, out / "converted.safetensors")
    with torch.no_grad():
        converted.thresholds.mul_(0.5)  # "fine-tuned": another network, more spikes
    save_student(converted, out / "student.safetensors")
    (out / "config.json").write_text(json.dumps({"method": "lasnn", "dataset": "digits"}))
    return out


def test_tradeoff_command_on_the_digits_demo(digits_run, tmp_path, capsys):
    out = tmp_path / "t"
    code = main(
        [
            "tradeoff",
            str(digits_run),
            "--dataset",
            "digits",
            "--samples",
            "24",
            "--timesteps",
            "2,4",
            "--hw",
            "loihi_calibrated,cmos45,loihi2",
            "--out",
            str(out),
        ]
    )
    assert code == 0, capsys.readouterr().err
    result = json.loads((out / "tradeoff.json").read_text())
    rows = [(r["method"], r["timesteps"]) for r in result["rows"]]
    assert rows == [("lasnn", 2), ("lasnn", 4), ("conversion", 2), ("conversion", 4)]
    for r in result["rows"]:
        calibrated = r["energy"]["loihi_calibrated"]
        assert 0 <= r["accuracy"] <= 1 and calibrated["dynamic_energy_j"] > 0 and calibrated["static_energy_j"] > 0
        assert r["energy"]["loihi2"]["dynamic_energy_j"] is None and "no rebalancing or fine-tuning" in r["obtained"]
    # more steps: more time, so more static energy, for the same network
    latency = [r["energy"]["loihi_calibrated"]["latency_s"] for r in result["rows"]]
    assert latency[1] > latency[0] and latency[3] > latency[2]
    assert (out / "pareto.png").stat().st_size > 0 and "obtained" in (out / "tradeoff.md").read_text()


# -- bad input ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: re.sub(r"\[energy.hop_ns\][^[]*", "", t), "key 'energy.hop_ns' is missing: a profile with a mesh"),
        (
            lambda t: t.replace("[limits.cores_per_chip]\nvalue = 128", "[limits.cores_per_chip]\nvalue = 100"),
            "key 'mesh' is impossible",
        ),
        (
            lambda t: t.replace("[mesh.tiles_x]\nvalue = 8", "[mesh.tiles_x]\nvalue = 0"),
            "key 'mesh.tiles_x.value' must be a positive integer",
        ),
        (lambda t: t[: t.index("[mesh.cores_per_tile]")], "key 'mesh' is missing: energy.message"),
    ],
)
def test_a_profile_the_placement_cannot_use_is_one_line_exit_2_nothing_written(tmp_path, capsys, edit, message):
    path = _profile(tmp_path, edit(CALIBRATED))
    with pytest.raises(UserError, match=message):
        load_profile(path)
    model = save_student(make_student(), tmp_path / "student.safetensors")
    out = tmp_path / "out"
    assert main(["energy", str(model), "--samples", "2", "--hw", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message.split(":")[0] in err and err.count("\n") == 1 and not out.exists()


@pytest.mark.parametrize(
    "timesteps, message",
    [("2,0,8", "time steps must be an integer"), ("4,2,4", "T = 4 appears twice"), ("2,x", "comma-separated list")],
)
def test_a_bad_timestep_list_is_one_line_exit_2_nothing_written(tmp_path, capsys, timesteps, message):
    with pytest.raises(UserError, match=message):
        parse_timesteps(timesteps)
    model = save_student(make_student(), tmp_path / "student.safetensors")
    out = tmp_path / "out"
    assert main(["tradeoff", str(model), "--samples", "2", "--timesteps", timesteps, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not out.exists()
