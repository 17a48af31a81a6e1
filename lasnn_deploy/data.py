"""Data sets through torchvision's readers, images as ``[C, H, W]`` floats in [0, 1] (docs/semantics.md, 'The float student').

``digits`` (scikit-learn's bundled 8x8 digits, each pixel repeated 2x2 to 16x16) needs no files.
The others read the official files with ``download=False``; a missing folder gives one line that
names the layout expected. The test split is always returned in file order, unshuffled, so that
``--samples N`` means the same N images to every command and every tool.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Sized
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from .errors import UserError

DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10", "cifar100", "imagefolder")
SPLITS = ("train", "test")


@dataclass(frozen=True)
class DataInfo:
    input_shape: tuple[int, int, int]
    num_classes: int


def _digits(split: str) -> Dataset:
    """sklearn digits: every 5th image is the test split (360 images), the rest train (1,437)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32) / 16.0
    images = images.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2).unsqueeze(1)
    labels = torch.tensor(bunch.target, dtype=torch.long)
    test = torch.arange(len(labels)) % 5 == 0
    keep = test if split == "test" else ~test
    return TensorDataset(images[keep], labels[keep])


def _tensor_dataset(images: np.ndarray | torch.Tensor, labels, channels_last: bool) -> TensorDataset:
    """Byte images held in memory by torchvision's readers -> float tensors in [0, 1]."""
    x = torch.as_tensor(np.asarray(images), dtype=torch.uint8)
    x = x.permute(0, 3, 1, 2) if channels_last else x.unsqueeze(1)
    return TensorDataset(x.float().div_(255.0), torch.as_tensor(np.asarray(labels), dtype=torch.long))


def _torchvision_root(data_dir: Path, folder: str) -> Path:
    """torchvision wants the folder that holds ``folder``; accept that folder itself too."""
    if data_dir.name == folder and not (data_dir / folder).is_dir():
        return data_dir.parent
    return data_dir


def _mnist_like(cls_name: str, folder: str) -> Callable[[Path, str], Dataset]:
    def load(data_dir: Path, split: str) -> Dataset:
        import torchvision.datasets as tvd

        root = _torchvision_root(data_dir, folder)
        prefix = "train" if split == "train" else "t10k"
        raw = [root / folder / "raw" / f"{prefix}-{kind}-ubyte" for kind in ("images-idx3", "labels-idx1")]
        try:
            ds = getattr(tvd, cls_name)(str(root), train=split == "train", download=False)
        except Exception as err:  # noqa: BLE001 - torchvision's readers raise RuntimeError, AssertionError, ValueError...
            if all(f.is_file() for f in raw):
                raise UserError(
                    f"{raw[0].parent} holds a corrupt or truncated {cls_name} {split} file "
                    f"({type(err).__name__} {err}); restore the official files"
                ) from err
            raise UserError(
                f"no {cls_name} {split} split under {data_dir}: expected {folder}/raw/{prefix}-images-idx3-ubyte and "
                f"{prefix}-labels-idx1-ubyte inside --data-dir (or --data-dir naming {folder}/ itself)"
            ) from err
        if ds.data.dim() != 3 or len(ds.data) != len(ds.targets):
            raise UserError(
                f"{raw[0].parent}: {list(ds.data.shape)} images but {len(ds.targets)} labels; "
                "restore the official files"
            )
        return _tensor_dataset(ds.data, ds.targets, channels_last=False)

    return load


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays, nothing else.

    A CIFAR batch is a pickle, and a pickle may name any callable (``os.system``); this reader
    refuses every global except numpy's array and scalar rebuilders, so loading never runs code.
    """

    ALLOWED = {(m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray") for n in ("_reconstruct", "scalar")}
    ALLOWED |= {("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to load {module}.{name}: a data batch holds arrays and lists only")


def _cifar_batch(path: Path) -> tuple[np.ndarray, list[int]]:
    """Images ``[N, 32, 32, 3]`` (uint8) and labels of one CIFAR python batch, read without running code."""
    try:
        with open(path, "rb") as f:
            entry = _ArrayUnpickler(f, encoding="latin1").load()
        labels = entry["labels"] if "labels" in entry else entry["fine_labels"]
        images = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        labels = [int(y) for y in labels]
    except Exception as err:  # noqa: BLE001 - any failure to read the batch is the same problem for the user
        raise UserError(
            f"{path} is a corrupt batch file ({type(err).__name__}: {err}); restore the official files"
        ) from err
    if len(images) != len(labels):
        raise UserError(
            f"{path} is a corrupt batch file ({len(images)} images, {len(labels)} labels); restore the official files"
        )
    return images, labels


def _cifar(cls_name: str, folder: str) -> Callable[[Path, str], Dataset]:
    def load(data_dir: Path, split: str) -> Dataset:
        import torchvision.datasets as tvd

        if (data_dir / split).is_dir() and not (data_dir / folder).is_dir():
            return _image_folder(data_dir, split)  # e.g. a CIFAR subset stored as PNG folders
        reader = getattr(tvd, cls_name)  # only for the official file names
        base = _torchvision_root(data_dir, folder) / folder
        files = [base / name for name, _ in (reader.train_list if split == "train" else reader.test_list)]
        if not all(f.is_file() for f in files):
            raise UserError(
                f"no {cls_name} data under {data_dir}: expected the official python batches in {folder}/ inside "
                "--data-dir, or an ImageFolder tree with train/<class>/*.png and test/<class>/*.png"
            )
        batches = [_cifar_batch(f) for f in files]
        images = np.concatenate([b[0] for b in batches])
        return _tensor_dataset(images, [y for b in batches for y in b[1]], channels_last=True)

    return load


def _read_image(path: str):
    """torchvision's image loader, with an unreadable image reported as bad input naming the file."""
    from torchvision.datasets.folder import default_loader

    try:
        return default_loader(path)
    except (OSError, ValueError) as err:  # PIL.UnidentifiedImageError is an OSError
        raise UserError(f"{path} is not a readable image ({type(err).__name__}); remove or replace it") from err


def _image_folder(data_dir: Path, split: str) -> Dataset:
    import torchvision.datasets as tvd
    import torchvision.transforms as tvt

    folder = data_dir / split
    if not folder.is_dir():
        raise UserError(
            f"no {split}/ folder in {data_dir}: an image folder needs train/<class>/<image> and test/<class>/<image>"
        )
    try:
        return tvd.ImageFolder(str(folder), transform=tvt.ToTensor(), loader=_read_image)
    except (FileNotFoundError, RuntimeError) as err:
        raise UserError(f"{folder} holds no images in class folders ({err})") from err


_LOADERS: dict[str, Callable[[Path, str], Dataset]] = {
    "mnist": _mnist_like("MNIST", "MNIST"),
    "fashion-mnist": _mnist_like("FashionMNIST", "FashionMNIST"),
    "cifar10": _cifar("CIFAR10", "cifar-10-batches-py"),
    "cifar100": _cifar("CIFAR100", "cifar-100-python"),
    "imagefolder": _image_folder,
}


def load_split(name: str, data_dir: str | Path | None = None, split: str = "train") -> Dataset:
    """One split of a data set as a ``Dataset`` of ``(image [C,H,W] in [0,1], label)``."""
    if name not in DATASETS:
        raise UserError(f"unknown data set {name!r}: choose one of {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}: use 'train' or 'test'")
    if name == "digits":
        return _digits(split)
    if data_dir is None:
        raise UserError(f"--data-dir is required for {name} (only 'digits' is bundled)")
    data_dir = Path(data_dir).expanduser()
    if not data_dir.is_dir():
        problem = "is a file, not a folder" if data_dir.exists() else "does not exist"
        raise UserError(f"data folder {data_dir} {problem}; {_LAYOUTS[name]}")
    return _LOADERS[name](data_dir, split)


_LAYOUTS = {
    "mnist": "expected a folder holding MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte",
    "fashion-mnist": "expected a folder holding FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte",
    "cifar10": "expected a folder holding cifar-10-batches-py/ or train/ and test/ class folders",
    "cifar100": "expected a folder holding cifar-100-python/ or train/ and test/ class folders",
    "imagefolder": "expected a folder with train/<class>/<image> and test/<class>/<image>",
}


def data_info(dataset: Dataset) -> DataInfo:
    """Input shape and class count of a loaded split."""
    image, _ = dataset[0]
    if isinstance(dataset, TensorDataset):
        num_classes = int(dataset.tensors[1].max()) + 1
    else:
        labels = (int(dataset[i][1]) for i in range(sample_count(dataset)))
        num_classes = len(getattr(dataset, "classes", [])) or max(labels) + 1
    return DataInfo(tuple(image.shape), num_classes)


def first_samples(dataset: Dataset, n: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` samples in file order (all when ``n`` is None), stacked."""
    if n is not None and n < 1:
        raise UserError(f"--samples must be at least 1, got {n}")
    count = sample_count(dataset) if n is None else min(n, sample_count(dataset))
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[0][:count], dataset.tensors[1][:count]
    items = [dataset[i] for i in range(count)]
    return torch.stack([x for x, _ in items]), torch.tensor([int(y) for _, y in items])


def sample_count(dataset: Dataset) -> int:
    """How many samples ``dataset`` holds: its ``len``, which torch's ``Dataset`` type does not declare.

    Every split ``load_split`` returns, and a ``Subset`` or ``TensorDataset`` of one, has a length;
    an iterable-style data set without one is refused here rather than deep inside a loop.
    """
    if not isinstance(dataset, Sized):
        raise TypeError(f"a {type(dataset).__name__} has no length; give a map-style data set (with __len__)")
    return len(dataset)
