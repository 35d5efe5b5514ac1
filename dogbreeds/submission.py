"""`dogbreeds submit`: predict every test image and write a checked Kaggle CSV.

Kaggle scores multi-class log loss, so each row must be a probability distribution over
the sample_submission columns, in its row order. Probabilities are clipped away from 0 and
1 (one confident mistake at p=0 would cost infinity) and renormalised; when the run holds a
calibration (`dogbreeds evaluate` fits one), its temperature and floor are applied instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from dogbreeds.calibration import Calibration
from dogbreeds.competition import readable_test_images
from dogbreeds.distribute import make_strategy
from dogbreeds.errors import DogbreedsError
from dogbreeds.files import claim_output, starts_with, table_csv, write_atomic
from dogbreeds.inference import Predictor
from dogbreeds.places import kaggle_submission, submissions_dir
from dogbreeds.runs import Run

SUBMISSION_HEADER = b"id,"
SUBMISSION = "a submission (a CSV whose header starts with id,)"


def check_submission(frame: pd.DataFrame, ids: list[str], classes: list[str]) -> None:
    """Everything Kaggle would reject or punish, checked before the file exists."""
    if list(frame.columns) != ["id", *classes]:
        raise DogbreedsError("submission header differs from sample_submission.csv; this is a bug, please report it")
    if frame["id"].tolist() != list(ids):
        raise DogbreedsError("submission rows differ from the test ids; this is a bug, please report it")
    values = frame[classes].to_numpy(dtype=np.float64)
    if not np.isfinite(values).all():
        bad = frame["id"][~np.isfinite(values).all(axis=1)].iloc[0]
        raise DogbreedsError(f"the model predicted a non-finite probability for test id {bad}; retrain in float32")
    if (values <= 0).any() or (values >= 1).any() or not np.allclose(values.sum(axis=1), 1.0, atol=1e-4):
        raise DogbreedsError("submission rows are not probability distributions; this is a bug, please report it")


def write_csv(frame: pd.DataFrame, out: Path, also: Path | None = None) -> None:
    """The checked submission, written atomically to `out` and, on a Kaggle kernel, to `also`
    (replacing the previous one there)."""
    text = table_csv(frame)
    write_atomic(out, text)
    if also is not None:
        write_atomic(also, text)


@dataclass
class SubmitResult:
    path: Path
    rows: int
    mean_max_probability: float
    top_breeds: list[tuple[str, int]]
    calibration: Calibration | None  # None: clipped at calibration.DEFAULT_FLOOR only
    calibration_note: str
    also: Path | None = None  # the same file as a Kaggle kernel's submission.csv

    def text(self) -> str:
        """What `dogbreeds submit` prints: how the probabilities were made, then the file."""
        top = ", ".join(f"{breed} ({n})" for breed, n in self.top_breeds)
        where = f"{self.path} and {self.also}" if self.also else f"{self.path}"
        return (
            f"{self.calibration_note}\n"
            f"wrote {where}: {self.rows} rows, mean top probability {self.mean_max_probability:.3f}; "
            f"most predicted: {top}"
        )


def submit(
    run: str | Path | None = None,
    data: str | Path | None = None,
    out: str | Path | None = None,
    *,
    tta: bool = True,
    force: bool = False,
    batch_size: int | None = None,
    calibrate: bool = True,
    strategy: str = "auto",
) -> SubmitResult:
    distribution = make_strategy(strategy)  # first: it may connect a TPU or split the CPU
    predictor = Predictor.open(run, batch_size=batch_size)
    competition = predictor.competition(data, need_test=True)
    classes = competition.classes
    also = kaggle_submission() if out is None else None  # a kernel submits /kaggle/working/submission.csv
    out = Path(out) if out is not None else submissions_dir() / f"{predictor.run.name}.csv"
    claim_output(out, force=force, ours=starts_with(SUBMISSION_HEADER), what=SUBMISSION)
    images = readable_test_images(competition)
    raw = predictor.predict(images, tta=tta, desc="test images", strategy=distribution)
    if tta:  # kept for `dogbreeds blend`, which then never runs the network again
        predictor.run.keep_predictions(Run.test_predictions_file, competition.test_ids, classes, raw)
    calibrated = predictor.calibrated(raw, calibrate=calibrate, tta=tta)
    probabilities = calibrated.probabilities

    frame = competition.submission_table(probabilities)
    check_submission(frame, competition.test_ids, competition.columns)
    write_csv(frame, out, also)
    winners = pd.Series(np.asarray(classes)[probabilities.argmax(axis=1)]).value_counts().head(3)
    return SubmitResult(
        path=out,
        rows=len(frame),
        mean_max_probability=float(probabilities.max(axis=1).mean()),
        top_breeds=list(winners.items()),
        calibration=calibrated.calibration,
        calibration_note=calibrated.note,
        also=also,
    )
