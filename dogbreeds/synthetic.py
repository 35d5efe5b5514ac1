"""A small competition in the Kaggle layout, made of generated pictures a model can learn.

The demo, `dogbreeds bench` and the tests all start from one of these.

Each class is a coloured shape (disc, square, triangle, bar...) at a random place, size and
shade on a noisy background, so a network has something real to learn and the whole
workflow (train, submit) can be seen working in minutes on a CPU, before any download.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

SHAPES = ("disc", "square", "triangle", "bar", "ring", "cross")
COLOURS = ((220, 40, 40), (40, 160, 60), (40, 80, 220), (230, 180, 30), (150, 60, 180), (20, 170, 170))
# Named like breeds, deliberately unsorted, as Kaggle's columns may be.
CLASS_NAMES = ("sheltie", "beagle", "pug", "dingo", "whippet", "akita")


def draw(
    shape: str, colour: tuple[int, int, int], size: int | tuple[int, int], rng: np.random.Generator
) -> Image.Image:
    width, height = (size, size) if isinstance(size, int) else size
    background = rng.integers(90, 170, size=3)
    noise = rng.normal(0, 18, size=(height, width, 3))
    image = Image.fromarray(np.clip(background + noise, 0, 255).astype(np.uint8))
    pen = ImageDraw.Draw(image)
    r = min(width, height) * rng.uniform(0.2, 0.35)
    cx, cy = rng.uniform(r, width - r), rng.uniform(r, height - r)
    fill = tuple(int(np.clip(c + rng.integers(-25, 26), 0, 255)) for c in colour)
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "disc":
        pen.ellipse(box, fill=fill)
    elif shape == "square":
        pen.rectangle(box, fill=fill)
    elif shape == "triangle":
        pen.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    elif shape == "bar":
        pen.rectangle((cx - r, cy - r / 3, cx + r, cy + r / 3), fill=fill)
    elif shape == "ring":
        pen.ellipse(box, outline=fill, width=max(2, int(r / 3)))
    else:
        pen.rectangle((cx - r, cy - r / 4, cx + r, cy + r / 4), fill=fill)
        pen.rectangle((cx - r / 4, cy - r, cx + r / 4, cy + r), fill=fill)
    return image


def make_competition(
    root: str | Path,
    *,
    n_classes: int = 4,
    train_per_class: int = 40,
    n_test: int = 40,
    image_size: int | tuple[int, int] = 96,
    seed: int = 0,
) -> Path:
    """Write labels.csv, train/, test/, sample_submission.csv and the answers, solution.csv.

    `image_size` is a side, or (width, height): (500, 375) costs what a typical photo costs to decode.
    """
    if not 2 <= n_classes <= len(SHAPES):
        raise ValueError(f"n_classes must be in [2, {len(SHAPES)}]")
    root = Path(root)
    (root / "train").mkdir(parents=True, exist_ok=True)
    (root / "test").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    classes = list(CLASS_NAMES[:n_classes])

    def picture(label: int) -> Image.Image:
        return draw(SHAPES[label], COLOURS[label], image_size, rng)

    rows = []
    for i in range(n_classes * train_per_class):
        label = i % n_classes
        image_id = f"{rng.integers(16**12):012x}"
        picture(label).save(root / "train" / f"{image_id}.jpg", quality=90)
        rows.append((image_id, classes[label]))
    pd.DataFrame(rows, columns=["id", "breed"]).to_csv(root / "labels.csv", index=False)

    test_ids = [f"t{rng.integers(16**12):012x}" for _ in range(n_test)]
    answers = rng.integers(n_classes, size=n_test)
    for image_id, label in zip(test_ids, answers):
        picture(int(label)).save(root / "test" / f"{image_id}.jpg", quality=90)
    pd.DataFrame({"id": test_ids, "breed": np.asarray(classes)[answers]}).to_csv(root / "solution.csv", index=False)
    sample = pd.DataFrame(1.0 / n_classes, index=range(n_test), columns=classes)
    sample.insert(0, "id", test_ids)
    sample.to_csv(root / "sample_submission.csv", index=False)
    return root
