r"""Loss terms of the fine-tuning methods (docs/semantics.md, 'Conversion' and the sections after it).

Attention transfer (LaSNN eq. 5-9, after Zagoruyko and Komodakis 2017)::

    Q(A)   = mean over channels of |A|^2, flattened over space           A: [B, C, H, W]
    L_AT   = || Q_S / ||Q_S||_2 - Q_T / ||Q_T||_2 ||_2                    per sample, mean over batch

For the student, ``A`` is a spike tensor averaged over time. Maps of different spatial sizes are
matched by resizing the teacher's map to the student's size (area averaging when shrinking,
bilinear when growing); resizing the 2-D map rather than the C-channel tensor is cheaper and,
for area averaging, a mean of the same squares.

Gradient-based attention (LaSNN eq. 10-13): the teacher's map is the channel mean of
``|dCE/dx|`` (the input gradient, at input resolution); the student's is the spike activation
map of Kim and Panda (2021), averaged over time::

    N[t] = sum over earlier spike times t' < t of exp(-gamma (t - t'))   per neuron
    M[t] = sum over channels of N[t] * s[t]                               [B, H, W]
    SAM  = mean over t of M[t]

Knowledge distillation (Hinton et al. 2015; Lee et al. 2021 for separate temperatures)::

    L_KD = tau_S * tau_T * KL( softmax(z_T / tau_T) || softmax(z_S / tau_S) )

With one temperature this is Hinton's ``tau^2``-scaled term. With ``tau_T > tau_S`` the student
matches the teacher's distribution with logits ``tau_S / tau_T`` times smaller, and an SNN's
logits are spike counts, so the student needs fewer spikes (Lee et al.'s reading of why
heterogeneous temperatures cut spikes at equal accuracy).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

EPS = 1e-12


def attention_map(a: torch.Tensor) -> torch.Tensor:
    """``Q(A)``: mean over channels of ``|A|^2``, ``[B, C, H, W] -> [B, H, W]``."""
    return a.pow(2).mean(1)


def resize_map(q: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resize ``[B, H, W]`` maps to ``size``: area averaging to shrink, bilinear to grow."""
    size = tuple(size)
    if tuple(q.shape[-2:]) == size:
        return q
    shrink = q.shape[-2] >= size[0] and q.shape[-1] >= size[1]
    mode = {"mode": "area"} if shrink else {"mode": "bilinear", "align_corners": False}
    return F.interpolate(q.unsqueeze(1), size=size, **mode).squeeze(1)


def attention_distance(q_student: torch.Tensor, q_teacher: torch.Tensor) -> torch.Tensor:
    """``L_AT`` of ``[B, H, W]`` maps: distance of the L2-normalised flattened maps, batch mean."""
    s = F.normalize(q_student.flatten(1), dim=1, eps=EPS)
    t = F.normalize(resize_map(q_teacher, q_student.shape[-2:]).flatten(1), dim=1, eps=EPS)
    return (s - t).norm(dim=1).mean()


def attention_loss(
    student_maps: Sequence[torch.Tensor], teacher_maps: Sequence[torch.Tensor], beta: float
) -> torch.Tensor:
    """``(beta / 2) * sum_j L_AT,j`` over paired ``[B, H, W]`` maps."""
    distances = (attention_distance(s, t) for s, t in zip(student_maps, teacher_maps, strict=True))
    return beta / 2 * sum(distances, torch.zeros(()))


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    student_temperature: float,
    teacher_temperature: float,
) -> torch.Tensor:
    """``tau_S * tau_T * KL(softmax(z_T / tau_T) || softmax(z_S / tau_S))``, batch mean."""
    log_p_student = F.log_softmax(student_logits / student_temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits / teacher_temperature, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return student_temperature * teacher_temperature * kl


def per_step_cross_entropy(outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """TET's label term (Deng et al. 2022): the mean over steps of CE of each step's output ``[T, B, K]``.

    Every step must classify on its own, not only their mean, which pushes a low-T student to
    carry the answer from the first steps on.
    """
    return F.cross_entropy(outputs.flatten(0, 1), y.repeat(outputs.shape[0]))


def spike_activation_map(spikes: torch.Tensor, gamma: float) -> torch.Tensor:
    """Kim and Panda's SAM of spikes ``[T, B, C, H, W]``, averaged over time: ``[B, H, W]``."""
    decay = math.exp(-gamma)
    score = torch.zeros_like(spikes[0])
    maps = []
    for s in spikes:
        maps.append((score * s).sum(1))
        score = decay * (score + s)
    return torch.stack(maps).mean(0)


def input_gradient_map(teacher: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The teacher's gradient attention: channel mean of ``|dCE/dx|``, ``[B, H, W]``.

    The teacher's own parameters get no gradient.
    """
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        logits = teacher(x)[0]
        (grad,) = torch.autograd.grad(F.cross_entropy(logits, y), x)
    return grad.abs().mean(1)
