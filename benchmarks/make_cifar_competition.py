"""Lay out CIFAR-10 JPEGs (`train/<class>/*.jpg`, `test/<class>/*.jpg`) as a Kaggle competition.

    python benchmarks/make_cifar_competition.py ../shared/datasets/cifar10 /tmp/cifar-comp \
        --train 5000 --test 1000

Writes labels.csv, sample_submission.csv (shuffled, unsorted columns like Kaggle's),
solution.csv (the test answers, for `dogbreeds score`), and train/ and test/ as symbolic
links to the source images: nothing is copied.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd


def layout(source: Path, out: Path, n_train: int, n_test: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    classes = sorted(p.name for p in (source / "train").iterdir() if p.is_dir())
    for split, n, folder in (("train", n_train, "train"), ("test", n_test, "test")):
        (out / folder).mkdir(parents=True, exist_ok=True)
        rows = []
        per_class = n // len(classes)
        for breed in classes:
            files = sorted((source / split / breed).glob("*.jpg"))
            for f in rng.choice(files, size=min(per_class, len(files)), replace=False):
                image_id = hashlib.md5(f"{split}/{breed}/{f.name}".encode()).hexdigest()
                link = out / folder / f"{image_id}.jpg"
                if not link.exists():
                    link.symlink_to(f.resolve())
                rows.append((image_id, breed))
        frame = pd.DataFrame(rows, columns=["id", "breed"]).sample(frac=1, random_state=seed)
        if split == "train":
            frame.to_csv(out / "labels.csv", index=False)
        else:
            frame.to_csv(out / "solution.csv", index=False)
            columns = list(rng.permutation(classes))
            sample = pd.DataFrame(1.0 / len(classes), index=range(len(frame)), columns=columns)
            sample.insert(0, "id", frame["id"].to_numpy())
            sample.to_csv(out / "sample_submission.csv", index=False)
    print(f"{out}: {n_train} training and {n_test} test images of {len(classes)} classes")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--train", type=int, default=5000)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    layout(args.source, args.out, args.train, args.test, args.seed)
