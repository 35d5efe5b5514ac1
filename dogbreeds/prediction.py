"""`dogbreeds predict`: the most likely breeds of any photos, with the run's calibration.

Photos may be any size and any JPEG or PNG (grayscale, with alpha, 16 bit); every file is
opened and decoded once before the model starts, so a bad file stops the command at once
with its name, not halfway through a batch with a TensorFlow trace.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from dogbreeds.errors import DogbreedsError, log
from dogbreeds.images import inspect_images
from dogbreeds.inference import Predictor

FOLDER_SUFFIXES = (".jpg", ".jpeg", ".png")  # what a folder is searched for


def image_paths(inputs: list[str | Path]) -> list[Path]:
    """Files as given, in the given order; folders searched (with sub-folders) for JPEG and PNG files."""
    if not inputs:
        raise DogbreedsError("no images given: pass image files or folders of them")
    paths: list[Path] = []
    for given in map(Path, inputs):
        if given.is_dir():
            found = sorted(
                p
                for p in given.rglob("*")
                if p.suffix.lower() in FOLDER_SUFFIXES and p.is_file() and not p.name.startswith(".")
            )
            inside = [p for p in found if p.resolve().is_relative_to(given.resolve())]
            if len(inside) < len(found):  # a link out of the folder is not one of its photos
                log.warning(f"{given}: skipped {len(found) - len(inside)} link(s) to files outside it")
            if not inside:
                raise DogbreedsError(f"{given} holds no .jpg, .jpeg or .png files; pass a folder of photos")
            paths.extend(inside)
        elif given.is_file():
            paths.append(given)
        else:
            raise DogbreedsError(f"{given} not found: pass JPEG or PNG files, or folders of them")
    return paths


def checked_images(paths: list[Path]) -> pd.DataFrame:
    """Every file's header read once, so that a broken one is named before any prediction."""
    images = inspect_images([str(p) for p in paths])
    broken = images[images["problem"] != ""]
    if len(broken):
        first = broken.iloc[0]
        raise DogbreedsError(
            f"{first['path']} is not a readable image ({first['problem']})"
            + (f" (and {len(broken) - 1} more)" if len(broken) > 1 else "")
            + "; pass JPEG, PNG, GIF, BMP or WebP files"
        )
    return images


@dataclass
class Prediction:
    path: Path
    top: list[tuple[str, float]]  # (breed, probability), most likely first

    def to_json(self) -> str:
        return json.dumps(
            {"path": str(self.path), "predictions": [{"breed": b, "probability": round(p, 6)} for b, p in self.top]}
        )

    def text(self) -> str:
        width = max(len(b) for b, _ in self.top)
        return "\n".join([str(self.path), *(f"  {i}. {b:<{width}}  {p:.3f}" for i, (b, p) in enumerate(self.top, 1))])


@dataclass
class PredictResult:
    predictions: list[Prediction]
    calibration_note: str

    def text(self, as_json: bool = False) -> str:
        """Each image's breeds: an indented list, or one JSON object a line (without the note)."""
        lines = [p.to_json() for p in self.predictions] if as_json else [p.text() for p in self.predictions]
        return "\n".join(lines)


def predict_images(
    inputs: list[str | Path],
    run: str | Path | None = None,
    *,
    top: int = 5,
    tta: bool = True,
    calibrate: bool = True,
    batch_size: int | None = None,
) -> PredictResult:
    if top < 1:
        raise DogbreedsError(f"--top must be at least 1, got {top}")
    predictor = Predictor.open(run, batch_size=batch_size)
    paths = image_paths(inputs)
    images = checked_images(paths)
    classes = predictor.classes
    raw = predictor.predict(images, tta=tta, desc="images")
    calibrated = predictor.calibrated(raw, calibrate=calibrate, tta=tta)
    probabilities = calibrated.probabilities
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, : min(top, len(classes))]
    predictions = [
        Prediction(path, [(classes[c], float(probabilities[i, c])) for c in order[i]]) for i, path in enumerate(paths)
    ]
    return PredictResult(predictions, calibrated.note)
