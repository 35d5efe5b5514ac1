"""Lay out the real dog photos (`breeds/<breed id>.jpg`, one per breed) as a Kaggle competition.

    python benchmarks/make_dog_competition.py ../shared/datasets/dog-photos /tmp/dogcomp --copies 5

For loader and prediction benchmarks on photos of Kaggle's own sizes (150x132 to 2400x1600):
each photo appears `--copies` times among the training images (under different ids) and
once among the test images. Writes labels.csv and sample_submission.csv (the 120 breeds),
and train/ and test/ as symbolic links to the photos: nothing is copied. The labels are
right but there is one photo per breed, so scores from it mean nothing.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import pandas as pd


def layout(source: Path, out: Path, copies: int) -> None:
    photos = sorted((source / "breeds").glob("*.jpg"))
    breeds = [p.stem for p in photos]
    splits = {"train": [(p, c) for c in range(copies) for p in photos], "test": [(p, 0) for p in photos]}
    frames = {}
    for split, items in splits.items():
        (out / split).mkdir(parents=True, exist_ok=True)
        rows = []
        for photo, copy in items:
            image_id = hashlib.md5(f"{split}/{photo.stem}/{copy}".encode()).hexdigest()
            link = out / split / f"{image_id}.jpg"
            if not link.exists():
                link.symlink_to(photo.resolve())
            rows.append((image_id, photo.stem))
        frames[split] = pd.DataFrame(rows, columns=["id", "breed"])
    frames["train"].to_csv(out / "labels.csv", index=False)
    sample = pd.DataFrame(1.0 / len(breeds), index=range(len(photos)), columns=breeds)
    sample.insert(0, "id", frames["test"]["id"].to_numpy())
    sample.to_csv(out / "sample_submission.csv", index=False)
    print(f"{out}: {len(frames['train'])} training and {len(photos)} test images of {len(breeds)} breeds")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="the dog-photos folder (with breeds/)")
    parser.add_argument("out", type=Path)
    parser.add_argument("--copies", type=int, default=5, help="times each photo appears among the training images")
    args = parser.parse_args()
    layout(args.source, args.out, args.copies)
