"""Commands that agree with each other: one definition per shared option (one ``--hw`` grammar for
``energy`` and ``tradeoff``), one trade-off row per distinct network, and a Pareto plot whose text
never overlaps."""

from __future__ import annotations

import argparse
import json
import re

import matplotlib.text
import pytest
import torch
from helpers import make_student, run_cli
from lasnn_deploy.hw_targets.plots import pareto_plot
from lasnn_deploy.hw_targets.tradeoff import tradeoff
from matplotlib.backends.backend_agg import FigureCanvasAgg

from lasnn_deploy.cli.parser import build_parser
from lasnn_deploy.models import build_student
from lasnn_deploy.student import SpikingStudent, load_student, save_student

# train's flags are TrainConfig's fields (training/config.py): options of a training run, not shared here.
# --out names each command's own files, so its help differs by design.
OWN_DEFINITION = {"--out"}


def _options() -> dict[str, dict[str, argparse.Action]]:
    """Every command but train: its options by flag."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {
        name: {a.option_strings[-1]: a for a in p._actions if a.option_strings and a.dest != "help"}
        for name, p in sub.choices.items()
        if name != "train"
    }


def test_every_option_two_commands_share_is_defined_once():
    """Same flag, same grammar (type by name, choices, metavar) and same help but for its default."""
    by_flag: dict[str, dict[str, argparse.Action]] = {}
    for command, actions in _options().items():
        for flag, action in actions.items():
            by_flag.setdefault(flag, {})[command] = action
    shared = {flag: c for flag, c in by_flag.items() if len(c) > 1 and flag not in OWN_DEFINITION}
    for flag, commands in shared.items():
        forms = {
            command: (
                getattr(a.type, "__name__", a.type),
                a.choices,
                a.metavar,
                a.nargs,
                re.sub(r" \(default: [^)]*\)$", "", a.help or ""),
            )
            for command, a in commands.items()
        }
        assert len(set(forms.values())) == 1, f"{flag} differs between commands: {forms}"
    assert {"--hw", "--timesteps", "--json", "--weight-bits", "--dataset"} <= set(shared)


@pytest.fixture
def model(tmp_path):
    return save_student(make_student(input_shape=(1, 16, 16)), tmp_path / "student.safetensors")  # digits


def test_energy_takes_the_hw_list_that_tradeoff_takes(model, tmp_path, capsys):
    # one sample: the 5-class test student meets digits' second test label, 5, which energy refuses
    code, _, err = run_cli(capsys, "energy", model, "--samples", 1, "--hw", "loihi,cmos45", "--out", tmp_path / "e")
    assert code == 0, err
    result = json.loads((tmp_path / "e" / "energy.json").read_text())
    assert result["hardware"] == ["loihi", "cmos45"] and set(result["reports"]) == set(result["hardware"])


@pytest.mark.parametrize(
    "hw, message",
    [
        ("loihi,,cmos45", "--hw 'loihi,,cmos45': an empty profile name"),
        ("loihi,", "--hw 'loihi,': an empty profile name"),
        ("loihi,loihi", "profile 'loihi' is named twice"),
        ("all,loihi", "'all' names every profile already"),
        ("loihi,nope", "unknown hardware profile 'nope'"),
    ],
)
def test_a_bad_hw_is_the_same_one_line_in_both_commands(model, tmp_path, capsys, hw, message):
    errors = []
    for command in ("energy", "tradeoff"):
        out = tmp_path / command
        code, _, err = run_cli(capsys, command, model, "--samples", 2, "--hw", hw, "--out", out)
        assert code == 2 and err.count("\n") == 1 and message in err and not out.exists(), err
        errors.append(err.split(": error: ", 1)[1])
    assert errors[0] == errors[1]


@pytest.mark.parametrize("command", ["energy", "evaluate"])
def test_a_command_of_one_t_refuses_a_list_in_one_line(model, tmp_path, capsys, command):
    extra = ["--out", tmp_path / "e"] if command == "energy" else []
    code, _, err = run_cli(capsys, command, model, "--samples", 2, "--timesteps", "2,4", *extra)
    assert code == 2 and err.count("\n") == 1 and "runs one T" in err and "tradeoff --timesteps 2,4" in err
    assert not (tmp_path / "e").exists()


# -- trade-off: a network shared by runs is one network ------------------------------------------
def _run(folder, method: str, student: SpikingStudent, converted: SpikingStudent | None = None):
    folder.mkdir()
    save_student(student, folder / "student.safetensors")
    if converted is not None:
        save_student(converted, folder / "converted.safetensors")
    (folder / "config.json").write_text(json.dumps({"method": method, "dataset": "digits"}))
    return folder


def _tiny(seed: int, threshold_scale: float = 1.0) -> SpikingStudent:
    torch.manual_seed(seed)
    cfg = build_student("tiny", (1, 16, 16), 10, timesteps=4)
    return SpikingStudent(cfg, thresholds=[0.4 * threshold_scale] * len(cfg.spiking_layers)).eval()


def test_tradeoff_counts_a_network_shared_by_runs_once_and_names_the_runs(tmp_path):
    """Two runs fine-tuned from one converted SNN (one intermediate ANN), a conversion run whose student
    is that SNN too (another file name), and a conversion run of another network (the same method name)."""
    shared = _tiny(0)
    lasnn = _run(tmp_path / "lasnn", "lasnn", _tiny(0, 0.5), shared)
    hetero = _run(tmp_path / "hetero-kd", "hetero-kd", _tiny(0, 0.7), load_student(lasnn / "converted.safetensors"))
    same = _run(tmp_path / "conversion", "conversion", shared)
    other = _run(tmp_path / "other", "conversion", _tiny(1))
    images, labels = torch.rand(4, 1, 16, 16), torch.arange(4)
    result = tradeoff(
        [lasnn, hetero, same, other],
        images,
        labels,
        timesteps=[2],
        hw="cmos45",
        out_dir=tmp_path / "t",
        progress=False,
    )
    assert len(result["rows"]) == 4  # the shared converted SNN once, the other conversion kept
    rows = [(r["method"], [p.split("/")[-1] for p in r["runs"]]) for r in result["rows"]]
    assert rows == [
        ("lasnn", ["lasnn"]),
        ("conversion", ["lasnn", "hetero-kd", "conversion"]),
        ("hetero-kd", ["hetero-kd"]),
        ("conversion", ["other"]),
    ]
    table = (tmp_path / "t" / "tradeoff.md").read_text()
    assert f"| conversion | {lasnn}, {hetero}, {same} | 2 |" in table


# -- Pareto plot: three methods on top of each other stay legible --------------------------------
def _row(method: str, T: int, energy: float, accuracy: float) -> dict:
    e = {"energy_with_static_j": energy, "dynamic_energy_j": energy, "static_energy_j": 0.0}
    return {"method": method, "runs": [f"runs/{method}"], "timesteps": T, "accuracy": accuracy, "energy": {"p": e}}


def test_pareto_plot_text_never_overlaps_where_points_coincide(tmp_path):
    """lasnn, hetero-kd and conversion at T = 4 and T = 8 on the very same points: every text of the
    figure is drawn apart from every other, and each method and each T is named."""
    methods, Ts = ("lasnn", "hetero-kd", "conversion"), (2, 4, 8)
    rows = [_row(m, 2, 1e-6 * (1 + i), 0.3 + 0.1 * i) for i, m in enumerate(methods)]
    rows += [_row(m, T, e, a) for m in methods for T, e, a in ((4, 2e-6, 0.9), (8, 3e-6, 0.95))]
    result = {"samples": 8, "timesteps": list(Ts), "hardware": ["p"], "rows": rows}
    figure = pareto_plot(result, tmp_path / "pareto.png")
    assert (tmp_path / "pareto.png").stat().st_size > 0
    canvas = FigureCanvasAgg(figure)  # the closed figure, drawn again as it was written
    canvas.draw()
    renderer = canvas.get_renderer()
    texts = [t for t in figure.findobj(matplotlib.text.Text) if t.get_visible() and t.get_text().strip()]
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts]
    for i, (a, box_a) in enumerate(boxes):
        for b, box_b in boxes[i + 1 :]:
            assert not box_a.overlaps(box_b), f"{a!r} and {b!r} overlap"
    named = {t for t, _ in boxes}
    assert set(methods) <= named and {f"T = {T}" for T in Ts} <= named
