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


def _table(path: Path, columns: list[str], what: str) -> pd.DataFrame:
    """A CSV read as text, its header checked (`columns` first, as written), its ids unique."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        reason = str(error).splitlines()[0]
        raise DogbreedsError(f"{path} is not a readable CSV ({reason}); it should be {what}") from None
    if list(frame.columns[: len(columns)]) != columns:
        found = ",".join(map(str, frame.columns[:3]))
        raise DogbreedsError(f"{path}: the header must start with {','.join(columns)} (found {found}): {what}")
    if frame.empty:
        raise DogbreedsError(f"{path} has no rows; it should be {what}")
    duplicated = frame["id"][frame["id"].duplicated()]
    if len(duplicated):
        raise DogbreedsError(f"{path}: id {duplicated.iloc[0]} appears more than once; keep one row per id")
    return frame


def score(submission: str | Path, solution: str | Path) -> Score:
    """Kaggle's metric on a local answer key (id,breed): log loss and accuracy."""
    for path in (Path(submission), Path(solution)):
        if not path.is_file():
            raise DogbreedsError(f"{path} not found")
    predicted = _table(Path(submission), ["id"], "a submission: id, then one probability column per breed")
    truth = _table(Path(solution), ["id", "breed"], "an answer key: id,breed")
    classes = list(predicted.columns[1:])
    if not classes:
        raise DogbreedsError(f"{submission} has no breed columns; it should be id, then one column per breed")
    values = predicted[classes].apply(pd.to_numeric, errors="coerce")
    bad = values.isna()
    if bad.any().any():
        row, column = bad.stack()[bad.stack()].index[0]
        raise DogbreedsError(
            f"{submission}: {predicted.at[row, column]!r} for id {predicted.at[row, 'id']}, breed {column} "
            "is not a number; every cell after the id must be a probability"
        )
    merged = truth.merge(predicted[["id"]].join(values), on="id", how="left")
    if merged[classes].isna().any().any():
        raise DogbreedsError(f"{submission} has no row for some ids of {solution}")
    unknown = set(truth["breed"]) - set(classes)
    if unknown:
        raise DogbreedsError(f"{solution} has breeds that are not columns of {submission}: {sorted(unknown)[:3]}")
    labels = merged["breed"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    return Score(**scores(merged[classes].to_numpy(dtype=np.float64), labels))
