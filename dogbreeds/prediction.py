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

from dogbreeds.errors import DogbreedsError
from dogbreeds.images import checked_images, image_paths
from dogbreeds.inference import Predictor


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
