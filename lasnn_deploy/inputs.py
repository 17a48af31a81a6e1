"""The one rule that turns (encoding, images, seed) into the input of every runtime, reference and counter.

- Input spikes ``[T, B, C, H, W]``, when given, are used as they are (T is their first axis).
- Direct encoding feeds the images ``[B, C, H, W]`` unchanged at every step; consumers that take
  them once (the float student's static layers, the Loihi host layer) keep them as images.
- Poisson encoding draws sample ``i`` of a data set with seed ``seed + i`` (``poisson_inputs``), so
  its spikes do not depend on the batch or chunk it falls in: the student, ``evaluate``,
  ``validate``, every runtime's fallback and ``energy`` see the same spikes for the same seed.
- T is the student's (or the file's) own; the one way to run at another T is
  ``SpikingStudent.with_config(timesteps=T)`` (the CLI's ``--timesteps``), or the explicit
  ``timesteps`` of ``SpikingStudent.run`` used by training objectives.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import UserError
from .neurons import poisson_inputs


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
    encoding: str,
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
    if encoding == "direct":
        return ModelInput(images=images)
    return ModelInput(spikes=poisson_inputs(torch.as_tensor(images), timesteps, seed, first_index))
