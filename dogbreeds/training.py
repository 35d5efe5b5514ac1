"""`dogbreeds train`: a frozen-backbone phase, then fine-tuning, into a run folder.

Phase 1 trains the new head on a frozen backbone (the head starts random: large gradients
would wreck pretrained features). Phase 2 unfreezes the top of the backbone at a tenth of
the learning rate. One checkpoint keeps the best model by validation loss across both.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from sklearn.metrics import log_loss

from dogbreeds.competition import Competition, split
from dogbreeds.config import TrainConfig
from dogbreeds.errors import DogbreedsError
from dogbreeds.models import build_backbone, build_classifier, get_backbone, set_trainable
from dogbreeds.pipeline import LOADERS, Loader
from dogbreeds.report import plot_history
from dogbreeds.runs import Run, temporary_sibling, write_atomic


def resolve_precision(precision: str) -> str:
    """auto: mixed_float16 on a CUDA GPU, mixed_bfloat16 on a TPU, float32 on a CPU."""
    if precision != "auto":
        return precision
    if tf.config.list_logical_devices("TPU"):
        return "mixed_bfloat16"
    if tf.config.list_physical_devices("GPU"):
        return "mixed_float16"
    return "float32"


def make_loader(config: TrainConfig) -> Loader:
    if config.loader not in LOADERS:
        raise DogbreedsError(f"unknown --loader {config.loader!r}; choose one of: {', '.join(LOADERS)}")
    return LOADERS[config.loader](
        image_size=config.image_size,
        batch_size=config.batch_size,
        preprocess=get_backbone(config.backbone).preprocess,
        augmentation=config.augmentation,
        seed=config.seed,
    )


class BestCheckpoint(keras.callbacks.Callback):
    """Saves the model whenever validation loss improves, atomically, across both phases."""

    def __init__(self, run: Run):
        super().__init__()
        self.path = run.file(Run.model_file)
        self.best = math.inf
        self.best_epoch = -1

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("val_loss", math.inf)
        if loss < self.best:
            self.best, self.best_epoch = float(loss), epoch
            tmp = temporary_sibling(self.path)
            self.model.save(tmp)
            tmp.replace(self.path)


class EpochLog(keras.callbacks.Callback):
    """history.csv with the phase, learning rate and time of every epoch, rewritten atomically."""

    def __init__(self, run: Run):
        super().__init__()
        self.path = run.file(Run.log_file)
        self.rows: list[dict] = []
        self.phase = ""

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch, "phase": self.phase, **{k: float(v) for k, v in (logs or {}).items()}}
        row["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        row["seconds"] = round(time.perf_counter() - self.started, 2)
        self.rows.append(row)
        write_atomic(self.path, pd.DataFrame(self.rows).to_csv(index=False))


@dataclass
class TrainResult:
    run: Run
    metrics: dict


def evaluate_probabilities(probabilities: np.ndarray, labels: np.ndarray, n_classes: int) -> dict:
    return {
        "log_loss": float(log_loss(labels, probabilities, labels=np.arange(n_classes))),
        "accuracy": float(np.mean(probabilities.argmax(axis=1) == labels)),
    }


def train(config: TrainConfig, run_dir: str | None = None) -> TrainResult:
    competition = Competition.load(config.data)
    train_frame, val_frame = split(
        competition.labels, val_split=config.val_split, seed=config.seed, limit=config.limit
    )
    missing = competition.missing_images(train_frame["path"].tolist() + val_frame["path"].tolist())
    if missing:
        raise DogbreedsError(
            f"{len(missing)} images listed in labels.csv are missing from {competition.root / 'train'} "
            f"(first: {', '.join(missing[:3])}); unzip train.zip there"
        )
    keras.utils.set_random_seed(config.seed)
    precision = resolve_precision(config.precision)
    keras.mixed_precision.set_global_policy(precision)
    loader = make_loader(config)
    backbone = build_backbone(config.backbone, config.weights, config.image_size)
    model = build_classifier(
        backbone,
        len(competition.classes),
        dropout=config.dropout,
        hidden_units=config.hidden_units,
        pretrained=config.pretrained,
    )
    run = Run.create(config, competition.classes, run_dir)
    print(
        f"training {config.backbone} at {config.image_size}px on {len(train_frame)} images "
        f"({len(val_frame)} held out, {len(competition.classes)} classes, {precision}) -> {run.path}"
    )

    train_data, val_data = loader.training(train_frame), loader.evaluation(val_frame)
    checkpoint, log = BestCheckpoint(run), EpochLog(run)
    verbose = 1 if sys.stdout.isatty() else 2
    phases = [("frozen", config.epochs, config.learning_rate, 0), ("fine_tune", config.fine_tune_epochs, config.fine_tune_lr, config.fine_tune_layers)]
    done = 0
    started = time.perf_counter()
    for phase, epochs, learning_rate, layers in phases:
        if epochs == 0:
            continue
        if phase == "frozen":
            backbone.trainable = False
        else:
            n = set_trainable(backbone, layers, pretrained=config.pretrained)
            print(f"fine-tuning {n} of {len(backbone.layers)} backbone layers at learning rate {learning_rate:g}")
        log.phase = phase
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        history = model.fit(
            train_data,
            validation_data=val_data,
            initial_epoch=done,
            epochs=done + epochs,
            verbose=verbose,
            shuffle=False,  # the loaders shuffle, reproducibly
            callbacks=[
                checkpoint,
                log,
                keras.callbacks.EarlyStopping(patience=config.patience),
                keras.callbacks.ReduceLROnPlateau(factor=0.2, patience=max(1, config.patience - 1), min_lr=1e-7),
            ],
        )
        done += len(history.epoch)
    seconds = time.perf_counter() - started

    best = keras.models.load_model(run.file(Run.model_file), safe_mode=True)
    probabilities = best.predict(loader.evaluation(val_frame), verbose=0)
    metrics = {
        "val_" + k: v
        for k, v in evaluate_probabilities(probabilities, val_frame["label"].to_numpy(), len(competition.classes)).items()
    }
    metrics |= {
        "uniform_log_loss": math.log(len(competition.classes)),
        "best_epoch": checkpoint.best_epoch + 1,
        "epochs": done,
        "train_images": len(train_frame),
        "val_images": len(val_frame),
        "train_seconds": round(seconds, 1),
        "precision": precision,
    }
    run.save_metrics(metrics)
    plot_history(pd.read_csv(run.file(Run.log_file)), run.file(Run.plot_file), title=f"{run.name}")
    return TrainResult(run, metrics)
