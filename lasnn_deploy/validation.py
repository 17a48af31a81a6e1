"""``validate``: run an exported file in its own runtime and compare it with PyTorch (SPEC 3, 5).

Both sides get the same input: the first N test images in file order (direct encoding) or the
same Poisson spikes, sample ``i`` drawn from seed ``seed + i``. Agreement is reported as fractions, never as
"close enough": ``output_agreement`` (same predicted class), ``spike_agreement`` (identical spike
values over all layers and steps the runtime exposes) and ``max_abs_logit_error``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .exporters import RunResult, get_target, target_of_file
from .neurons import poisson_inputs
from .student import SpikingStudent, check_images, check_parameters


CHUNK = 256  # samples per runtime call: memory stays flat however many samples are validated


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
    exposes_spikes: bool = False

    def add(self, reference: RunResult, result: RunResult) -> None:
        if reference.logits.shape != result.logits.shape:
            raise ValueError(f"logit shapes differ: {reference.logits.shape} vs {result.logits.shape}")
        self.samples += reference.logits.shape[0]
        self.same_class += int(np.sum(reference.logits.argmax(1) == result.logits.argmax(1)))
        error = np.max(np.abs(reference.logits.astype(np.float64) - result.logits), initial=0.0)
        self.max_error = max(self.max_error, float(error))
        if result.spikes is None:
            return
        self.exposes_spikes = True
        if not self.names:
            self.names = result.layer_names or reference.layer_names or [f"lif{k}" for k in range(len(result.spikes))]
            n = len(self.names)
            self.equal, self.size, self.spikes_reference, self.spikes_runtime = [0] * n, [0] * n, [0.0] * n, [0.0] * n
        for k, (name, ref, got) in enumerate(zip(self.names, reference.spikes, result.spikes)):
            if ref.shape != got.shape:
                raise ValueError(f"layer {name}: spike shapes differ: {ref.shape} vs {got.shape}")
            self.equal[k] += int(np.sum(ref == got))
            self.size[k] += ref.size
            self.spikes_reference[k] += float(ref.sum())
            self.spikes_runtime[k] += float(got.sum())

    def report(self) -> dict:
        """The SPEC section 5 keys: fractions over everything added so far."""
        total = sum(self.size)
        return {
            "output_agreement": self.same_class / self.samples if self.samples else None,
            "max_abs_logit_error": self.max_error,
            "spike_agreement": sum(self.equal) / total if self.exposes_spikes and total else None,
            "layers": [
                {"name": name, "spike_agreement": eq / size, "spikes_reference": ref, "spikes_runtime": got}
                for name, eq, size, ref, got in zip(self.names, self.equal, self.size, self.spikes_reference, self.spikes_runtime)
            ],
        }


def compare(reference: RunResult, result: RunResult) -> dict:
    """Agreement figures of ``result`` against ``reference`` (SPEC section 5 keys)."""
    agreement = Agreement()
    agreement.add(reference, result)
    return agreement.report()


def validate(
    student: SpikingStudent,
    path: str | Path,
    images: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """Run ``path`` in its runtime and the matching PyTorch reference on the same inputs.

    Works through the samples in chunks of ``CHUNK``, so ten thousand samples need no more memory
    than one chunk. ``passed`` is True when the export keeps the target's promise: every compared
    spike and every predicted class identical.
    """
    target = target_of_file(path)
    module = get_target(target)
    check_parameters(student)
    check_images(student.config, images, labels)
    student = student.eval()
    cfg = student.config
    agreement = Agreement()
    correct = {"reference_accuracy": 0, "runtime_accuracy": 0, "float_accuracy": 0}
    for start in tqdm(range(0, images.shape[0], CHUNK), desc=f"validate {target}", unit="chunk", leave=False,
                      disable=None if progress else True):  # None: only on a terminal
        x = images[start:start + CHUNK]
        input_spikes = poisson_inputs(x, cfg.timesteps, seed, start) if cfg.encoding == "poisson" else None
        direct_images = x if input_spikes is None else None
        reference = module.reference(student, direct_images, input_spikes)
        result = module.run(Path(path), direct_images, input_spikes)
        agreement.add(reference, result)
        if labels is not None:
            y = labels[start:start + CHUNK].numpy()
            with torch.no_grad():
                float_logits = student.run(direct_images, input_spikes=input_spikes).logits.numpy()
            for key, logits in zip(correct, (reference.logits, result.logits, float_logits)):
                correct[key] += int(np.sum(logits.argmax(1) == y))
    report = {"target": target, "file": str(path), "samples": int(images.shape[0]),
              "timesteps": cfg.timesteps, "encoding": cfg.encoding, **agreement.report()}
    if labels is not None:
        # For Lava the reference is the Loihi-quantised mode: float_accuracy shows the quantisation's cost.
        report.update({key: count / images.shape[0] for key, count in correct.items()})
    report["passed"] = report["output_agreement"] == 1.0 and report["spike_agreement"] in (None, 1.0)
    return report
