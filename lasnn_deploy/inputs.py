"""The one rule that turns (encoding, images, seed) into the input of every runtime, reference and counter.

- Input spikes ``[T, B, C, H, W]``, when given, are used as they are (T is their first axis).
- Direct encoding feeds the images ``[B, C, H, W]`` unchanged at every step; consumers that take
  them once (the float student's static layers, the Loihi host layer) keep them as images.
- Poisson encoding draws sample ``i`` of a data set with seed ``seed + i`` (``poisson_inputs``), so
  its spikes do not depend on the batch or chunk it falls in: the student, ``evaluate``,
  ``validate``, every target's run and reference and ``energy`` see the same spikes for the same
  seed. :func:`batches` walks a data set in batches under that rule.
- T is the student's (or the file's) own; the one way to run at another T is
  ``SpikingStudent.with_config(timesteps=T)`` (the CLI's ``--timesteps``), or the explicit
  ``timesteps`` of ``SpikingStudent.run`` used by training objectives.

A ``ModelInput`` is what every export target's ``run`` and ``reference`` take; ``InputSpec`` (the
encoding, T and image shape a student or an exported file was made for) checks it once, in the
``Target`` base class.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from .errors import UserError
from .neurons import Encoding, poisson_inputs


@dataclass(frozen=True)
class ModelInput:
    """Exactly one of ``images`` ``[B, C, H, W]`` (direct encoding) or ``spikes`` ``[T, B, C, H, W]``."""

    images: torch.Tensor | None = None
    spikes: torch.Tensor | None = None

    @property
    def batch(self) -> int:
        return len(self.images) if self.images is not None else self._spikes().shape[1]

    def steps(self, timesteps: int) -> torch.Tensor:
        """The input of every step ``[T, B, C, H, W]`` (direct images repeated, not copied)."""
        if self.spikes is not None:
            return self.spikes
        images = self._images()
        return images.unsqueeze(0).expand(timesteps, *images.shape)

    def image(self) -> torch.Tensor:
        """The image of a direct-encoded input: the images, or the first step of given input spikes
        (under direct encoding every step is the same image)."""
        return self.images if self.images is not None else self._spikes()[0]

    def _images(self) -> torch.Tensor:
        if self.images is None:
            raise ValueError("a ModelInput holds images or spikes")
        return self.images

    def _spikes(self) -> torch.Tensor:
        if self.spikes is None:
            raise ValueError("a ModelInput holds images or spikes")
        return self.spikes


def model_input(
    encoding: Encoding | str,
    timesteps: int,
    images: torch.Tensor | None = None,
    input_spikes: torch.Tensor | None = None,
    *,
    seed: int = 0,
    first_index: int = 0,
) -> ModelInput:
    """The input for a student or file of ``encoding`` run for ``timesteps`` steps (see the module docstring).

    ``first_index`` is the index of ``images[0]`` in the whole data set (its Poisson seed offset).
    """
    if input_spikes is not None:
        return ModelInput(spikes=input_spikes)
    if images is None:
        raise UserError("give images [B, C, H, W] or input spikes [T, B, C, H, W]")
    if Encoding(encoding) is Encoding.DIRECT:
        return ModelInput(images=images)
    return ModelInput(spikes=poisson_inputs(torch.as_tensor(images), timesteps, seed, first_index))


@dataclass(frozen=True)
class Batch:
    """One batch of a data set walked in order: where it starts, its images and labels, and its input."""

    start: int  # index of images[0] in the whole data set
    images: torch.Tensor
    labels: torch.Tensor | None
    input: ModelInput


def batches(
    encoding: Encoding | str,
    timesteps: int,
    source: Iterable[torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]],
    *,
    seed: int = 0,
) -> Iterator[Batch]:
    """The batches of ``source`` (image batches, or ``(images, labels)`` batches as a ``DataLoader``
    gives them, in data-set order), each encoded as samples ``start + i`` of the whole set: the same
    spikes whatever the batch size (see the module docstring)."""
    start = 0
    for item in source:
        images, labels = item if isinstance(item, (tuple, list)) else (item, None)
        yield Batch(start, images, labels, model_input(encoding, timesteps, images, seed=seed, first_index=start))
        start += len(images)


def loaded(
    images: torch.Tensor | Dataset, labels: torch.Tensor | None, size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """``(images, labels)`` batches of ``size`` in order: slices of tensors, or loaded from a ``Dataset``
    (its items ``(image, label)``) one batch at a time, so a whole test split is never held at once."""
    if isinstance(images, torch.Tensor):
        for start in range(0, len(images), size):
            yield images[start : start + size], None if labels is None else labels[start : start + size]
        return
    for x, y in DataLoader(images, batch_size=size, shuffle=False):
        yield x, torch.as_tensor(y)


def sample_count(images: torch.Tensor | Dataset) -> int:
    """How many samples a tensor or a (sized) ``Dataset`` holds."""
    return len(images)  # type: ignore[arg-type]  # torch's Dataset declares no __len__; ours all have one


@dataclass(frozen=True)
class InputSpec:
    """What a student, or a file exported from one, takes: its encoding, ``T`` and image shape ``[C, H, W]``."""

    encoding: Encoding
    timesteps: int
    shape: tuple[int, ...]

    @classmethod
    def of(cls, config: Any) -> InputSpec:
        """The spec of a ``StudentConfig``."""
        return cls(Encoding(config.encoding), int(config.timesteps), tuple(config.input_shape))

    def check(self, given: Any, where: Any) -> ModelInput:
        """``given`` as float tensors, after checking it fits: images only under direct encoding, spikes
        with this ``T``, this image shape and at least one sample; one ``UserError`` naming ``where`` else."""
        if not isinstance(given, ModelInput):
            raise UserError(
                f"{where} runs on a ModelInput (lasnn_deploy.inputs.model_input(encoding, T, images)), "
                f"got {type(given).__name__}"
            )
        dims = ", ".join(map(str, self.shape))
        if (given.images is None) == (given.spikes is None):
            raise UserError(f"{where}: give images [B, {dims}] or input spikes [T, B, {dims}], exactly one")
        if given.images is not None:
            images = torch.as_tensor(given.images)
            if self.encoding is not Encoding.DIRECT:
                raise UserError(
                    f"{where} uses {self.encoding} encoding: encode the images with "
                    f"model_input({self.encoding.value!r}, {self.timesteps}, images, seed=SEED)"
                )
            if images.dim() != 4 or tuple(images.shape[1:]) != self.shape or len(images) == 0:
                raise UserError(
                    f"{where} was made for images [B, {dims}], got {list(images.shape)}; "
                    "use the data set the student was trained on"
                )
            return ModelInput(images=images)
        spikes = torch.as_tensor(given.spikes)
        if spikes.dim() != 5 or spikes.shape[0] != self.timesteps or tuple(spikes.shape[2:]) != self.shape:
            raise UserError(
                f"{where} was made for input spikes [T={self.timesteps}, B, {dims}], got {list(spikes.shape)}; "
                "pass spikes with its time steps and input shape"
            )
        if spikes.shape[1] == 0:
            raise UserError(f"{where}: the input holds no samples")
        return ModelInput(spikes=spikes)
