"""Loss terms and threshold balancing against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from lasnn_deploy.neurons import lif_reference
from lasnn_deploy.student import Conv, Flatten, Linear, Shortcut, SpikingStudent, StudentConfig
from lasnn_deploy.training import losses
from lasnn_deploy.training.conversion import balance_thresholds, convert, layer_input_current, percentile, rate_scales


def test_attention_map_is_channel_mean_of_squares():
    a = torch.tensor([[[[1.0, -2.0]], [[3.0, 0.0]]]])  # [B=1, C=2, H=1, W=2]
    assert losses.attention_map(a).tolist() == [[[(1 + 9) / 2, (4 + 0) / 2]]]


def test_attention_distance_by_hand():
    # Q_S = [5, 2] -> [5, 2]/sqrt(29); Q_T = [0, 1] -> [0, 1]; distance = sqrt((5/s)^2 + (2/s - 1)^2)
    q_s = torch.tensor([[[5.0, 2.0]]], dtype=torch.float64)
    q_t = torch.tensor([[[0.0, 1.0]]], dtype=torch.float64)
    s = math.sqrt(29)
    expected = math.sqrt((5 / s) ** 2 + (2 / s - 1) ** 2)
    assert losses.attention_distance(q_s, q_t).item() == pytest.approx(expected, rel=1e-12)
    # scale-free: multiplying either map changes nothing; equal maps give 0
    assert losses.attention_distance(3 * q_s, q_t).item() == pytest.approx(expected, rel=1e-12)
    assert losses.attention_distance(q_s, 7 * q_s).item() == pytest.approx(0.0, abs=1e-12)


def test_attention_distance_is_per_sample_then_batch_mean():
    q_s = torch.tensor([[[1.0, 0.0]], [[1.0, 0.0]]], dtype=torch.float64)
    q_t = torch.tensor([[[0.0, 1.0]], [[1.0, 0.0]]], dtype=torch.float64)
    assert losses.attention_distance(q_s, q_t).item() == pytest.approx(math.sqrt(2) / 2, rel=1e-12)


def test_attention_loss_sums_levels_times_half_beta():
    q_s = torch.tensor([[[1.0, 0.0]]], dtype=torch.float64)
    q_t = torch.tensor([[[0.0, 1.0]]], dtype=torch.float64)
    loss = losses.attention_loss([q_s, q_s, q_t], [q_t, q_t, q_t], beta=3.0)
    assert loss.item() == pytest.approx(1.5 * 2 * math.sqrt(2), rel=1e-12)


def test_teacher_map_is_area_averaged_to_the_student_size():
    q_t = torch.arange(16, dtype=torch.float64).reshape(1, 4, 4)
    small = losses.resize_map(q_t, (2, 2))
    assert small.tolist() == [[[2.5, 4.5], [10.5, 12.5]]]  # means of the 2x2 blocks
    assert losses.resize_map(small, (4, 4)).shape == (1, 4, 4)
    # a student map equal to the block means is at distance 0 from the larger teacher map
    assert losses.attention_distance(small, q_t).item() == pytest.approx(0.0, abs=1e-12)


def test_kd_loss_by_hand():
    z_s = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    z_t = torch.tensor([[math.log(3.0), 0.0]], dtype=torch.float64)  # softmax -> [0.75, 0.25]
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert losses.kd_loss(z_s, z_t, 1.0, 1.0).item() == pytest.approx(kl, rel=1e-12)
    # one temperature tau: Hinton's tau^2 scaling of the softened distributions
    assert losses.kd_loss(2 * z_s, 2 * z_t, 2.0, 2.0).item() == pytest.approx(4 * kl, rel=1e-12)


def test_hetero_kd_loss_by_hand():
    # teacher logits at temperature 4 give [0.75, 0.25]; the student at temperature 1 gives
    # [0.5, 0.5] -> KL as above, scaled by tau_S * tau_T = 4
    z_t = torch.tensor([[4 * math.log(3.0), 0.0]], dtype=torch.float64)
    z_s = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert losses.kd_loss(z_s, z_t, 1.0, 4.0).item() == pytest.approx(4 * kl, rel=1e-12)
    # the student matches the teacher with logits 4x smaller than the teacher's
    assert losses.kd_loss(z_t / 4, z_t, 1.0, 4.0).item() == pytest.approx(0.0, abs=1e-12)


def test_spike_activation_map_by_hand():
    gamma = 0.5
    d = math.exp(-gamma)
    # one neuron (B=1, C=2, H=1, W=1): channel 0 fires at t=0,1,2; channel 1 fires at t=2 only
    spikes = torch.zeros(3, 1, 2, 1, 1, dtype=torch.float64)
    spikes[:, 0, 0] = 1.0
    spikes[2, 0, 1] = 1.0
    # M[0] = 0; M[1] = e^-g (ch 0); M[2] = e^-g + e^-2g (ch 0) + 0 (ch 1, no earlier spike)
    expected = (0 + d + d + d * d) / 3
    assert losses.spike_activation_map(spikes, gamma).item() == pytest.approx(expected, rel=1e-12)


def test_input_gradient_map_of_a_linear_teacher():
    class Lin(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.tensor([[1.0, -2.0], [0.5, 3.0]], dtype=torch.float64))

        def forward(self, x):
            return x.flatten(1) @ self.w.T, []

    teacher = Lin().requires_grad_(False)
    x = torch.tensor([[[[0.2, 0.7]]]], dtype=torch.float64)  # [1, 1, 1, 2]
    y = torch.tensor([0])
    z = (x.flatten(1) @ teacher.w.T)[0]
    p = torch.softmax(z, 0)
    grad = (p - torch.tensor([1.0, 0.0], dtype=torch.float64)) @ teacher.w  # dCE/dx
    got = losses.input_gradient_map(teacher, x, y)
    assert torch.allclose(got[0, 0], grad.abs(), rtol=1e-12)
    assert teacher.w.grad is None


# -- threshold balancing -------------------------------------------------------------------------
def _hand_made_student() -> SpikingStudent:
    cfg = StudentConfig("hand", (1, 1, 2), 2, (Flatten(), Linear(2, 3), Linear(3, 2)), timesteps=4)
    student = SpikingStudent(cfg, leak=0.7, thresholds=[9.0])
    with torch.no_grad():
        student.body[1].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]))
        student.body[2].weight.copy_(torch.tensor([[1.0, 2.0, -1.0], [0.5, 0.5, 0.5]]))
    return student


def test_threshold_balancing_on_a_hand_made_layer():
    student = _hand_made_student()
    x = torch.tensor([[[[0.2, 0.9]]], [[[0.6, 0.1]]]])  # currents of layer 1: W1 x per sample
    thresholds = balance_thresholds(student, [x], percentile_value=100.0)
    # max of W1 x over neurons and samples: sample 0 -> [0.2, 1.8, 1.1], sample 1 -> [0.6, 0.2, 0.7]
    assert thresholds == [pytest.approx(1.8)]
    assert student.leak.item() == 1.0  # integrate-and-fire at conversion
    assert student.thresholds.tolist() == [pytest.approx(1.8)]


def test_balancing_uses_the_spikes_of_the_converted_earlier_layers():
    torch.manual_seed(0)
    cfg = StudentConfig("two", (1, 1, 3), 2, (Flatten(), Linear(3, 4), Linear(4, 3), Linear(3, 2)), timesteps=5)
    student = SpikingStudent(cfg)
    x = torch.rand(6, 1, 1, 3)
    thresholds = balance_thresholds(student, [x])
    with torch.no_grad():
        current1 = student.body[1](x.flatten(1)).double().numpy()  # the same float32 currents
    assert thresholds[0] == current1.max()
    spikes1 = lif_reference(np.repeat(current1[None], 5, axis=0), 1.0, thresholds[0])  # [T, B, 4]
    assert 0 < spikes1.sum() < spikes1.size  # the balanced layer really spikes, and not always
    w2 = student.body[2].weight.detach().double().numpy()
    current2 = np.einsum("oi,tbi->tbo", w2, spikes1)
    assert thresholds[1] == pytest.approx(max(current2.max(), 1e-3), rel=1e-6)


def test_percentile_balancing_and_current_capture():
    student = _hand_made_student()
    x = torch.tensor([[[[0.2, 0.9]]], [[[0.6, 0.1]]]])
    current = layer_input_current(student, 0, x, seed=0)
    assert current.shape == (2, 3)  # direct encoding: the first layer's current is computed once
    values = sorted(current.flatten().tolist())  # 0.2 0.2 0.6 0.7 1.1 1.8
    assert percentile(current, 50.0) == pytest.approx(values[2])
    assert balance_thresholds(student, [x], percentile_value=50.0)[0] == pytest.approx(values[2])


def test_conversion_scales_the_readout_by_the_product_of_thresholds_and_keeps_predictions():
    torch.manual_seed(1)
    cfg = StudentConfig("two", (1, 1, 3), 2, (Flatten(), Linear(3, 4), Linear(4, 3), Linear(3, 2)), timesteps=5)
    student = SpikingStudent(cfg)
    x = torch.rand(6, 1, 1, 3)
    readout = student.body[3].weight.detach().clone()
    thresholds = convert(student, [x])
    assert torch.allclose(student.body[3].weight, readout * thresholds[0] * thresholds[1])
    balanced = SpikingStudent(cfg)
    balanced.load_state_dict({**student.state_dict(), "body.3.weight": readout})
    with torch.no_grad():
        scaled, plain = student.run(x, record=True), balanced.run(x, record=True)
    assert all(torch.equal(a, b) for a, b in zip(scaled.spikes, plain.spikes, strict=True))  # no spike changes
    assert torch.allclose(scaled.logits, plain.logits * thresholds[0] * thresholds[1])


def _residual_block_student() -> SpikingStudent:
    """conv - LIF - [conv - LIF - conv + identity shortcut from the first LIF] - LIF - readout, 1x1 kernels."""
    layers = (Conv(1, 3, 1), Conv(3, 3, 1), Conv(3, 3, 1), Shortcut(0, 3, 3), Flatten(), Linear(12, 2))
    torch.manual_seed(3)
    student = SpikingStudent(StudentConfig("block", (1, 2, 2), 2, layers, timesteps=400, reset="soft"))
    with torch.no_grad():
        student.body[0].weight.copy_(torch.tensor([1.0, 0.5, 2.0]).reshape(3, 1, 1, 1))
        student.body[1].weight.copy_(
            torch.tensor([[0.5, 0.2, 0.1], [0.3, 0.6, 0.2], [0.1, 0.1, 0.9]]).reshape(3, 3, 1, 1)
        )
        student.body[2].weight.copy_(
            torch.tensor([[0.4, 0.1, 0.0], [0.2, 0.5, 0.1], [0.1, 0.3, 0.3]]).reshape(3, 3, 1, 1)
        )
    return student


def test_conversion_puts_both_branches_of_a_residual_block_on_one_scale():
    student = _residual_block_student()
    x = torch.rand(16, 1, 2, 2)
    with torch.no_grad():
        _, acts = student.forward_ann(x, record=True)
    conv2 = student.body[2].weight.detach().clone()
    readout = student.body[5].weight.detach().clone()
    thresholds = convert(student, [x])
    scales = rate_scales(student.config, thresholds)
    # the block's LIF continues from the block input's scale, not from the first LIF's
    assert scales == pytest.approx([thresholds[0], thresholds[0] * thresholds[1], thresholds[0] * thresholds[2]])
    assert torch.allclose(student.body[2].weight, conv2 * thresholds[1])  # second conv rescaled by theta_1
    assert torch.allclose(student.body[5].weight, readout * scales[-1])
    with torch.no_grad():
        spikes = student.run(x, record=True).spikes
    for rate, act, scale in zip(
        spikes, acts, scales, strict=True
    ):  # soft-reset IF at T = 400: rate * Lambda ~ ANN activation
        assert torch.allclose(rate.mean(0) * scale, act, atol=0.02 * float(act.max()) + 3 * scale / 400)
