"""The torchvision code paths, on small data set files that the tests write in the official formats."""

import pickle

import numpy as np
import pytest
import torch
from helpers import write_idx
from PIL import Image

from lasnn_deploy.data import data_info, first_samples, load_split
from lasnn_deploy.errors import UserError


@pytest.fixture
def mnist_root(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 12), ("t10k", 5)):
        write_idx(
            tmp_path / "MNIST" / "raw",
            prefix,
            rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
            rng.integers(0, 10, n, dtype=np.uint8),
        )
    return tmp_path


@pytest.mark.parametrize("name", ["root", "MNIST"])
def test_mnist_reads_official_idx_files_from_either_folder(mnist_root, name):
    data_dir = mnist_root if name == "root" else mnist_root / "MNIST"
    train, test = load_split("mnist", data_dir, "train"), load_split("mnist", data_dir, "test")
    assert len(train) == 12 and len(test) == 5
    raw = (mnist_root / "MNIST/raw/t10k-images-idx3-ubyte").read_bytes()[16:]
    x, y = first_samples(test, 2)
    assert torch.equal(x[0, 0], torch.tensor(np.frombuffer(raw[:784], np.uint8).reshape(28, 28)).float() / 255)
    assert data_info(test).input_shape == (1, 28, 28)


def test_missing_mnist_names_the_layout(tmp_path):
    with pytest.raises(UserError, match=r"MNIST/raw/train-images-idx3-ubyte"):
        load_split("mnist", tmp_path, "train")
    with pytest.raises(UserError, match=r"does not exist; expected a folder holding MNIST/raw"):
        load_split("mnist", tmp_path / "nowhere", "train")


def write_cifar(root, folder, train_files, test_file, meta_name, label_key, n=4, classes=10):
    rng = np.random.default_rng(1)
    base = root / folder
    base.mkdir(parents=True)
    for name in [*train_files, test_file]:
        batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), label_key: list(rng.integers(0, classes, n))}
        (base / name).write_bytes(pickle.dumps(batch))
    key = "label_names" if label_key == "labels" else "fine_label_names"
    (base / meta_name).write_bytes(pickle.dumps({key: [f"c{i}" for i in range(classes)]}))
    return base


def write_cifar10(root):
    """CIFAR-10's python layout: five training batches, a test batch and the label names."""
    batches = [f"data_batch_{i}" for i in range(1, 6)]
    return write_cifar(root, "cifar-10-batches-py", batches, "test_batch", "batches.meta", "labels")


def test_cifar10_and_cifar100_read_python_batches(tmp_path):
    base = write_cifar10(tmp_path)
    train = load_split("cifar10", tmp_path, "train")
    assert len(train) == 20 and data_info(train).input_shape == (3, 32, 32)
    raw = pickle.loads((base / "test_batch").read_bytes())["data"][0]
    x, _ = first_samples(load_split("cifar10", base, "test"), 1)
    assert torch.equal(x[0], torch.tensor(raw.reshape(3, 32, 32)).float() / 255)
    write_cifar(tmp_path, "cifar-100-python", ["train"], "test", "meta", "fine_labels", classes=100)
    assert len(load_split("cifar100", tmp_path, "test")) == 4


def test_corrupt_cifar_batch_is_one_clear_error(tmp_path):
    base = write_cifar10(tmp_path)
    (base / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="corrupt batch"):
        load_split("cifar10", tmp_path, "test")


def test_image_folder_and_cifar_subset_layout(tmp_path):
    rng = np.random.default_rng(2)
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
                    tmp_path / split / cls / f"{i}.png"
                )
    for name in ("imagefolder", "cifar10"):
        test = load_split(name, tmp_path, "test")
        assert len(test) == 4 and data_info(test).num_classes == 2
        x, y = first_samples(test, None)
        assert x.shape == (4, 3, 32, 32) and y.tolist() == [0, 0, 1, 1]
    with pytest.raises(UserError, match="train/<class>"):
        load_split("imagefolder", tmp_path / "train", "test")


def test_digits_is_bundled_and_split_deterministically():
    train, test = load_split("digits", None, "train"), load_split("digits", None, "test")
    assert len(train) + len(test) == 1797 and len(test) == 360
    assert data_info(test).input_shape == (1, 16, 16)
    from sklearn.datasets import load_digits

    x, y = first_samples(test, 2)  # images 0 and 5 of sklearn's order
    assert y.tolist() == load_digits().target[[0, 5]].tolist()
    assert torch.equal(x[1, 0, ::2, ::2], torch.tensor(load_digits().images[5], dtype=torch.float32) / 16)


@pytest.mark.parametrize(
    "args,match",
    [
        (("svhn", None, "train"), "unknown data set"),
        (("mnist", None, "train"), "--data-dir is required"),
        (("digits", None, "validation"), "unknown split"),
    ],
)
def test_bad_data_arguments(args, match):
    with pytest.raises(UserError, match=match):
        load_split(*args)
