"""Images per second of each batch augmentation alone, on random 160 px images in memory, one
batch at a time as the loader maps them, against `keras.layers.RandAugment` itself.

    python benchmarks/batch_augmentation.py [--size 160] [--batch 32]
"""

from __future__ import annotations

import argparse
import time

import keras
import numpy as np
import tensorflow as tf

from dogbreeds.augmentation import batch_augmenter
from dogbreeds.settings import BatchAugmentation


def rate(function, images, labels, batch: int) -> float:
    ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch).map(function).prefetch(2)
    for _ in ds:  # tracing and the first pass
        pass
    started, n = time.perf_counter(), 0
    for _ in range(2):
        for _ in ds:
            n += batch
    return n / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    images = np.random.default_rng(0).uniform(0, 255, (8 * args.batch, args.size, args.size, 3)).astype("float32")
    labels = np.arange(len(images)) % 10
    keras_randaugment = keras.layers.RandAugment(value_range=(0, 255), num_ops=2, factor=0.5, seed=1)
    print(f"| what, {args.size} px, batches of {args.batch} | images/s |\n| --- | --- |")
    keras_rate = rate(lambda x, y: (keras_randaugment(x), y), images, labels, args.batch)
    print(f"| keras.layers.RandAugment(num_ops=2) | {keras_rate:.0f} |")
    for options in [
        {"randaugment": 2},
        {"random_erasing": 0.25},
        {"label_smoothing": 0.1},
        {"mixup": 0.2},
        {"cutmix": 1.0},
        {"mixup": 0.2, "cutmix": 1.0},
    ]:
        augment = batch_augmenter(BatchAugmentation(**options), 10, lambda x: x / 127.5 - 1, seed=1)
        what = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in options.items())
        print(f"| {what} | {rate(augment, images, labels, args.batch):.0f} |", flush=True)


if __name__ == "__main__":
    main()
