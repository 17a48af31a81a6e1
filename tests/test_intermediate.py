"""The intermediate ANN: batch norm folded into weights and biases, QCFS clips giving the thresholds."""

from __future__ import annotations

import pytest
import torch

from lasnn_deploy.errors import UserError
from lasnn_deploy.models import build_student
from lasnn_deploy.student import Conv, Flatten, Linear, SpikingStudent, StudentConfig
from lasnn_deploy.training import make_config
from lasnn_deploy.training.conversion import convert
from lasnn_deploy.training.intermediate import IntermediateAnn, fold_batch_norm, qcfs


def _random_norms(ann: IntermediateAnn, generator: torch.Generator) -> None:
    """Batch-norm statistics and affines far from the identity, as after training."""
    for norm in ann.norms.values():
        n = norm.num_features
        norm.running_mean.copy_(torch.randn(n, generator=generator, dtype=torch.float64))
        norm.running_var.copy_(torch.rand(n, generator=generator, dtype=torch.float64) * 2 + 0.1)
        norm.weight.data.copy_(torch.randn(n, generator=generator, dtype=torch.float64))
        norm.bias.data.copy_(torch.randn(n, generator=generator, dtype=torch.float64))


@pytest.mark.parametrize("arch, shape", [("3conv2linear", (3, 16, 16)), ("resnet12", (3, 16, 16)), ("vgg5", (1, 8, 8))])
def test_folding_batch_norm_keeps_the_ann_outputs_float64(arch, shape):
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    config = build_student(arch, shape, 10, width=0.125, bias=True)
    ann = IntermediateAnn(SpikingStudent(config), "bn").double().eval()
    _random_norms(ann, generator)
    for module in ann.student.weighted_modules():
        if module.bias is not None:
            module.bias.data.normal_(generator=generator)
    assert len(ann.norms) == sum(1 for m in ann.student.weighted_modules()) - 1  # all but the output layer
    student = SpikingStudent(config).double()
    fold_batch_norm(ann, student)
    x = torch.rand(5, *shape, dtype=torch.float64)
    before = ann(x)
    after = student.eval().forward_ann(x)[0]
    assert before.abs().max() > 0.1  # the comparison sees a real signal
    torch.testing.assert_close(after, before, rtol=1e-10, atol=1e-10)


def test_qcfs_is_clip_floor_shift_with_a_straight_through_gradient():
    z = torch.tensor([-1.0, 0.1, 0.2, 0.49, 0.5, 0.9, 3.0], requires_grad=True)
    clip = torch.tensor(1.0, requires_grad=True)
    out = qcfs(z, clip, 4)
    assert out.tolist() == [0.0, 0.0, 0.25, 0.5, 0.5, 1.0, 1.0]  # floor(4z + 1/2) / 4, clipped to [0, 1]
    out.sum().backward()
    assert z.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0] and clip.grad is not None


def test_a_qcfs_layer_converts_exactly_at_t_equal_to_its_levels_with_soft_reset():
    """One spiking layer of constant input: T = L spike counts are the ANN's levels, and the bias,
    the folded batch norm, the clip thresholds, the shift charge and the readout scale all hold."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(2)
    levels = 6
    layers = (Conv(2, 5, 3, 1, 1, bias=True), Flatten(), Linear(5 * 6 * 6, 4, bias=True))
    config = StudentConfig("one", (2, 6, 6), 4, layers, timesteps=levels, reset="soft")
    ann = IntermediateAnn(SpikingStudent(config), "qcfs", levels).double().eval()
    _random_norms(ann, generator)
    ann.clips.data.fill_(1.7)
    for module in ann.student.weighted_modules():
        module.bias.data.normal_(generator=generator)
    student = SpikingStudent(config).double()
    fold_batch_norm(ann, student)
    thresholds = convert(student, [], clips=ann.clips.tolist())
    assert thresholds == [1.7]
    x = torch.rand(7, 2, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(student.eval()(x), ann(x), rtol=1e-9, atol=1e-9)


def test_option_combinations_that_cannot_convert_are_one_line_before_training():
    with pytest.raises(UserError, match="balance-percentile"):
        make_config(intermediate="qcfs", balance_percentile=99.0)
    with pytest.raises(UserError, match="qcfs-levels"):
        make_config(intermediate="bn", qcfs_levels=4)


def test_conversion_divides_a_deeper_layers_bias_by_the_rate_scale_of_its_input():
    """Layer 2's current, averaged over the T = L steps, is the ANN's pre-activation ``z2 / lam1``
    plus the shift charge ``theta2 / 2T`` (layer 1's spike counts are exact, so this is too)."""
    from lasnn_deploy.training.conversion import layer_input_current

    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(3)
    levels = 5
    layers = (Conv(2, 4, 3, 1, 1, bias=True), Conv(4, 3, 3, 1, 1, bias=True), Flatten(), Linear(3 * 36, 4, bias=True))
    config = StudentConfig("two", (2, 6, 6), 4, layers, timesteps=levels, reset="soft")
    ann = IntermediateAnn(SpikingStudent(config), "qcfs", levels).double().eval()
    _random_norms(ann, generator)
    ann.clips.data.copy_(torch.tensor([1.3, 2.1], dtype=torch.float64))
    student = SpikingStudent(config).double()
    fold_batch_norm(ann, student)
    convert(student, [], clips=ann.clips.tolist())
    x = torch.rand(3, 2, 6, 6, dtype=torch.float64)
    captured = []
    handle = ann.norms["1"].register_forward_hook(lambda _m, _i, out: captured.append(out))
    ann(x)
    handle.remove()
    current = layer_input_current(student.eval(), 1, x, seed=0).unflatten(0, (levels, -1)).mean(0)
    theta2 = 2.1 / 1.3
    assert student.thresholds.tolist() == pytest.approx([1.3, theta2])
    torch.testing.assert_close(current, captured[0] / 1.3 + theta2 / (2 * levels), rtol=1e-9, atol=1e-9)
