"""``validate``: run an exported file in its own runtime and compare it with PyTorch (SPEC 3, 5).

Both sides get the same input: the first N test images in file order (direct encoding) or the
same Poisson spike tensor drawn from ``seed``. Agreement is reported as fractions, never as
"close enough": ``output_agreement`` (same predicted class), ``spike_agreement`` (identical spike
values over all layers and steps the runtime exposes) and ``max_abs_logit_error``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .exporters import RunResult, target_module, target_of_file
from .neurons import encode
from .student import SpikingStudent, check_images, check_parameters


def compare(reference: RunResult, result: RunResult) -> dict:
    """Agreement figures of ``result`` against ``reference`` (SPEC section 5 keys)."""
    if reference.logits.shape != result.logits.shape:
        raise ValueError(f"logit shapes differ: {reference.logits.shape} vs {result.logits.shape}")
    report = {
        "output_agreement": float(np.mean(reference.logits.argmax(1) == result.logits.argmax(1))),
        "max_abs_logit_error": float(np.max(np.abs(reference.logits.astype(np.float64) - result.logits))),
        "spike_agreement": None,
        "layers": [],
    }
    if result.spikes is None:
        return report
    same = total = 0
    names = result.layer_names or reference.layer_names or [f"lif{k}" for k in range(len(result.spikes))]
    for name, ref, got in zip(names, reference.spikes, result.spikes):
        if ref.shape != got.shape:
            raise ValueError(f"layer {name}: spike shapes differ: {ref.shape} vs {got.shape}")
        equal = int(np.sum(ref == got))
        same, total = same + equal, total + ref.size
        report["layers"].append({
            "name": name,
            "spike_agreement": equal / ref.size,
            "spikes_reference": float(ref.sum()),
            "spikes_runtime": float(got.sum()),
        })
    report["spike_agreement"] = same / total if total else None
    return report


def validate(
    student: SpikingStudent,
    path: str | Path,
    images: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    seed: int = 0,
) -> dict:
    """Run ``path`` in its runtime and the matching PyTorch reference on the same inputs.

    ``passed`` is True when the export keeps the target's promise: every compared spike and
    every predicted class identical.
    """
    target = target_of_file(path)
    module = target_module(target)
    check_parameters(student)
    check_images(student.config, images, labels)
    student = student.eval()
    cfg = student.config
    input_spikes = encode(images, cfg.timesteps, "poisson", seed) if cfg.encoding == "poisson" else None
    direct_images = images if input_spikes is None else None
    with torch.no_grad():
        reference = module.reference(student, direct_images, input_spikes)
    result = module.run(Path(path), direct_images, input_spikes)
    report = {"target": target, "file": str(path), "samples": int(images.shape[0]),
              "timesteps": cfg.timesteps, "encoding": cfg.encoding, **compare(reference, result)}
    if labels is not None:
        y = labels.numpy()
        report["reference_accuracy"] = float(np.mean(reference.logits.argmax(1) == y))
        report["runtime_accuracy"] = float(np.mean(result.logits.argmax(1) == y))
        with torch.no_grad():
            float_logits = student.run(direct_images, input_spikes=input_spikes).logits.numpy()
        # For Lava the reference is the Loihi-quantised mode: this is the quantisation's cost.
        report["float_accuracy"] = float(np.mean(float_logits.argmax(1) == y))
    report["passed"] = report["output_agreement"] == 1.0 and report["spike_agreement"] in (None, 1.0)
    return report
