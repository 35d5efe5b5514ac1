"""One more generation of JPEG loss for an image-folder dataset: what does lossy encoding cost?

    python benchmarks/jpeg_generation.py ../shared/datasets/cifar10 /tmp/cifar10-gen2
    dogbreeds cifar --model seed-cnn --data /tmp/cifar10-gen2

The shared CIFAR-10 images are quality-75 JPEGs with 4:2:0 chroma; the published accuracies
were measured on CIFAR's own pixels, which are not to be had offline. This script measures the
other direction: every image is encoded again the same way (quality 75, 4:2:0), but shifted by
half a block first (reflect-padded by 4 pixels, cropped back after decoding), so the new
quantisation noise does not line up with the old one and is about as large as the first
generation's. Training and testing on the result says how much one generation of this
encoding costs a model.
"""

from __future__ import annotations

import argparse
from concurrent.futures import ProcessPoolExecutor
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image

SHIFT = 4  # pixels: half a luma block, a quarter of a 4:2:0 chroma block


def regenerate(paths: tuple[Path, Path]) -> None:
    source, target = paths
    pixels = np.asarray(Image.open(source).convert("RGB"))
    padded = np.pad(pixels, ((SHIFT, SHIFT), (SHIFT, SHIFT), (0, 0)), mode="reflect")
    buffer = BytesIO()
    Image.fromarray(padded).save(buffer, "JPEG", quality=75, subsampling="4:2:0")
    decoded = np.asarray(Image.open(buffer).convert("RGB"))[SHIFT:-SHIFT, SHIFT:-SHIFT]
    target.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(decoded).save(target, "PNG")  # lossless from here on


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="train/<class>/*.jpg and test/<class>/*.jpg")
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    jobs = [
        (path, args.out / path.relative_to(args.source).with_suffix(".png"))
        for path in sorted(args.source.glob("*/*/*.jpg"))
    ]
    with ProcessPoolExecutor() as pool:
        list(pool.map(regenerate, jobs, chunksize=512))
    print(f"{args.out}: {len(jobs)} images encoded once more (quality 75, 4:2:0, shifted {SHIFT} px)")


if __name__ == "__main__":
    main()
