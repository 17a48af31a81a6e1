"""Foreign NIR graphs imported, exported to ONNX and Lava, and compared with the foreign library's own run.

    python bench/nir_import.py [--samples N] [--timesteps T]

For each of snnTorch, SpikingJelly, Sinabs and Norse, a conv net and a dense net (``tests/foreign_nets.py``:
random He-initialised weights, each library's neuron set to NIR's reset-to-zero LIF/IF) are written by
the library's own NIR exporter to a file (Norse's graph is imported in memory: ``nir.write`` cannot
store it), read by ``lasnn_deploy.import_nir`` with ``--from LIBRARY`` into a run folder, and the
student, its ONNX export (onnxruntime) and its Lava netx export (Lava's CPU simulator) run on the first
N digits test images (direct encoding). Each is compared with the library's own simulation of the
original network on the same input (``validation.compare``: output and spike agreement, logit error).
Writes ``bench/results/nir_import.json`` and prints its table (``bench/render_results.py`` writes it into
docs/interop.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import foreign_nets as fn  # noqa: E402
import render_results  # noqa: E402  (bench/, the script's folder)
from lasnn_deploy.exporters import RunResult, get_target  # noqa: E402

from lasnn_deploy import export, import_nir, load_student  # noqa: E402
from lasnn_deploy.atomic import write_text  # noqa: E402
from lasnn_deploy.data import first_samples, load_split  # noqa: E402
from lasnn_deploy.inputs import model_input  # noqa: E402
from lasnn_deploy.validation import compare  # noqa: E402


def measure(library: str, kind: str, images: torch.Tensor, timesteps: int, folder: Path) -> dict:
    """One row: the library's run against the imported student, its ONNX export and its Lava export.

    ``kind`` "int" is snnTorch's conv net with Loihi-representable weights fed Poisson spikes.
    """
    f = fn.build(library, kind)
    encoding = "poisson" if kind == "int" else "direct"
    given = model_input(encoding, timesteps, images, seed=0)
    x, spikes_in, steps = given.images, given.spikes, given.steps(timesteps)
    logits, spikes = fn.simulate(library, f, steps)
    source = f.graph
    if library != "norse":
        source = folder / f"{library}_{kind}.nir"
        fn.write(f.graph, source)
    run = folder / f"{library}_{kind}"
    import_nir(source, run, library=library, timesteps=timesteps, encoding=encoding, input_shape=fn.SHAPE)
    student = load_student(run)
    names = [f"{student.config.layers[i].type}{i}" for i in student.config.spiking_layers]
    foreign = RunResult(logits=logits, spikes=spikes, layer_names=names)
    row = {
        "library": library,
        "net": kind,
        "layers": [l.type for l in student.config.layers],
        "leak": float(student.leak),
        "rates": [float(s.mean()) for s in spikes],
    }
    with torch.no_grad():
        trace = student.run(x, input_spikes=spikes_in, record=True)
    row["student"] = compare(foreign, RunResult(trace.logits.numpy(), [s.numpy() for s in trace.spikes], names))
    for target, suffix in (("onnx", ".onnx"), ("lava", ".h5")):
        path = export(student, target, run / f"student{suffix}")
        module = get_target(target)
        result = module.run(path, given)
        row[target] = compare(foreign, result)
        row[f"{target}_validate"] = compare(module.reference(student, given), result)  # what validate checks
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--timesteps", type=int, default=8)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    images, _ = first_samples(load_split("digits", None, "test"), args.samples)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for library in fn.LIBRARIES:
            for kind in ("conv", "dense"):
                rows.append(measure(library, kind, images, args.timesteps, Path(tmp)))
        rows.append(measure("snntorch", "int", images, args.timesteps, Path(tmp)))
    out = Path(__file__).parent / "results" / "nir_import.json"
    data = {"samples": args.samples, "timesteps": args.timesteps, "rows": rows}
    write_text(out, json.dumps(data, indent=2) + "\n")
    print(render_results.nir_import(data))


if __name__ == "__main__":
    main()
