"""Write an image folder (``train/<class>/*.png``, ``test/<class>/*.png``) from a slice of MNIST.

Data sets the quick preset was never tuned on, for docs/results.md (issue 20): a new user's small
28x28 greyscale 10-class set is imitated by a slice of MNIST's training images (optionally with
inverted intensities, a white background) and a slice of its test images, read through
``--dataset imagefolder`` like any user's folder.

    python bench/make_imagefolder.py --mnist ../shared/data --out data/mnist-tail \\
        --train 14878 17435 --test 5557 10000
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image
from torchvision.datasets import MNIST


def write(dataset: MNIST, start: int, stop: int, folder: Path, invert: bool) -> None:
    for i in range(start, stop):
        pixels = dataset.data[i].numpy()
        label = int(dataset.targets[i])
        target = folder / str(label)
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(255 - pixels if invert else pixels, mode="L").save(target / f"{i:05d}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mnist", required=True, help="folder holding MNIST/raw")
    parser.add_argument("--out", required=True, help="image folder to create (must not exist)")
    parser.add_argument("--train", nargs=2, type=int, required=True, metavar=("START", "STOP"))
    parser.add_argument("--test", nargs=2, type=int, required=True, metavar=("START", "STOP"))
    parser.add_argument("--invert", action="store_true", help="255 - pixel (white background)")
    args = parser.parse_args()
    out = Path(args.out)
    if out.exists():
        raise SystemExit(f"{out} exists; choose a new folder")
    write(MNIST(args.mnist, train=True, download=False), *args.train, out / "train", args.invert)
    write(MNIST(args.mnist, train=False, download=False), *args.test, out / "test", args.invert)


if __name__ == "__main__":
    main()
