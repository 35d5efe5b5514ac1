"""`dogbreeds score`: a submission scored against a local answer key, as Kaggle scores it.

pandas and numpy only: it answers without starting TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from dogbreeds.errors import DogbreedsError
from dogbreeds.metrics import scores


@dataclass
class Score:
    log_loss: float
    accuracy: float

    def text(self) -> str:
        return f"log loss {self.log_loss:.4f}, accuracy {self.accuracy:.2%}"


def score(submission: str | Path, solution: str | Path) -> Score:
    """Kaggle's metric on a local answer key (id,breed): log loss and accuracy."""
    for path in (Path(submission), Path(solution)):
        if not path.is_file():
            raise DogbreedsError(f"{path} not found")
    predicted = pd.read_csv(submission, dtype={"id": str})
    truth = pd.read_csv(solution, dtype=str)
    classes = list(predicted.columns[1:])
    merged = truth.merge(predicted, on="id", how="left", validate="one_to_one")
    if merged[classes].isna().any().any():
        raise DogbreedsError(f"{submission} has no row for some ids of {solution}")
    unknown = set(truth["breed"]) - set(classes)
    if unknown:
        raise DogbreedsError(f"{solution} has breeds that are not columns of {submission}: {sorted(unknown)[:3]}")
    labels = merged["breed"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    return Score(**scores(merged[classes].to_numpy(dtype=np.float64), labels))
