"""``lasnn-deploy demo``: the whole pipeline on the bundled digits data, on a laptop CPU.

Trains a LaSNN student with the quick preset, exports it to ONNX, NIR and Lava, validates each
export in its own runtime, and writes an energy report for every hardware profile. Prints where
each file went.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from .atomic import write_text
from .data import first_samples, load_split
from .exporters import TARGETS, export
from .run_folder import RunFolder
from .student import load_student
from .validation import validate

# The quick preset with the tiny student: sized for 1,437 digits images on a laptop CPU.
DEMO_OPTIONS: dict[str, Any] = {
    "preset": "quick",
    "student": "tiny",
    "student_width": 1.0,
    "teacher_epochs": 2,
    "ann_epochs": 8,
    "student_epochs": 2,
}
FAST_OVERRIDES: dict[str, Any] = {"teacher_epochs": 1, "ann_epochs": 1, "student_epochs": 1}


def run_demo(out: str | Path = "runs/demo", *, fast: bool = False) -> dict:
    """Run train -> export x3 -> validate x3 -> energy into ``out``; return a summary dict."""
    from .hw_targets.report import energy_report
    from .training import train

    out = Path(out)
    started = time.perf_counter()
    options = {**DEMO_OPTIONS, **(FAST_OVERRIDES if fast else {})}
    run = train(dataset="digits", out=str(out), method="lasnn", seed=0, **options)
    folder = RunFolder.of(run)
    metrics = folder.metrics()
    student = load_student(run)
    images, labels = first_samples(load_split("digits", None, "test"), None)

    summary: dict = {
        "run": str(run),
        "student": str(folder.student),
        "metrics": str(folder.metrics_file),
        "test_accuracy": metrics["test_accuracy"],
        "exports": {},
        "validation": {},
    }
    for target, kind in TARGETS.items():
        path = export(student, target, run / f"student{kind.suffixes[0]}")
        n = kind.quick_samples
        report = validate(student, path, images[:n], labels[:n])
        report_path = run / f"validate_{target}.json"
        write_text(report_path, json.dumps(report, indent=2) + "\n")
        summary["exports"][target] = str(path)
        summary["validation"][target] = {
            "file": str(report_path),
            "passed": report["passed"],
            "output_agreement": report["output_agreement"],
            "spike_agreement": report["spike_agreement"],
            "samples": report["samples"],
        }
    energy_dir = run / "energy"
    energy_report(student, images, labels, hw="all", out_dir=energy_dir)
    summary["energy"] = str(energy_dir)
    summary["seconds"] = time.perf_counter() - started
    write_text(run / "demo_summary.json", json.dumps(summary, indent=2) + "\n")
    _print_summary(summary)
    return summary


def _print_summary(s: dict) -> None:
    print(f"\nlasnn-deploy demo finished in {s['seconds']:.0f} s")
    print(f"  student        {s['student']}  (test accuracy {s['test_accuracy']:.4f})")
    print(f"  metrics        {s['metrics']}")
    for target, path in s["exports"].items():
        v = s["validation"][target]
        spikes = "n/a" if v["spike_agreement"] is None else f"{v['spike_agreement']:.4f}"
        verdict = "PASSED" if v["passed"] else "FAILED"
        print(f"  {target:<5} export  {path}")
        print(
            f"  {target:<5} check   {v['file']}  ({v['samples']} samples: output agreement "
            f"{v['output_agreement']:.4f}, spike agreement {spikes}, {verdict})"
        )
    print(f"  energy report  {s['energy']}/energy.md (energy.json, plots)")
