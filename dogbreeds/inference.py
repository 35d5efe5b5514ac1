"""Prediction, shared by every command that runs a trained model.

`make_loader` builds a run's loader from its `Loading` settings (the one place that does);
`predict` runs a model over a frame of images, averaging each image with its mirror (flip TTA)
in one compiled graph; a `Predictor` is a saved run ready to predict, whichever method trained
it and however many folds it has, with its calibration applied.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from dogbreeds.cache import FeatureCache, ensemble_features
from dogbreeds.calibration import DEFAULT_FLOOR, Calibration, usage_note
from dogbreeds.competition import Competition
from dogbreeds.config import read_predict_settings
from dogbreeds.distribute import current, user_facing_failures
from dogbreeds.errors import DogbreedsError, damaged
from dogbreeds.files import probability_table
from dogbreeds.metrics import clip, scores
from dogbreeds.models import get_backbone
from dogbreeds.pipeline import LOADERS, Loader
from dogbreeds.progress import KerasSteps, track
from dogbreeds.runs import Run
from dogbreeds.settings import Loading, PredictSettings


def make_loader(
    loading: Loading, replicas: int = 1, classes: int = 0, whole_batches: bool = False, shard: tuple[int, int] = (0, 1)
) -> Loader:
    """The configured loader; its batches are global: --batch-size per replica, times the replicas
    (across several processes, each loads its `shard` of the rows and its share of each batch).
    Training batches get target distributions over `classes` when the batch augmentation makes them;
    `whole_batches`: every batch full (distribute.static_shapes)."""
    return LOADERS[loading.loader](
        image_size=loading.image_size,
        batch_size=loading.batch_size * replicas // shard[1],
        preprocess=get_backbone(loading.backbone).preprocess,
        augmentation=loading.augmentation,
        seed=loading.seed,
        cache=loading.cache_images,
        replicas=replicas,
        whole_batches=whole_batches,
        shard=shard,
        batch_augmentation=loading.batch_augmentation,
        classes=classes,
    )


def with_flip_tta(model: keras.Model) -> keras.Model:
    """The model averaged over each image and its mirror, in one compiled graph."""
    inputs = keras.Input(model.input_shape[1:])
    mirrored = keras.ops.flip(inputs, axis=2)
    outputs = (model(inputs) + model(mirrored)) / 2.0
    return keras.Model(inputs, outputs)


def predict(
    model: keras.Model, loader: Loader, images: pd.DataFrame, *, tta: bool = True, desc: str | None = "images"
) -> np.ndarray:
    """Probabilities for the images of a frame with a `path` column, in its order; shown as
    "predicting N `desc`" (None: not shown, for a caller timing it)."""
    if tta:
        model = with_flip_tta(model)
    probabilities = _shown_predict(model, loader.prediction(images), len(images), loader.batch_size, desc)
    return np.asarray(probabilities[: len(images)], dtype=np.float64)  # without a loader's padding


def _shown_predict(model: keras.Model, batches, images: int, batch_size: int, desc: str | None) -> np.ndarray:
    if desc is None:
        return model.predict(batches, verbose=0)
    with track(f"predicting {images} {desc}", images) as shown:
        return model.predict(batches, verbose=0, callbacks=[KerasSteps(shown, per_batch=batch_size, total=images)])


def check_classes(run: Run, competition: Competition) -> Competition:
    """The competition in the run's class order: the same breeds listed in another order are the
    same competition (a submission keeps the sample's order); other breeds are refused."""
    classes = run.classes()
    if sorted(classes) != sorted(competition.classes):
        raise DogbreedsError(
            f"run {run.path} was trained on {len(classes)} classes that differ from the "
            f"{len(competition.classes)} of {competition.root}; pass the --data it was trained on"
        )
    return competition.ordered_as(classes)


@dataclass
class Calibrated:
    """Probabilities as a user gets them, and the line that says how they were made."""

    probabilities: np.ndarray
    calibration: Calibration | None  # None: clipped at DEFAULT_FLOOR only
    note: str


@dataclass
class Predictor:
    """A trained run, ready to predict any images; a k-fold run averages its folds' models."""

    run: Run
    settings: PredictSettings
    calibration: Calibration | None  # what `dogbreeds evaluate` fitted, if it ran
    folds: list["Predictor"] = field(default_factory=list)  # a k-fold run's members

    @classmethod
    def open(
        cls, run: str | Path | None = None, *, batch_size: int | None = None, calibration: bool = True
    ) -> "Predictor":
        """The run (newest if None); its calibration file is read now, so a broken one fails fast
        (`evaluate`, which rewrites that file, passes calibration=False)."""
        opened = Run.open(run)
        settings = read_predict_settings(opened.file(Run.config_file))
        if batch_size:
            features = settings.features and replace(settings.features, batch_size=batch_size)
            settings = replace(settings, loading=replace(settings.loading, batch_size=batch_size), features=features)
        members = opened.members if opened.folds > 1 else []
        folds = [cls.open(member.path, batch_size=batch_size, calibration=False) for member in members]
        return cls(opened, settings, opened.calibration() if calibration else None, folds)

    @property
    def classes(self) -> list[str]:
        return self.run.classes()

    def competition(self, data: str | Path | None = None, *, need_test: bool = False) -> Competition:
        """The run's competition (or `data`), checked to have the classes the model was trained on."""
        competition = Competition.load(data if data is not None else self.settings.data, need_test=need_test)
        return check_classes(self.run, competition)

    def predict(self, images: pd.DataFrame, *, tta: bool = True, desc: str = "images", strategy=None) -> np.ndarray:
        """Raw probabilities (no calibration, no clipping) for a frame of images, in its order."""
        if self.folds:
            each = [
                fold.predict(images, tta=tta, desc=f"{desc}, fold {i}", strategy=strategy)
                for i, fold in enumerate(self.folds, 1)
            ]
            return np.mean(each, axis=0)
        features = self.settings.features
        with user_facing_failures(self.settings.loading.batch_size):
            if features is not None:
                cache = FeatureCache(features.cache_dir, features.batch_size, recorded=True)
                vectors = ensemble_features(cache, features, images, features.evaluation_views(tta))
                head = self.run.load_model()
                if head.input_shape[-1] != vectors.shape[-1]:
                    raise damaged(
                        self.run.file(Run.model_file),
                        f"it takes {head.input_shape[-1]} features where the run's backbones give "
                        f"{vectors.shape[-1]}: another run's model",
                    )
                return np.asarray(head.predict(vectors, batch_size=1024, verbose=0), dtype=np.float64)
            strategy = strategy or current()
            with strategy.scope():
                loader = make_loader(self.settings.loading, strategy.num_replicas_in_sync)
                model = self.run.load_model(image_size=self.settings.loading.image_size)
                return predict(model, loader, images, tta=tta, desc=desc)

    def held_out(self, competition: Competition, *, tta: bool = True) -> pd.DataFrame:
        """The run's predictions of the labelled images it did not train on (id, then the classes),
        in its held-out file's order: those saved at training when they were made with `tta` as
        asked, else each member predicts the images it held out now. An id that `competition`
        does not label means the run was trained on other data: refused."""
        saved = self.run.held_out()
        missing = saved.loc[~saved["id"].isin(competition.labels["id"]), "id"]
        if len(missing):
            raise DogbreedsError(
                f"run {self.run.path} held out {len(missing)} images that {competition.root / 'labels.csv'} does not "
                f"label (first: {missing.iloc[0]}); pass the --data it was trained on"
            )
        if tta == self.settings.tta:
            return saved
        labels = competition.labels.set_index("id")
        parts = []
        for member in self.folds or [self]:
            ids = member.run.predictions(Run.val_predictions_file)["id"]
            raw = member.predict(labels.loc[ids].reset_index(), tta=tta, desc="held-out images")
            parts.append(probability_table(ids, self.classes, raw))
        return pd.concat(parts).set_index("id").loc[saved["id"]].reset_index()

    def calibrated(self, raw: np.ndarray, *, calibrate: bool = True, tta: bool = True) -> Calibrated:
        """The run's calibration applied (unless `calibrate` is off), else a clip at DEFAULT_FLOOR."""
        used = self.calibration if calibrate else None
        probabilities = used.apply(raw) if used else clip(raw, DEFAULT_FLOOR)
        note = usage_note(used, available=self.calibration is not None, tta=tta, where=self.run.path)
        return Calibrated(probabilities, used, note)


def labelled_scores(model: keras.Model, loader: Loader, frames: dict[str, pd.DataFrame], *, tta: bool = False) -> dict:
    """`<name>_log_loss` and `<name>_accuracy` of the model on each labelled frame."""
    served = with_flip_tta(model) if tta else model
    found = {}
    for name, frame in frames.items():
        batches = loader.evaluation(frame)
        shown_as = f"{'validation' if name == 'val' else name} images"
        probabilities = _shown_predict(served, batches, len(frame), loader.batch_size, shown_as)[: len(frame)]
        found |= {f"{name}_{k}": v for k, v in scores(probabilities, frame["label"].to_numpy()).items()}
    return found
