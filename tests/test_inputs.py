"""The one input rule: every runtime, reference and counter sees the same input for the same seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import make_student, model_in
from lasnn_deploy.exporters import get_target

from lasnn_deploy.errors import UserError
from lasnn_deploy.inputs import ModelInput, model_input
from lasnn_deploy.loihi_quant import quantise, run_quantised
from lasnn_deploy.neurons import poisson_inputs


def test_poisson_sample_i_is_drawn_from_seed_plus_its_index_whatever_the_batch():
    images = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    whole = model_input("poisson", 5, images, seed=3).spikes
    second_half = model_input("poisson", 5, images[3:], seed=3, first_index=3).spikes
    assert whole.shape == (5, 6, 1, 4, 4)
    assert torch.equal(whole[:, 3:], second_half)
    assert not torch.equal(whole, model_input("poisson", 5, images, seed=4).spikes)


def test_given_spikes_win_and_direct_images_stay_images():
    images = torch.rand(2, 1, 4, 4)
    spikes = torch.ones(3, 2, 1, 4, 4)
    assert model_input("poisson", 5, images, spikes).spikes is spikes
    direct = model_input("direct", 5, images)
    assert direct.spikes is None and direct.images is images and direct.steps(5).shape == (5, 2, 1, 4, 4)
    assert torch.equal(model_input("direct", 5, None, images.expand(5, *images.shape)).image(), images)
    with pytest.raises(UserError, match="give images"):
        model_input("direct", 5)


def test_every_fallback_encodes_images_as_the_student_does(tmp_path):
    """Given only images, the student, its quantised mode and the ONNX and NIR runtimes draw the same spikes."""
    student = make_student("poisson", timesteps=4, seed=2)
    images = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    spikes = poisson_inputs(images, 4, 0)
    with torch.no_grad():
        assert torch.equal(student.run(images, record=True).input_spikes, spikes)
        assert np.array_equal(student.run(images).logits, student.run(input_spikes=spikes).logits)
    net = quantise(student)
    assert torch.equal(run_quantised(net, images).logits, run_quantised(net, input_spikes=spikes).logits)
    for name in ("onnx", "nir"):
        target = get_target(name)
        path = target.export(student, tmp_path / f"s.{name}")
        from_images, from_spikes = (
            target.run(path, model_in(student, images)),
            target.run(path, ModelInput(spikes=spikes)),
        )
        assert np.array_equal(from_images.logits, from_spikes.logits), name
        assert all(np.array_equal(a, b) for a, b in zip(from_images.spikes, from_spikes.spikes, strict=True)), name
        assert np.array_equal(
            target.reference(student, model_in(student, images)).logits,
            target.reference(student, ModelInput(spikes=spikes)).logits,
        )


def test_a_target_checks_the_input_once_against_what_the_file_was_exported_for(tmp_path):
    """``Target.run`` refuses, in one line, images for a Poisson file (they must be encoded with a seed
    first, ``model_input``), spikes of another T, and anything that is not a ``ModelInput``."""
    from lasnn_deploy.errors import UserError
    from lasnn_deploy.inputs import InputSpec, ModelInput
    from lasnn_deploy.neurons import Encoding

    student = make_student("poisson", timesteps=4)
    path = get_target("onnx").export(student, tmp_path / "p.onnx")
    images = torch.rand(2, 1, 8, 8)
    for bad, message in [
        (ModelInput(images=images), "encode the images"),
        (ModelInput(spikes=torch.zeros(3, 2, 1, 8, 8)), "T=4"),
        (images, "runs on a ModelInput"),
    ]:
        with pytest.raises(UserError, match=message):
            get_target("onnx").run(path, bad)
        with pytest.raises(UserError, match=message):
            get_target("onnx").reference(student, bad)
    spec = InputSpec.of(student.config)
    assert spec == InputSpec(Encoding.POISSON, 4, (1, 8, 8)) and spec.encoding == "poisson"
