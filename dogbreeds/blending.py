"""`dogbreeds blend`: a weighted average of several runs, its weights fitted on held-out images.

Every run keeps its held-out predictions: a k-fold run's out-of-fold `oof.csv` (every labelled
image), a single run's `val_predictions.csv`. On the images all the runs held out, non-negative
weights summing to one are fitted to minimise log loss (scipy's SLSQP; log loss is convex in
the weights, so its minimum is the minimum), then a temperature and floor as `evaluate` fits
them. Each run's test probabilities come from its `test_predictions.csv` (written by `submit`)
or are computed once and saved there, so a blend runs no network twice. A run tracked in MLflow
gets the blend's figures and record in its MLflow run.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import minimize

from dogbreeds.calibration import DEFAULT_FLOOR, Calibration, cross_validated, fit_calibration
from dogbreeds.competition import Competition, readable_test_images
from dogbreeds.errors import DogbreedsError, log
from dogbreeds.files import claim_output, starts_with, write_atomic
from dogbreeds.inference import Predictor
from dogbreeds.metrics import accuracy, clip, log_loss
from dogbreeds.places import kaggle_submission, submissions_dir
from dogbreeds.runs import Run
from dogbreeds.submission import SUBMISSION, SUBMISSION_HEADER, check_submission, write_csv
from dogbreeds.tracking import record_blend

RECORD_START = b'{\n  "runs":'  # what json.dumps(record, indent=2) begins with


def blended(weights: np.ndarray, stack: np.ndarray) -> np.ndarray:
    """sum_i weights[i] * stack[i]: the runs' probabilities mixed, rows still summing to one."""
    return np.tensordot(weights, stack, axes=1)


def fit_weights(stack: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Non-negative weights summing to one that minimise the log loss of the blend of `stack`
    (runs, images, classes); never worse than the best single run."""
    k = len(stack)

    def loss(w: np.ndarray) -> float:
        return log_loss(clip(blended(w, stack), DEFAULT_FLOOR), labels)

    fitted = minimize(
        loss,
        np.full(k, 1.0 / k),
        method="SLSQP",
        bounds=[(0.0, 1.0)] * k,
        constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0}],
    )
    weights = np.clip(fitted.x, 0.0, None)
    candidates = [weights / weights.sum(), *np.eye(k)]  # the optimiser's answer, or a run alone
    return min(candidates, key=loss)


def _cross_validated(stack: np.ndarray, labels: np.ndarray, seed: int = 0) -> float:
    """The blend's log loss on each half with weights fitted on the other half, over all images."""

    def score(weights, rows):
        return log_loss(clip(blended(weights, stack[:, rows]), DEFAULT_FLOOR), labels[rows])

    return cross_validated(len(labels), seed, lambda rows: fit_weights(stack[:, rows], labels[rows]), score)


@dataclass
class BlendResult:
    path: Path
    runs: list[str]
    weights: list[float]
    figures: dict
    calibration: Calibration

    def text(self) -> str:
        """The table `dogbreeds blend` prints: each run, the plain mean, the fitted blend."""
        f = self.figures
        width = max(len(r) for r in [*self.runs, "equal-weight mean"])
        lines = [f"on the {f['images']} held-out images all the runs predicted:"]
        lines.append(f"  {'run':<{width}}  log loss  weight")
        for run, loss, weight in zip(self.runs, f["run_log_loss"], self.weights):
            lines.append(f"  {run:<{width}}  {loss:8.4f}  {weight:6.3f}")
        c = self.calibration
        lines += [
            f"  {'equal-weight mean':<{width}}  {f['equal_weight_log_loss']:8.4f}",
            f"  {'fitted blend':<{width}}  {f['blend_log_loss']:8.4f}  (cross-validated on halves: "
            f"{f['blend_log_loss_cross_validated'] or math.nan:.4f}; accuracy {f['blend_accuracy']:.2%})",
            f"  {'calibrated blend':<{width}}  {c.log_loss_after:8.4f}  (temperature {c.temperature:.3f}, "
            f"floor {c.floor:g})",
            f"wrote {self.path} and {self.path.with_suffix('.json')} in {f['seconds']:.1f} s",
        ]
        return "\n".join(lines)


def _same_images(runs: list[Run], tables: list[pd.DataFrame]) -> None:
    first = set(tables[0]["id"])
    for run, table in zip(runs[1:], tables[1:]):
        if set(table["id"]) != first:
            shared = len(first & set(table["id"]))
            raise DogbreedsError(
                f"runs {runs[0].path} and {run.path} held out different images ({len(first)} and {len(table)}, "
                f"{shared} shared): blend runs with the same --folds (or --val-split) and --seed"
            )


def _test_predictions(predictor: Predictor, competition: Competition, images: pd.DataFrame) -> np.ndarray:
    """The run's saved test probabilities (flip TTA) when they are for these test ids, else computed and saved."""
    run = predictor.run
    if run.file(Run.test_predictions_file).is_file():
        saved = run.predictions(Run.test_predictions_file)
        if saved["id"].tolist() == competition.test_ids:
            return saved[competition.classes].to_numpy(dtype=np.float64)
    log.info(f"{run.path} holds no test predictions for these images: made now, kept in {Run.test_predictions_file}")
    raw = predictor.predict(images, tta=True, desc=f"test images with {run.name}")
    run.keep_predictions(Run.test_predictions_file, competition.test_ids, competition.classes, raw)
    return raw


def blend(
    runs: list[str | Path],
    data: str | Path | None = None,
    out: str | Path | None = None,
    *,
    force: bool = False,
    batch_size: int | None = None,
) -> BlendResult:
    started = time.perf_counter()
    if len(runs) < 2:
        raise DogbreedsError("blend needs at least two runs: dogbreeds blend RUN RUN ...")
    predictors = [Predictor.open(run, batch_size=batch_size, calibration=False) for run in runs]
    opened = [p.run for p in predictors]
    for run in opened[1:]:
        if run.classes() != opened[0].classes():
            raise DogbreedsError(
                f"runs {opened[0].path} and {run.path} have different classes or class orders; "
                "blend runs trained on the same competition"
            )
    tables = [run.held_out().sort_values("id", kind="stable").reset_index(drop=True) for run in opened]
    _same_images(opened, tables)
    competition = predictors[0].competition(data, need_test=True)
    also = kaggle_submission() if out is None else None  # a kernel submits /kaggle/working/submission.csv
    out = Path(out) if out is not None else submissions_dir() / f"blend-{datetime.now():%Y%m%d-%H%M%S}.csv"
    if out.suffix.lower() == ".json":
        raise DogbreedsError(f"--out {out}: the blend's record is written beside the submission as .json; give a .csv")
    claim_output(out, force=force, ours=starts_with(SUBMISSION_HEADER), what=SUBMISSION)
    claim_output(out.with_suffix(".json"), force=force, ours=starts_with(RECORD_START), what="a blend's record")

    classes = competition.classes
    label_of = dict(zip(competition.labels["id"], competition.labels["label"]))
    ids = tables[0]["id"]
    if not ids.isin(list(label_of)).all():
        raise DogbreedsError(f"the runs held out images that are not in {competition.root / 'labels.csv'}; pass --data")
    labels = ids.map(label_of).to_numpy()
    stack = np.stack([table[classes].to_numpy(dtype=np.float64) for table in tables])
    weights = fit_weights(stack, labels)
    mixed = blended(weights, stack)
    calibration = fit_calibration(mixed, labels)
    figures = {
        "images": len(labels),
        "run_log_loss": [log_loss(clip(p, DEFAULT_FLOOR), labels) for p in stack],
        "run_accuracy": [accuracy(p, labels) for p in stack],
        "equal_weight_log_loss": log_loss(clip(stack.mean(axis=0), DEFAULT_FLOOR), labels),
        "blend_log_loss": log_loss(clip(mixed, DEFAULT_FLOOR), labels),
        "blend_log_loss_cross_validated": _cross_validated(stack, labels) if len(labels) >= 4 else None,
        "blend_accuracy": accuracy(mixed, labels),
    }

    images = readable_test_images(competition)
    tests = np.stack([_test_predictions(p, competition, images) for p in predictors])
    probabilities = calibration.apply(blended(weights, tests))
    frame = competition.submission_table(probabilities)
    check_submission(frame, competition.test_ids, competition.columns)
    figures["seconds"] = round(time.perf_counter() - started, 2)
    names = [str(run.path) for run in opened]
    record = {
        "runs": names,
        "weights": [float(w) for w in weights],
        "figures": figures,
        "calibration": json.loads(calibration.to_json()),
    }
    write_csv(frame, out, also)
    write_atomic(out.with_suffix(".json"), json.dumps(record, indent=2))
    tracked = {
        "log_loss": figures["blend_log_loss"],
        "log_loss_cross_validated": figures["blend_log_loss_cross_validated"],
        "log_loss_calibrated": calibration.log_loss_after,
        "accuracy": figures["blend_accuracy"],
    }
    record_blend(opened, [float(w) for w in weights], tracked, out.with_suffix(".json"))
    return BlendResult(out, names, [float(w) for w in weights], figures, calibration)
