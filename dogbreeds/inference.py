"""Prediction, shared by every command that runs a trained model.

`make_loader` builds a run's loader from its config; `predict` runs a model over a frame of
images, averaging each image with its mirror (flip TTA) in one compiled graph; a `Predictor`
is a saved run ready to predict, whichever method trained it, with its calibration applied.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from tqdm.auto import tqdm

from dogbreeds.cache import FeatureCache, ensemble_features, evaluation_views
from dogbreeds.calibration import EPSILON, Calibration, clip, usage_note
from dogbreeds.competition import Competition
from dogbreeds.config import TrainConfig
from dogbreeds.distribute import user_facing_failures
from dogbreeds.errors import DogbreedsError
from dogbreeds.metrics import scores
from dogbreeds.models import get_backbone
from dogbreeds.pipeline import LOADERS, Loader
from dogbreeds.runs import Run


def make_loader(config: TrainConfig, replicas: int = 1, classes: int = 0) -> Loader:
    """The configured loader; its batches are global: --batch-size per replica, times the replicas.
    Training batches get target distributions over `classes` when the batch augmentation makes them."""
    return LOADERS[config.loader](
        image_size=config.image_size,
        batch_size=config.batch_size * replicas,
        preprocess=get_backbone(config.backbone).preprocess,
        augmentation=config.augmentation,
        seed=config.seed,
        cache=config.cache_images,
        replicas=replicas,
        batch_augmentation=config.batch_augmentation,
        classes=classes,
    )


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


def with_flip_translate_tta(model: keras.Model, pixels: int = 1) -> keras.Model:
    """The model averaged over six views, in one compiled graph: each image and its mirror, as
    they are and moved `pixels` up-left and down-right (edges reflected), as airbench predicts.
    The unmoved pair weighs as much as the four moved views together. Like airbench it averages
    logits: the softmax of the views' mean log-probability is the softmax of their mean logits."""
    inputs = keras.Input(model.input_shape[1:])
    height, width = model.input_shape[1:3]
    padded = keras.ops.pad(inputs, [(0, 0), (pixels, pixels), (pixels, pixels), (0, 0)], mode="reflect")
    moved = [padded[:, :height, :width], padded[:, 2 * pixels :, 2 * pixels :]]

    def log_probabilities(x):
        return keras.ops.log(keras.ops.maximum(model(x), 1e-30))

    pairs = [(log_probabilities(x) + log_probabilities(keras.ops.flip(x, axis=2))) / 2.0 for x in [inputs, *moved]]
    outputs = keras.ops.softmax(pairs[0] / 2.0 + (pairs[1] + pairs[2]) / 4.0)
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


def check_classes(run: Run, competition: Competition) -> None:
    classes = run.classes()
    if classes != competition.classes:
        raise DogbreedsError(
            f"run {run.path} was trained on {len(classes)} classes that differ from the "
            f"{len(competition.classes)} of {competition.root}; pass the --data it was trained on"
        )


@dataclass
class Calibrated:
    """Probabilities as a user gets them, and the line that says how they were made."""

    probabilities: np.ndarray
    calibration: Calibration | None  # None: clipped at EPSILON only
    note: str


@dataclass
class Predictor:
    """A trained run, ready to predict any images; a k-fold run averages its folds' models."""

    run: Run
    config: TrainConfig
    calibration: Calibration | None  # what `dogbreeds evaluate` fitted, if it ran
    folds: list["Predictor"] = field(default_factory=list)

    @classmethod
    def open(
        cls, run: str | Path | None = None, *, batch_size: int | None = None, calibration: bool = True
    ) -> "Predictor":
        """The run (newest if None); its calibration file is read now, so a broken one fails fast
        (`evaluate`, which rewrites that file, passes calibration=False)."""
        opened = Run.open(run)
        config = opened.config()
        if batch_size:
            config.batch_size = batch_size
        folds = [
            cls.open(opened.fold(i).path, batch_size=batch_size, calibration=False)
            for i in range(1, opened.folds + 1)
            if opened.folds > 1
        ]
        return cls(opened, config, opened.calibration() if calibration else None, folds)

    @property
    def classes(self) -> list[str]:
        return self.run.classes()

    def competition(self, data: str | Path | None = None, *, need_test: bool = False) -> Competition:
        """The run's competition (or `data`), checked to have the classes the model was trained on."""
        competition = Competition.load(data if data is not None else self.config.data, need_test=need_test)
        check_classes(self.run, competition)
        return competition

    def predict(self, images: pd.DataFrame, *, tta: bool = True, desc: str = "predict", strategy=None) -> np.ndarray:
        """Raw probabilities (no calibration, no clipping) for a frame of images, in its order."""
        if self.folds:
            each = [
                fold.predict(images, tta=tta, desc=f"{desc}, fold {i}", strategy=strategy)
                for i, fold in enumerate(self.folds, 1)
            ]
            return np.mean(each, axis=0)
        with user_facing_failures(self.config.batch_size):
            if self.config.method == "features":
                cache = FeatureCache(self.config.cache_dir, self.config.batch_size)
                vectors = ensemble_features(cache, self.config, images, evaluation_views(self.config, tta))
                head = self.run.load_model()
                return np.asarray(head.predict(vectors, batch_size=1024, verbose=0), dtype=np.float64)
            strategy = strategy or tf.distribute.get_strategy()
            with strategy.scope():
                loader = make_loader(self.config, strategy.num_replicas_in_sync)
                return predict(self.run.load_model(), loader, images, tta=tta, desc=desc)

    def calibrated(self, raw: np.ndarray, *, calibrate: bool = True, tta: bool = True) -> Calibrated:
        """The run's calibration applied (unless `calibrate` is off), else a clip at EPSILON."""
        used = self.calibration if calibrate else None
        probabilities = used.apply(raw) if used else clip(raw, EPSILON)
        note = usage_note(used, available=self.calibration is not None, tta=tta, where=self.run.path)
        return Calibrated(probabilities, used, note)


def labelled_scores(model: keras.Model, loader: Loader, frames: dict[str, pd.DataFrame], *, tta: bool = False) -> dict:
    """`<name>_log_loss` and `<name>_accuracy` of the model on each labelled frame."""
    served = with_flip_tta(model) if tta else model
    found = {}
    for name, frame in frames.items():
        probabilities = served.predict(loader.evaluation(frame), verbose=0)[: len(frame)]
        found |= {f"{name}_{k}": v for k, v in scores(probabilities, frame["label"].to_numpy()).items()}
    return found
