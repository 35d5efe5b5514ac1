"""`dogbreeds train`: a frozen-backbone phase, then fine-tuning, into a run folder.

Phase 1 trains the new head on a frozen backbone (the head starts random: large gradients
would wreck pretrained features). Phase 2 unfreezes the top of the backbone at a hundredth of
the learning rate. One checkpoint keeps the best model by validation loss across both.

After every epoch the run folder also gets the model with its optimizer (`last.keras`) and
where training stands (`progress.json`), both written atomically, so `--resume` continues a
run that was stopped by Ctrl-C, a kill, or the end of a Kaggle session.
"""

from __future__ import annotations

import json
import math
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Callable

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from sklearn.metrics import log_loss

from dogbreeds.competition import Competition, split
from dogbreeds.config import TrainConfig
from dogbreeds.distribute import describe, make_strategy
from dogbreeds.errors import DogbreedsError, Interrupted, log
from dogbreeds.models import build_backbone, build_classifier, get_backbone, set_trainable
from dogbreeds.pipeline import LOADERS, Loader, inspect_images
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


def make_loader(config: TrainConfig, replicas: int = 1) -> Loader:
    """The configured loader; its batches are global: --batch-size per replica, times the replicas."""
    if config.loader not in LOADERS:
        raise DogbreedsError(f"unknown --loader {config.loader!r}; choose one of: {', '.join(LOADERS)}")
    return LOADERS[config.loader](
        image_size=config.image_size,
        batch_size=config.batch_size * replicas,
        preprocess=get_backbone(config.backbone).preprocess,
        augmentation=config.augmentation,
        seed=config.seed,
        cache=config.cache_images,
        replicas=replicas,
    )


def evaluate_probabilities(probabilities: np.ndarray, labels: np.ndarray, n_classes: int) -> dict:
    return {
        "log_loss": float(log_loss(labels, probabilities, labels=np.arange(n_classes))),
        "accuracy": float(np.mean(probabilities.argmax(axis=1) == labels)),
    }


@contextmanager
def user_facing_failures(run: Run | None, batch_size: int):
    """Ctrl-C, SIGTERM and out-of-memory become one line that says how to go on."""
    hint = f"; continue with: dogbreeds train --resume {run.path}" if run else ""
    try:
        yield
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted{hint}") from None
    except tf.errors.ResourceExhaustedError:
        raise DogbreedsError(
            f"out of memory at --batch-size {batch_size}: try --batch-size {max(1, batch_size // 2)} "
            f"or a smaller --image-size{hint}"
        ) from None


# -- data -------------------------------------------------------------------------------


@dataclass
class Data:
    competition: Competition
    train: pd.DataFrame
    val: pd.DataFrame
    skipped: pd.DataFrame  # id, path, problem of the images left out


def prepare_data(config: TrainConfig) -> Data:
    """The run's split (the same images for the same config), unreadable images left out.

    Every image's header is read once; those that cannot be read are skipped and named,
    and past --max-unreadable the run refuses to start rather than learn from a broken copy.
    """
    competition = Competition.load(config.data)
    if not (competition.root / "train").is_dir():
        raise DogbreedsError(f"{competition.root / 'train'} not found: unzip train.zip there")
    train_frame, val_frame = split(competition.labels, val_split=config.val_split, seed=config.seed, limit=config.limit)
    used = pd.concat([train_frame, val_frame], ignore_index=True)
    report = inspect_images(used["path"].tolist())  # only the images this run uses (--limit)
    orientation = dict(zip(report["path"], report["orientation"]))
    train_frame = train_frame.assign(orientation=train_frame["path"].map(orientation))
    val_frame = val_frame.assign(orientation=val_frame["path"].map(orientation))
    bad = (report["problem"] != "").to_numpy()
    skipped = used.loc[bad, ["id", "path"]].assign(problem=report.loc[bad, "problem"].to_numpy())
    if len(skipped):
        listing = "; ".join(f"{r.id} ({r.problem})" for r in skipped.head(3).itertuples())
        if bad.mean() > config.max_unreadable:
            raise DogbreedsError(
                f"{len(skipped)} of {len(used)} training images in {competition.root / 'train'} cannot be read "
                f"(first: {listing}); over --max-unreadable {config.max_unreadable:g}: fix those files or their rows"
            )
        log.warning(f"skipping {len(skipped)} unreadable training images (first: {listing})")
        unreadable = set(skipped["path"])
        train_frame = train_frame[~train_frame["path"].isin(unreadable)].reset_index(drop=True)
        val_frame = val_frame[~val_frame["path"].isin(unreadable)].reset_index(drop=True)
    return Data(competition, train_frame, val_frame, skipped)


# -- callbacks --------------------------------------------------------------------------


@dataclass
class Progress:
    """Where training stands: saved after every epoch as progress.json."""

    epoch: int = 0  # completed epochs, on one axis across both phases
    phase: str = ""
    phase_start: int = 0
    completed: list[str] = field(default_factory=list)


class SaveProgress(keras.callbacks.Callback):
    """After each epoch: the epoch log, the best model, the last model, then progress.json."""

    def __init__(self, run: Run, progress: Progress):
        super().__init__()
        self.run, self.progress = run, progress
        log_path = run.file(Run.log_file)
        rows = pd.read_csv(log_path).head(progress.epoch) if log_path.is_file() and progress.epoch else pd.DataFrame()
        self.rows = rows.to_dict("records")
        seen = [r["val_loss"] for r in self.rows if "val_loss" in r]
        self.best = min(seen, default=math.inf)

    def _save_model(self, name: str) -> None:
        path = self.run.file(name)
        tmp = temporary_sibling(path)
        self.model.save(tmp)
        tmp.replace(path)

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = {k: float(v) for k, v in (logs or {}).items()}
        row = {"epoch": epoch, "phase": self.progress.phase, **logs}
        row["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        row["seconds"] = round(time.perf_counter() - self.started, 2)
        self.rows.append(row)
        write_atomic(self.run.file(Run.log_file), pd.DataFrame(self.rows).to_csv(index=False))
        if logs.get("val_loss", math.inf) < self.best:
            self.best = logs["val_loss"]
            self._save_model(Run.model_file)
        self._save_model(Run.last_file)
        self.progress.epoch = epoch + 1
        write_atomic(self.run.file(Run.progress_file), json.dumps(asdict(self.progress)))


# -- the two phases ---------------------------------------------------------------------


@dataclass
class TrainResult:
    run: Run
    metrics: dict


@dataclass
class Phase:
    """A stretch of training with its own optimizer: what the loop needs to run it or resume it."""

    name: str
    epochs: int
    optimizer: Callable[[], keras.optimizers.Optimizer]
    prepare: Callable[[], None] = lambda: None  # set which layers train, before compiling
    adaptive: bool = True  # early stopping and the rate cut on a plateau; False: a fixed schedule runs out
    loss: str | keras.losses.Loss = "sparse_categorical_crossentropy"


def fit_phases(
    model: keras.Model,
    run: Run,
    phases: list[Phase],
    train_data: tf.data.Dataset,
    val_data: tf.data.Dataset,
    progress: Progress,
    patience: int = 3,
) -> None:
    """The phases in turn, on one epoch axis, with the run folder updated after every epoch.

    A phase already in `progress.completed` is skipped; the current one (a resumed run)
    continues without recompiling, so the optimizer loaded with the model keeps its state.
    """
    saver = SaveProgress(run, progress)
    verbose = 1 if sys.stdout.isatty() else 2
    for phase in phases:
        if phase.name in progress.completed:
            continue
        if progress.phase != phase.name:
            progress.phase, progress.phase_start = phase.name, progress.epoch
            phase.prepare()
            model.compile(optimizer=phase.optimizer(), loss=phase.loss, metrics=["accuracy"])
        callbacks = [saver]
        if phase.adaptive:
            callbacks += [
                keras.callbacks.EarlyStopping(patience=patience),
                keras.callbacks.ReduceLROnPlateau(factor=0.2, patience=max(1, patience - 1), min_lr=1e-7),
            ]
        end = progress.phase_start + phase.epochs
        if progress.epoch < end:
            model.fit(
                train_data,
                validation_data=val_data,
                initial_epoch=progress.epoch,
                epochs=end,
                verbose=verbose,
                shuffle=False,  # the loaders shuffle, reproducibly
                callbacks=callbacks,
            )
        progress.completed.append(phase.name)
        write_atomic(run.file(Run.progress_file), json.dumps(asdict(progress)))


def competition_phases(model: keras.Model, config: TrainConfig, replicas: int = 1) -> list[Phase]:
    """Frozen backbone at --learning-rate, then fine-tuning at a hundredth of it.

    Rates follow the global batch (the linear scaling rule).
    """
    backbone = next(layer for layer in model.layers if isinstance(layer, keras.Model))

    def freeze():
        backbone.trainable = False

    def unfreeze():
        n = set_trainable(backbone, config.fine_tune_layers, pretrained=config.pretrained)
        log.info(f"fine-tuning {n} of {len(backbone.layers)} backbone layers at learning rate {fine_tune_lr:g}")

    learning_rate, fine_tune_lr = config.learning_rate * replicas, config.fine_tune_lr * replicas
    return [
        Phase("frozen", config.epochs, lambda: keras.optimizers.Adam(learning_rate), freeze),
        Phase("fine_tune", config.fine_tune_epochs, lambda: keras.optimizers.Adam(fine_tune_lr), unfreeze),
    ]


def _fit_competition(
    model: keras.Model, run: Run, config: TrainConfig, data: Data, progress: Progress, replicas: int = 1
) -> None:
    loader = make_loader(config, replicas)
    phases = competition_phases(model, config, replicas)
    fit_phases(model, run, phases, loader.training(data.train), loader.evaluation(data.val), progress, config.patience)


def _finish(run: Run, config: TrainConfig, data: Data, precision: str, strategy: tf.distribute.Strategy) -> TrainResult:
    """Score the best model on the validation split; metrics.json and the plot."""
    replicas = strategy.num_replicas_in_sync
    best = keras.models.load_model(run.file(Run.model_file), safe_mode=True)  # no code runs from the file
    probabilities = best.predict(make_loader(config, replicas).evaluation(data.val), verbose=0)[: len(data.val)]
    n_classes = len(data.competition.classes)
    scores = evaluate_probabilities(probabilities, data.val["label"].to_numpy(), n_classes)
    history = pd.read_csv(run.file(Run.log_file))
    metrics = {f"val_{k}": v for k, v in scores.items()} | {
        "uniform_log_loss": math.log(n_classes),
        "best_epoch": int(history["val_loss"].idxmin()) + 1,
        "epochs": len(history),
        "train_images": len(data.train),
        "val_images": len(data.val),
        "train_seconds": round(float(history["seconds"].sum()), 1),
        "precision": precision,
        "strategy": describe(strategy),
        "global_batch_size": config.batch_size * replicas,
    }
    run.save_metrics(metrics)
    plot_history(history, run.file(Run.plot_file), title=run.name)
    return TrainResult(run, metrics)


def train(config: TrainConfig, run_dir: str | None = None) -> TrainResult:
    """A new run: everything is checked before the run folder is made."""
    if config.method == "features":
        return train_features(config, run_dir)
    strategy = make_strategy(config.strategy)  # first: it may connect a TPU or split the CPU
    data = prepare_data(config)
    keras.utils.set_random_seed(config.seed)
    precision = resolve_precision(config.precision)
    keras.mixed_precision.set_global_policy(precision)
    with strategy.scope():
        backbone = build_backbone(config.backbone, config.weights, config.image_size)
        model = build_classifier(
            backbone,
            len(data.competition.classes),
            dropout=config.dropout,
            hidden_units=config.hidden_units,
            pretrained=config.pretrained,
        )
    run = Run.create(config, data.competition.classes, run_dir)
    if len(data.skipped):
        write_atomic(run.file(Run.skipped_file), data.skipped.to_csv(index=False))
        log.warning(f"the skipped images are listed in {run.file(Run.skipped_file)}")
    log.info(
        f"training {config.backbone} at {config.image_size}px on {len(data.train)} images "
        f"({len(data.val)} held out, {len(data.competition.classes)} classes, {precision}, "
        f"{describe(strategy)}) -> {run.path}"
    )
    with user_facing_failures(run, config.batch_size), strategy.scope():
        _fit_competition(model, run, config, data, Progress(), strategy.num_replicas_in_sync)
        return _finish(run, config, data, precision, strategy)


def train_features(config: TrainConfig, run_dir: str | None = None) -> TrainResult:
    """--method features: cached backbone vectors (train, validation, test), then a head on them.

    Extraction comes first and fills the cache, so a failure there leaves no run folder;
    the head then trains in seconds, and submit finds the test vectors already cached.
    """
    from dogbreeds import features

    data = prepare_data(config)
    cache = features.FeatureCache(config.cache_dir, config.batch_size)
    started = time.perf_counter()
    test = data.competition.test_frame()
    try:
        report = inspect_images(test["path"].tolist())
        readable = len(test) and (report["problem"] == "").all()
        tests = [test.assign(orientation=report["orientation"].to_numpy())] if readable else []  # for submit
        inputs = features.head_inputs(cache, config, data.train, data.val, tests)
    except KeyboardInterrupt:
        raise Interrupted("interrupted; run the same command again: the extraction resumes where it stopped") from None
    x, y, x_val = inputs.x, inputs.y, inputs.x_val
    extraction_seconds = time.perf_counter() - started

    run = Run.create(config, data.competition.classes, run_dir)
    if len(data.skipped):
        write_atomic(run.file(Run.skipped_file), data.skipped.to_csv(index=False))
    n_classes = len(data.competition.classes)
    log.info(
        f"training a {config.head} head on {x.shape[1]} features x {len(x)} rows "
        f"({config.feature_views} views of {len(data.train)} images; {len(data.val)} held out) -> {run.path}"
    )
    started = time.perf_counter()
    head, history = features.HEADS[config.head](config, x, y, x_val, data.val["label"].to_numpy(), n_classes)
    head_seconds = time.perf_counter() - started
    features.save_head(run, head)
    probabilities = head.predict(x_val, batch_size=1024, verbose=0)
    scores = evaluate_probabilities(probabilities, data.val["label"].to_numpy(), n_classes)
    metrics = {f"val_{k}": v for k, v in scores.items()} | {
        "uniform_log_loss": math.log(n_classes),
        "method": "features",
        "head": config.head,
        "features": int(x.shape[1]),
        "train_images": len(data.train),
        "val_images": len(data.val),
        "feature_rows": len(x),
        "images_extracted": cache.extracted,
        "extraction_seconds": round(extraction_seconds, 2),
        "head_seconds": round(head_seconds, 3),
    }
    if config.head == "dense":
        metrics |= {"best_epoch": int(history["val_loss"].idxmin()) + 1, "epochs": len(history)}
        write_atomic(run.file(Run.log_file), history.to_csv(index=False))
        plot_history(history, run.file(Run.plot_file), title=f"{run.name}: dense head on cached features")
    else:
        write_atomic(run.file("head_search.csv"), history.to_csv(index=False))
    run.save_metrics(metrics)
    return TrainResult(run, metrics)


def resume(run_ref: str) -> TrainResult:
    """Continue a stopped run from its last completed epoch, on the same split."""
    run = Run.open(run_ref, need_model=False)
    config = run.config()
    if config.method == "features":
        raise DogbreedsError(
            f"run {run.path} uses cached features: run its training command again; the extraction resumes by itself"
        )
    progress_path = run.file(Run.progress_file)
    if not progress_path.is_file() or not run.file(Run.last_file).is_file():
        raise DogbreedsError(f"run {run.path} has no completed epoch to resume from; train it again")
    progress = Progress(**json.loads(progress_path.read_text()))
    strategy = make_strategy(config.strategy)
    data = prepare_data(config)
    if data.competition.classes != run.classes():
        raise DogbreedsError(f"the classes of {data.competition.root} differ from run {run.path}'s; resume on its data")
    precision = resolve_precision(config.precision)
    keras.mixed_precision.set_global_policy(precision)
    keras.utils.set_random_seed(config.seed + progress.epoch)  # fresh but repeatable draws from here
    with strategy.scope():  # the model's variables, and its optimizer's, live on every replica
        model = keras.models.load_model(run.file(Run.last_file), safe_mode=True)
    log.info(f"resuming {run.path} after epoch {progress.epoch} ({progress.phase or 'start'}) on {describe(strategy)}")
    with user_facing_failures(run, config.batch_size), strategy.scope():
        _fit_competition(model, run, config, data, progress, strategy.num_replicas_in_sync)
        return _finish(run, config, data, precision, strategy)
