"""`dogbreeds submit`: predict every test image and write a checked Kaggle CSV.

Kaggle scores multi-class log loss, so each row must be a probability distribution over
the sample_submission columns, in its row order. Probabilities are clipped away from 0 and
1 (one confident mistake at p=0 would cost infinity) and renormalised; when the run holds a
calibration (`dogbreeds evaluate` fits one), its temperature and floor are applied instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from tqdm.auto import tqdm

from dogbreeds.calibration import EPSILON, Calibration, clip, describe
from dogbreeds.competition import Competition
from dogbreeds.distribute import make_strategy
from dogbreeds.errors import DogbreedsError
from dogbreeds.pipeline import Loader, inspect_images
from dogbreeds.runs import Run, write_atomic
from dogbreeds.training import evaluate_probabilities, make_loader, user_facing_failures

SUBMISSIONS_DIR = Path("submissions")


class ProgressBar(keras.callbacks.Callback):
    """A tqdm bar over prediction batches, in images."""

    def __init__(self, total: int, batch_size: int, desc: str):
        super().__init__()
        self.bar = tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True)
        self.batch_size = batch_size

    def on_predict_batch_end(self, batch, logs=None):
        self.bar.update(min(self.batch_size, self.bar.total - self.bar.n))

    def on_predict_end(self, logs=None):
        self.bar.close()


def with_flip_tta(model: keras.Model) -> keras.Model:
    """The model averaged over each image and its mirror, in one compiled graph."""
    inputs = keras.Input(model.input_shape[1:])
    mirrored = keras.ops.flip(inputs, axis=2)
    outputs = (model(inputs) + model(mirrored)) / 2.0
    return keras.Model(inputs, outputs)


def predict(
    model: keras.Model, loader: Loader, images: pd.DataFrame, *, tta: bool = True, desc: str = "predict"
) -> np.ndarray:
    """Probabilities for the images of a frame with a `path` column, in its order."""
    if tta:
        model = with_flip_tta(model)
    progress = ProgressBar(len(images), loader.batch_size, desc)
    probabilities = model.predict(loader.prediction(images), verbose=0, callbacks=[progress])
    return np.asarray(probabilities[: len(images)], dtype=np.float64)  # without a loader's padding


def predict_run(
    run: Run, config, images: pd.DataFrame, *, tta: bool = True, desc: str = "predict", strategy=None
) -> np.ndarray:
    """A run's probabilities for a frame of images, whichever method trained it."""
    if config.method == "features":
        from dogbreeds.features import predict_images

        return predict_images(run, config, images, tta=tta)
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        loader = make_loader(config, strategy.num_replicas_in_sync)
        return predict(run.load_model(), loader, images, tta=tta, desc=desc)


def readable_test_images(competition: Competition) -> pd.DataFrame:
    """Every test id needs a row, so any image that cannot be read stops submit, named."""
    if not (competition.root / "test").is_dir():
        raise DogbreedsError(f"{competition.root / 'test'} not found: unzip test.zip there")
    report = inspect_images(competition.test_paths())
    bad = report[report["problem"] != ""]
    if len(bad):
        ids = [competition.test_ids[i] for i in bad.index[:3]]
        listing = "; ".join(f"{i} ({p})" for i, p in zip(ids, bad["problem"]))
        raise DogbreedsError(
            f"{len(bad)} test images in {competition.root / 'test'} cannot be read (first: {listing}); "
            "every test id needs a prediction: restore these files from the competition's test.zip"
        )
    return report


def load_competition(run: Run, data: str | Path | None = None, *, need_test: bool = False) -> Competition:
    """The run's competition (or `data`), checked to have the classes the model was trained on."""
    competition = Competition.load(data if data is not None else run.config().data, need_test=need_test)
    check_classes(run, competition)
    return competition


def check_classes(run: Run, competition: Competition) -> None:
    classes = run.classes()
    if classes != competition.classes:
        raise DogbreedsError(
            f"run {run.path} was trained on {len(classes)} classes that differ from the "
            f"{len(competition.classes)} of {competition.root}; pass the --data it was trained on"
        )


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


@dataclass
class SubmitResult:
    path: Path
    rows: int
    mean_max_probability: float
    top_breeds: list[tuple[str, int]]
    calibration: Calibration | None  # None: clipped at EPSILON only
    calibration_note: str


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
    opened = Run.open(run)
    config = opened.config()
    competition = load_competition(opened, data, need_test=True)
    classes = competition.classes
    calibration = opened.calibration()  # read before predicting: a broken file fails fast
    out = Path(out) if out is not None else SUBMISSIONS_DIR / f"{opened.name}.csv"
    if out.exists() and not force:
        raise DogbreedsError(f"{out} exists; pass --force to overwrite it or --out another file")
    images = readable_test_images(competition)
    if batch_size:
        config.batch_size = batch_size
    with user_facing_failures(None, config.batch_size):
        raw = predict_run(opened, config, images, tta=tta, desc="test images", strategy=distribution)
    used = calibration if calibrate else None
    probabilities = used.apply(raw) if used else clip(raw, EPSILON)

    frame = pd.DataFrame(probabilities, columns=classes)
    frame.insert(0, "id", competition.test_ids)
    check_submission(frame, competition.test_ids, classes)
    write_atomic(out, frame.to_csv(index=False, float_format="%.8g"))
    winners = pd.Series(np.asarray(classes)[probabilities.argmax(axis=1)]).value_counts().head(3)
    return SubmitResult(
        path=out,
        rows=len(frame),
        mean_max_probability=float(probabilities.max(axis=1).mean()),
        top_breeds=list(winners.items()),
        calibration=used,
        calibration_note=describe(used, available=calibration is not None, tta=tta, where=opened.path),
    )


def score(submission: str | Path, solution: str | Path) -> dict:
    """Kaggle's metric on a local answer key (id,breed): log loss and accuracy."""
    predicted = pd.read_csv(submission, dtype={"id": str})
    truth = pd.read_csv(solution, dtype=str)
    classes = list(predicted.columns[1:])
    merged = truth.merge(predicted, on="id", how="left", validate="one_to_one")
    if merged[classes].isna().any().any():
        raise DogbreedsError(f"{submission} has no row for some ids of {solution}")
    unknown = set(truth["breed"]) - set(classes)
    if unknown:
        raise DogbreedsError(f"{solution} has breeds that are not columns of {submission}: {sorted(unknown)[:3]}")
    probabilities = merged[classes].to_numpy(dtype=np.float64)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    labels = merged["breed"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    return evaluate_probabilities(np.clip(probabilities, 1e-15, 1 - 1e-15), labels, len(classes))
