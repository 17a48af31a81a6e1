"""``validate``: run an exported file in its own runtime and compare it with PyTorch
(docs/semantics.md, 'What `validate` accepts as agreement').

Both sides get the same input: the first N test images in file order (direct encoding) or the
same Poisson spikes, sample ``i`` drawn from seed ``seed + i``. Agreement is reported as fractions, never as
"close enough": ``output_agreement`` (same predicted class), ``spike_agreement`` (identical spike
values over all layers and steps the runtime exposes) and ``max_abs_logit_error``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import nir as nir_lib
import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from .atomic import atomic_path
from .errors import UserError
from .exporters import TARGETS, RunResult, target_of_file
from .inputs import Batch, ModelInput, batches, loaded, sample_count
from .student import SpikingStudent, check_images, check_parameters


def layer_mismatch(reference: RunResult, result: RunResult) -> list[str]:
    """What keeps ``result``'s spikes from being compared with ``reference``'s, one line per problem.

    Every LIF layer of the reference must come back from the runtime under the same name, in the
    same order, with the same shape ``[T, B, ...]``; a runtime that drops, renames or adds a layer
    would otherwise be compared on the layers that happen to line up (or on none at all).
    """
    ref_names = list(reference.layer_names)
    if reference.spikes is None or len(ref_names) != len(reference.spikes):
        raise ValueError("the reference must name each of its LIF layers' spikes")
    if result.spikes is None:
        return [f"the runtime returned no spikes; missing LIF layers: {', '.join(ref_names)}"]
    names = list(result.layer_names)
    if len(names) != len(result.spikes):
        return [f"the runtime returned {len(result.spikes)} spike arrays but {len(names)} layer names"]
    problems = []
    missing = [n for n in ref_names if n not in names]
    extra = [n for n in names if n not in ref_names]
    if missing:
        problems.append(f"missing LIF layers: {', '.join(missing)}")
    if extra:
        problems.append(f"unexpected layers: {', '.join(extra)}")
    if len(set(names)) != len(names):
        problems.append(f"repeated layer names: {', '.join(sorted({n for n in names if names.count(n) > 1}))}")
    if not problems and names != ref_names:
        problems.append(f"layers in another order: {', '.join(names)} (reference: {', '.join(ref_names)})")
    if not problems:
        problems += [
            f"layer {n}: spike shape {list(got.shape)}, reference {list(ref.shape)}"
            for n, ref, got in zip(ref_names, reference.spikes, result.spikes, strict=True)
            if ref.shape != got.shape
        ]
    return problems


def first_divergence(reference: RunResult, result: RunResult, sample_offset: int = 0) -> dict | None:
    """The earliest spike that differs: smallest step, then the earliest layer, sample and neuron.

    Within one step a difference flows from earlier layers to later ones, so the earliest layer
    at the earliest step is where the runtime first went its own way. Potentials (before reset)
    are included where the result carries them (``RunResult.potentials``).
    """
    assert reference.spikes is not None and result.spikes is not None, "compare only what layer_mismatch accepted"
    best = None
    for k, (ref, got) in enumerate(zip(reference.spikes, result.spikes, strict=True)):
        differ = ref != got
        if not differ.any():
            continue
        t = int(np.argmax(differ.reshape(differ.shape[0], -1).any(1)))
        if best is None or t < best[0]:
            best = (t, k)
    if best is None:
        return None
    t, k = best
    flat = np.flatnonzero(reference.spikes[k][t] != result.spikes[k][t])[0]
    b, *neuron = (int(i) for i in np.unravel_index(flat, reference.spikes[k][t].shape))
    where = (t, b, *neuron)
    found = {
        "layer": reference.layer_names[k],
        "step": t,
        "sample": sample_offset + b,
        "neuron": neuron,
        "spike_reference": float(reference.spikes[k][where]),
        "spike_runtime": float(result.spikes[k][where]),
    }
    for side, run in (("reference", reference), ("runtime", result)):
        if run.potentials is not None:
            found[f"potential_{side}"] = float(run.potentials[k][where])
    return found


@dataclass
class Agreement:
    """Running counts behind the agreement fractions, so validation can go chunk by chunk."""

    samples: int = 0
    same_class: int = 0
    max_error: float = 0.0
    names: list[str] = field(default_factory=list)
    equal: list[int] = field(default_factory=list)  # per layer: identical spike values
    size: list[int] = field(default_factory=list)  # per layer: compared spike values
    spikes_reference: list[float] = field(default_factory=list)
    spikes_runtime: list[float] = field(default_factory=list)
    mismatch: list[str] = field(default_factory=list)  # layers that did not come back as the reference's
    divergence: dict | None = None

    def add(self, reference: RunResult, result: RunResult) -> None:
        if reference.logits.shape != result.logits.shape:
            raise ValueError(f"logit shapes differ: {reference.logits.shape} vs {result.logits.shape}")
        offset = self.samples
        self.samples += reference.logits.shape[0]
        self.same_class += int(np.sum(reference.logits.argmax(1) == result.logits.argmax(1)))
        error = np.max(np.abs(reference.logits.astype(np.float64) - result.logits), initial=0.0)
        self.max_error = max(self.max_error, float(error))
        problems = layer_mismatch(reference, result)
        self.mismatch += [p for p in problems if p not in self.mismatch]
        if self.mismatch:
            return
        assert reference.spikes is not None and result.spikes is not None  # layer_mismatch found none missing
        if not self.names:
            self.names = list(reference.layer_names)
            n = len(self.names)
            self.equal, self.size, self.spikes_reference, self.spikes_runtime = [0] * n, [0] * n, [0.0] * n, [0.0] * n
        for k, (ref, got) in enumerate(zip(reference.spikes, result.spikes, strict=True)):
            self.equal[k] += int(np.sum(ref == got))
            self.size[k] += ref.size
            self.spikes_reference[k] += float(ref.sum())
            self.spikes_runtime[k] += float(got.sum())
        if self.divergence is None:
            self.divergence = first_divergence(reference, result, offset)

    def report(self) -> dict:
        """The report's keys: fractions over everything added so far.

        ``spike_agreement`` is None when the layers did not come back as the reference's
        (``layer_mismatch`` says how); ``first_divergence`` is None when every spike agreed.
        """
        total = sum(self.size)
        return {
            "output_agreement": self.same_class / self.samples if self.samples else None,
            "max_abs_logit_error": self.max_error,
            "spike_agreement": sum(self.equal) / total if total and not self.mismatch else None,
            "layer_mismatch": list(self.mismatch),
            "first_divergence": self.divergence,
            "layers": []
            if self.mismatch
            else [
                {"name": name, "spike_agreement": eq / size, "spikes_reference": ref, "spikes_runtime": got}
                for name, eq, size, ref, got in zip(
                    self.names, self.equal, self.size, self.spikes_reference, self.spikes_runtime, strict=True
                )
            ],
        }


def compare(reference: RunResult, result: RunResult) -> dict:
    """Agreement figures of ``result`` against ``reference`` (the report's keys)."""
    agreement = Agreement()
    agreement.add(reference, result)
    return agreement.report()


def validate(
    student: SpikingStudent,
    path: str | Path,
    images: torch.Tensor | Dataset,
    labels: torch.Tensor | None = None,
    *,
    seed: int = 0,
    progress: bool = False,
    runtime: str | None = None,
    trace: str | Path | None = None,
) -> dict:
    """Run ``path`` in its runtime and the matching PyTorch reference on the same inputs.

    ``images`` are a tensor ``[N, C, H, W]`` (with ``labels``, optional) or a labelled ``Dataset``,
    streamed in batches of the target's ``chunk`` through ``Target.run_stream`` (Lava: one long
    simulator run): memory holds a batch or two, however many samples are validated.
    ``passed`` is True when the export keeps the target's promise: every LIF layer of the
    reference came back (same names, count, shapes), and every spike and predicted class is
    identical. ``runtime`` picks the NIR importer (``exporters.nir_runtimes.RUNTIMES``; default: the
    one a flavoured file was written for, else snnTorch). ``trace`` writes the reference's spikes
    per layer as a golden trace (:func:`write_trace`).
    """
    target = target_of_file(path)
    module = TARGETS[target].for_file(path, **({} if runtime is None else {"runtime": runtime}))
    check_parameters(student)
    labelled = labels is not None or not isinstance(images, torch.Tensor)
    if isinstance(images, torch.Tensor):
        check_images(student.config, images, labels)
    elif sample_count(images) == 0:
        raise UserError("the data set has no samples to validate")
    student = student.eval()
    cfg = student.config
    agreement = Agreement()
    correct = {"reference_accuracy": 0, "runtime_accuracy": 0, "float_accuracy": 0}
    golden: list[RunResult] = []
    pending: deque[Batch] = deque()  # batches handed to the runtime whose results have not come back yet

    def source() -> Iterator[torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
        for x, y in loaded(images, labels, module.chunk):
            if not isinstance(images, torch.Tensor):
                check_images(cfg, x, y)  # a data set is checked batch by batch, as it loads
            yield x if y is None else (x, y)

    def inputs() -> Iterator[ModelInput]:
        for batch in batches(cfg.encoding, cfg.timesteps, source(), seed=seed):
            pending.append(batch)
            yield batch.input

    bar = tqdm(
        total=sample_count(images),
        desc=f"validate {target}",
        unit="sample",
        leave=False,
        disable=None if progress else True,
    )
    with bar:  # disable=None: only on a terminal
        for result in module.run_stream(Path(path), inputs()):
            batch = pending.popleft()
            given = batch.input
            reference = module.reference(student, given)
            agreement.add(reference, result)
            if trace is not None:
                golden.append(RunResult(reference.logits, reference.spikes, reference.layer_names))
            if batch.labels is not None:
                y = batch.labels.numpy()
                with torch.no_grad():
                    float_logits = student.run(given.images, input_spikes=given.spikes).logits.numpy()
                for key, logits in zip(correct, (reference.logits, result.logits, float_logits), strict=True):
                    correct[key] += int(np.sum(logits.argmax(1) == y))
            bar.update(given.batch)
    report = {
        "target": target,
        "file": str(path),
        "samples": agreement.samples,
        **({"runtime": module.settings["runtime"]} if "runtime" in module.settings else {}),
        "timesteps": cfg.timesteps,
        "encoding": cfg.encoding,
        **agreement.report(),
    }
    if labelled:
        # For Lava the reference is the Loihi-quantised mode: float_accuracy shows the quantisation's cost.
        report.update({key: count / agreement.samples for key, count in correct.items()})
    report["passed"] = (
        report["output_agreement"] == 1.0 and report["spike_agreement"] == 1.0 and not report["layer_mismatch"]
    )
    if trace is not None:
        report["trace"] = str(write_trace(trace, golden, *module.trace_layout(path)))
    return report


def write_trace(
    path: str | Path, chunks: list[RunResult], dt: float = 1.0, node_names: dict[str, str] | None = None
) -> Path:
    """The reference's spikes per LIF layer as a golden trace, a NIR data file (``nir.write_data``).

    ``NIRGraphData`` with one ``NIRNodeData`` per LIF layer (named after the file's LIF node for a
    NIR file, else after the reference layer), observable ``spikes``: ``TimeGriddedData`` of bools
    ``[samples, T, neurons]``, neurons flattened in (C, H, W) order, sample ``i`` being the i-th
    validated input. Written atomically; ``nir.read_data`` reads it back.
    """
    names = chunks[0].layer_names
    nodes = {}
    per_chunk = [c.spikes for c in chunks if c.spikes is not None]
    for k, name in enumerate(names):
        spikes = np.concatenate([s[k] for s in per_chunk], axis=1)  # [T, B, ...]
        grid = np.ascontiguousarray(spikes.reshape(*spikes.shape[:2], -1).transpose(1, 0, 2) != 0)
        nodes[(node_names or {}).get(name, name)] = nir_lib.NIRNodeData({"spikes": nir_lib.TimeGriddedData(grid, dt)})
    path = Path(path)
    with atomic_path(path) as tmp:
        nir_lib.write_data(tmp, nir_lib.NIRGraphData(nodes))
    return path
