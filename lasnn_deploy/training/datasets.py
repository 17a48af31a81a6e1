"""A run's data sets: small training sets decoded once into tensors, and the seeded validation split."""

from __future__ import annotations

import math

import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from ..data import first_samples, sample_count
from ..errors import UserError

IN_MEMORY_LIMIT = 2**31  # bytes: smaller image folders are decoded once and kept as tensors
# A run's training and validation sets: tensors in memory, or a subset of an image folder (both sized).
SizedSet = TensorDataset | Subset


def in_memory(dataset: Dataset, limit: int | None) -> Dataset:
    """The first ``limit`` samples as tensors; a small image folder is decoded once, not per epoch."""
    if isinstance(dataset, TensorDataset) and limit is None:
        return dataset
    count = sample_count(dataset) if limit is None else min(limit, sample_count(dataset))
    image_bytes = dataset[0][0].numel() * 4
    if not isinstance(dataset, TensorDataset) and count * image_bytes > IN_MEMORY_LIMIT:
        return dataset if limit is None else Subset(dataset, range(count))
    return TensorDataset(*first_samples(dataset, count))


def validation_indices(count: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(training, validation) indices of ``count`` samples: ``ceil(fraction * count)`` drawn for validation.

    A seeded permutation, so the split depends only on the run's seed and the data; both lists
    keep the data's order. At least one sample stays on each side.
    """
    if count < 2:
        raise UserError(f"{count} training image(s) cannot be split into training and validation; use more data")
    size = min(count - 1, max(1, math.ceil(fraction * count)))
    chosen = torch.randperm(count, generator=torch.Generator().manual_seed(seed))[:size]
    held = torch.zeros(count, dtype=torch.bool)
    held[chosen] = True
    return torch.nonzero(~held).flatten().tolist(), torch.nonzero(held).flatten().tolist()


def split_validation(dataset: Dataset, fraction: float, seed: int) -> tuple[SizedSet, SizedSet]:
    """The training images without the validation split, and the validation split (tensors when in memory)."""
    train_idx, val_idx = validation_indices(sample_count(dataset), fraction, seed)
    if isinstance(dataset, TensorDataset):
        return (
            TensorDataset(*(t[train_idx] for t in dataset.tensors)),
            in_default_dtype(TensorDataset(*(t[val_idx] for t in dataset.tensors))),
        )
    return Subset(dataset, train_idx), Subset(dataset, val_idx)


def in_default_dtype(dataset: TensorDataset) -> TensorDataset:
    """Images in torch's default float dtype, the one the models are built in (see ``loop.batches``)."""
    images, *rest = dataset.tensors
    return TensorDataset(images.to(torch.get_default_dtype()), *rest)
