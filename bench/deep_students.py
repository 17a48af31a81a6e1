"""Issue 27's table from run folders: ``python bench/deep_students.py RUN... --json OUT.json`` writes the
JSON the table in docs/results.md is rendered from; ``--render OUT.json`` prints that table (Markdown).

Each row is one run folder's metrics.json: the data set, student, T, reset, the intermediate ANN,
the accuracies of every stage (test set, measured only) and the validation accuracy the choices
were made on, spikes per sample and the wall time of the stages.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def row(run: Path) -> dict[str, Any]:
    """The figures of one finished run folder."""
    m = json.loads((run / "metrics.json").read_text())
    conversion = m["stages"]["conversion"]
    finetune = m["stages"].get("finetune", {})
    config = m["config"]
    return {
        "run": run.name,
        "dataset": m["dataset"],
        "data_dir": config.get("data_dir"),
        "student": m["student"],
        "width": config["student_width"],
        "timesteps": m["timesteps"],
        "reset": m["reset"],
        "method": m["method"],
        "teacher": m.get("teacher"),
        "student_lr": config["student_lr"],
        "per_step_loss": config.get("per_step_loss", False),
        "student_back_off": config["student_back_off"],
        "patience": config["patience"],
        "student_epochs": config["student_epochs"],
        "student_samples": config["student_samples"],
        "intermediate": config["intermediate"],
        "preset_choices": m.get("preset_choices", {}),
        "ann": m["ann_test_accuracy"],
        "ann_validation": m["stages"]["ann"].get("validation_accuracy"),
        "converted_uncalibrated_validation": max(
            conversion.get("percentile_validation_accuracy", {}).values(), default=None
        ),
        "bias_calibration": conversion.get("bias_calibration", {}),
        "converted": m["converted_test_accuracy"],
        "student_accuracy": m["test_accuracy"],
        "student_minus_ann_points": round(100 * (m["test_accuracy"] - m["ann_test_accuracy"]), 2),
        "finetune_rounds": finetune.get("epochs"),
        "finetune_best_round": finetune.get("best_epoch"),
        "spikes_per_sample": m["spikes_per_sample"],
        "stage_seconds": {k: round(v["seconds"]) for k, v in m["stages"].items() if "seconds" in v},
    }


def _method(r: dict[str, Any]) -> str:
    """The method, its teacher where it has one, the fine-tuning rate it started from and its
    schedule (back-off and patience, or the whole cosine of epochs x images), and TET's per-step
    cross-entropy where it was on."""
    teacher = f"{r['teacher']}, " if r.get("teacher") else ""
    if r["student_back_off"] is None:
        schedule = f"cosine {r['student_epochs']} x {r['student_samples'] or 'all'}"
    else:
        schedule = f"back-off {r['student_back_off']:g}, patience {r['patience']}"
    tet = ", per-step CE" if r.get("per_step_loss") else ""
    return f"{r['method']} ({teacher}{r['student_lr']:g}, {schedule}{tet})"


def render(rows: list[dict[str, Any]]) -> str:
    head = (
        "| run | student (width) | T | method (teacher, lr, schedule) | ANN | converted | student | student - ANN | rounds (best) "
        "| spikes / sample | seconds (ANN, fine-tune) |"
    )
    lines = [head, "| --- " * (head.count("|") - 1) + "|"]
    for r in rows:
        s = r["stage_seconds"]
        lines.append(
            f"| {r['run']} | {r['student']} ({r['width']}) | {r['timesteps']} | {_method(r)} | {r['ann']:.4f} | "
            f"{r['converted']:.4f} | {r['student_accuracy']:.4f} | {r['student_minus_ann_points']:+.2f} | "
            f"{r['finetune_rounds'] or '-'} ({r['finetune_best_round'] if r['finetune_best_round'] is not None else '-'}) | "
            f"{r['spikes_per_sample']:,.0f} | {s.get('ann', '-')}, {s.get('finetune', '-')} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", type=Path, help="finished run folders")
    parser.add_argument("--json", type=Path, help="write the rows here")
    parser.add_argument("--render", type=Path, help="print the table of a JSON file written by --json")
    args = parser.parse_args()
    if args.render:
        print(render(json.loads(args.render.read_text())))
        return
    rows = [row(r) for r in args.runs]
    text = json.dumps(rows, indent=2)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(render(rows))


if __name__ == "__main__":
    main()
