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
import re
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import keras
import pandas as pd
import tensorflow as tf

from dogbreeds.cache import FeatureCache, HeadInputs, head_inputs, labelled_vectors
from dogbreeds.competition import Data, labels_digest, prepare_data
from dogbreeds.config import TrainConfig
from dogbreeds.distribute import describe, make_strategy, use_precision, user_facing_failures
from dogbreeds.errors import DogbreedsError, Interrupted, log
from dogbreeds.heads import fit_head
from dogbreeds.images import inspect_images
from dogbreeds.inference import labelled_scores, make_loader, predict
from dogbreeds.metrics import scores
from dogbreeds.models import build_backbone, build_classifier, set_trainable
from dogbreeds.report import plot_history
from dogbreeds.runs import Run


def _resume_hint(run: Run) -> str:
    return f"; continue with: dogbreeds train --resume {run.path}"


# -- callbacks --------------------------------------------------------------------------


@dataclass
class Progress:
    """Where training stands: saved after every epoch as progress.json."""

    epoch: int = 0  # completed epochs, on one axis across both phases
    phase: str = ""
    phase_start: int = 0
    completed: list[str] = field(default_factory=list)


class AveragedWeights(keras.callbacks.SwapEMAWeights):
    """`--ema`: Keras validates with the optimizer's moving average of the weights; this also
    lends it to SaveProgress for the best model. The last model keeps the raw weights and the
    average in its optimizer, so that a resumed run goes on exactly; fit leaves the average in
    the model when a phase ends."""

    @contextmanager
    def holding_average(self):
        self._swap_variables()
        try:
            yield
        finally:
            self._swap_variables()


class SaveProgress(keras.callbacks.Callback):
    """After each epoch: the epoch log, the best model, the last model, then progress.json."""

    def __init__(self, run: Run, progress: Progress, resumable: bool = True):
        super().__init__()
        self.run, self.progress, self.resumable = run, progress, resumable
        self.averaged: AveragedWeights | None = None  # set by fit_phases for an optimizer with use_ema
        log_path = run.file(Run.log_file)
        rows = pd.read_csv(log_path).head(progress.epoch) if log_path.is_file() and progress.epoch else pd.DataFrame()
        self.rows = rows.to_dict("records")
        seen = [r["val_loss"] for r in self.rows if "val_loss" in r]
        self.best = min(seen, default=math.inf)

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = {k: float(v) for k, v in (logs or {}).items()}
        row = {"epoch": epoch, "phase": self.progress.phase, **logs}
        row["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        row["seconds"] = round(time.perf_counter() - self.started, 2)
        self.rows.append(row)
        self.run.write(Run.log_file, pd.DataFrame(self.rows).to_csv(index=False))
        if logs.get("val_loss", math.inf) < self.best:
            self.best = logs["val_loss"]
            with self.averaged.holding_average() if self.averaged else nullcontext():
                self.run.save_model(self.model)
        self.progress.epoch = epoch + 1
        if self.resumable:
            self.run.save_model(self.model, Run.last_file)
            self.run.write(Run.progress_file, json.dumps(asdict(self.progress)))


class Budget:
    """`--time-budget`: an epoch that would not end before the deadline, judged by the longest
    epoch so far, is not started; the run then ends as if its epochs were done, resumable."""

    def __init__(self, seconds: float | None = None, started: float | None = None):
        """`seconds` from `started` (a time.monotonic() value: the command's start), or from now."""
        self.deadline = None if seconds is None else (started or time.monotonic()) + seconds
        self.longest = 0.0  # the longest epoch so far, in seconds
        self.stopped = False

    @staticmethod
    def parse(text: str) -> float:
        """Seconds in `8h30m`, `45m`, `90s` or `1h`."""
        found = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text.strip())
        if not text.strip() or not found:
            raise DogbreedsError(f"--time-budget must look like 8h30m, 45m or 90s, got {text!r}")
        hours, minutes, seconds = (int(v or 0) for v in found.groups())
        return hours * 3600 + minutes * 60 + seconds

    def allows_another(self) -> bool:
        """Whether the next epoch should start; the first always does (there is nothing to judge by)."""
        if self.deadline is not None and self.longest and time.monotonic() + self.longest > self.deadline:
            self.stopped = True
        return not self.stopped


class KeepToBudget(keras.callbacks.Callback):
    """Times each epoch and stops training when the budget leaves no room for another."""

    def __init__(self, budget: Budget):
        super().__init__()
        self.budget = budget

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        self.budget.longest = max(self.budget.longest, time.monotonic() - self.started)
        if not self.budget.allows_another():
            self.model.stop_training = True


class Lookahead(keras.callbacks.Callback):
    """Lookahead (Zhang et al., 2019) as airbench uses it: every `every` steps the slow weights
    move toward the model's, slow += (1 - decay) (fast - slow), and the model continues from
    them, as it does after each epoch's last step (validation and checkpoints see them).
    `decay(fraction of training done)` lets the pull grow during training. Every float weight
    takes part, BatchNormalization's statistics too. A callback: Keras has no lookahead optimizer.
    """

    def __init__(self, every: int = 5, decay: Callable[[float], float] = lambda done: 0.95**5 * done**3):
        super().__init__()
        self.every, self.decay = every, decay

    def on_train_begin(self, logs=None):
        self.weights = [w for w in self.model.weights if "float" in str(w.dtype)]
        self.slow = [keras.ops.copy(w.value) for w in self.weights]
        self.total = self.params["epochs"] * self.params["steps"]

    def on_epoch_begin(self, epoch, logs=None):
        self.first_step = epoch * self.params["steps"]

    def on_train_batch_end(self, batch, logs=None):
        step = self.first_step + batch + 1
        if step % self.every == 0:
            rate = 1.0 - self.decay(step / self.total)
            self.slow = [s + rate * (w.value - s) for s, w in zip(self.slow, self.weights)]
        if step % self.every == 0 or batch + 1 == self.params["steps"]:  # an epoch's end: before validation
            for s, w in zip(self.slow, self.weights):
                w.assign(s)


@keras.saving.register_keras_serializable("dogbreeds")
class Triangular(keras.optimizers.schedules.LearningRateSchedule):
    """Linear from `start` x `rate` up to `rate` at `peak` of the steps, then linear down to
    `end` x `rate` (airbench's schedule; Keras' warm-ups end in a cosine, not a line)."""

    def __init__(self, rate: float, steps: int, start: float = 0.2, peak: float = 0.23, end: float = 0.07):
        self.rate, self.steps, self.start, self.peak, self.end = rate, steps, start, peak, end

    def __call__(self, step):
        done = keras.ops.cast(step, "float32") / max(1, self.steps)
        up = self.start + (1.0 - self.start) * done / self.peak
        down = 1.0 + (self.end - 1.0) * (done - self.peak) / (1.0 - self.peak)
        return self.rate * keras.ops.where(done < self.peak, up, keras.ops.maximum(down, self.end))

    def get_config(self):
        return {"rate": self.rate, "steps": self.steps, "start": self.start, "peak": self.peak, "end": self.end}


@keras.saving.register_keras_serializable("dogbreeds")
class ScaledSGD(keras.optimizers.SGD):
    """SGD in which variables of the given names learn at a multiple of the rate (airbench's
    BatchNormalization shifts: 64 times); Keras' optimizers take one rate for every variable."""

    def __init__(self, *args, rate_scales: dict[str, float] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.rate_scales = dict(rate_scales or {})

    def build(self, variables):
        if not self.built:
            self.scales = [self.rate_scales.get(v.name, 1.0) for v in variables]
        super().build(variables)

    def update_step(self, gradient, variable, learning_rate):
        scale = self.scales[self._get_variable_index(variable)]
        super().update_step(gradient, variable, learning_rate * scale if scale != 1.0 else learning_rate)

    def get_config(self):
        return super().get_config() | {"rate_scales": self.rate_scales}


# -- the two phases ---------------------------------------------------------------------


@dataclass
class TrainResult:
    run: Run
    metrics: dict

    def text(self) -> str:
        """The line `dogbreeds train` ends with."""
        m = self.metrics
        if m.get("method") == "features":
            how = f"{m['head']} head on {m['features']} features, trained in {m['head_seconds']:.2f} s"
        else:
            how = f"best epoch {m['best_epoch']} of {m['epochs']}"
        line = (
            f"run {self.run.path}: validation log loss {m['val_log_loss']:.4f} "
            f"(uniform guess {m['uniform_log_loss']:.4f}), accuracy {m['val_accuracy']:.2%}, {how}"
        )
        if m.get("stopped_by_time_budget"):
            line += f"; stopped by --time-budget: continue with dogbreeds train --resume {self.run.path}"
        return line


@dataclass
class Phase:
    """A stretch of training with its own optimizer: what the loop needs to run it or resume it."""

    name: str
    epochs: int
    optimizer: Callable[[], keras.optimizers.Optimizer]
    prepare: Callable[[], None] = lambda: None  # set which layers train, before compiling
    adaptive: bool = True  # early stopping and the rate cut on a plateau; False: a fixed schedule runs out
    loss: str | keras.losses.Loss = "sparse_categorical_crossentropy"  # categorical_: target distributions
    callbacks: list[keras.callbacks.Callback] = field(default_factory=list)  # the phase's own, e.g. Lookahead


def fit_phases(
    model: keras.Model,
    run: Run,
    phases: list[Phase],
    train_data: tf.data.Dataset,
    val_data: tf.data.Dataset,
    progress: Progress,
    patience: int = 3,
    resumable: bool = True,
    budget: Budget | None = None,
) -> None:
    """The phases in turn, on one epoch axis, with the run folder updated after every epoch.

    A phase already in `progress.completed` is skipped; the current one (a resumed run)
    continues without recompiling, so the optimizer loaded with the model keeps its state.
    `resumable` keeps last.keras and progress.json for `--resume`; without it only the best
    model and the epoch log are written. A `budget` that runs out leaves the phase unfinished,
    to be resumed.
    """
    budget = budget or Budget()
    saver = SaveProgress(run, progress, resumable)
    verbose = 1 if sys.stdout.isatty() else 2
    for phase in phases:
        if phase.name in progress.completed:
            continue
        if not budget.allows_another():
            return
        if progress.phase != phase.name:
            progress.phase, progress.phase_start = phase.name, progress.epoch
            phase.prepare()
            model.compile(optimizer=phase.optimizer(), loss=phase.loss, metrics=["accuracy"])
        callbacks = [*phase.callbacks, saver, KeepToBudget(budget)]
        optimizer = getattr(model.optimizer, "inner_optimizer", model.optimizer)  # under mixed_float16's loss scaling
        saver.averaged = AveragedWeights() if optimizer.use_ema else None
        if saver.averaged:
            callbacks.insert(0, saver.averaged)
        if phase.adaptive:
            callbacks += [
                keras.callbacks.EarlyStopping(patience=patience),
                keras.callbacks.ReduceLROnPlateau(factor=0.2, patience=max(1, patience - 1), min_lr=1e-7),
            ]
        end = progress.phase_start + phase.epochs
        fits = progress.epoch < end
        if fits:
            model.fit(
                train_data,
                validation_data=val_data,
                initial_epoch=progress.epoch,
                epochs=end,
                verbose=verbose,
                shuffle=False,  # the loaders shuffle, reproducibly
                callbacks=callbacks,
            )
        if budget.stopped and progress.epoch < end:
            return  # the phase goes on after --resume
        progress.completed.append(phase.name)
        if resumable:
            if saver.averaged and fits:  # the next phase starts from the average, resumed or not
                run.save_model(model, Run.last_file)
            run.write(Run.progress_file, json.dumps(asdict(progress)))


def competition_phases(
    model: keras.Model, config: TrainConfig, replicas: int = 1, steps_per_epoch: int = 1
) -> list[Phase]:
    """Frozen backbone at --learning-rate, then fine-tuning at a hundredth of it.

    Rates follow the global batch (the linear scaling rule). With --schedule cosine each phase
    decays to zero by its last step, fine-tuning after --warmup-epochs of warm-up; with --ema
    the fine-tuning optimizer keeps the average.
    """
    backbone = next(layer for layer in model.layers if isinstance(layer, keras.Model))

    def freeze():
        backbone.trainable = False

    def unfreeze():
        n = set_trainable(backbone, config.fine_tune_layers, pretrained=config.pretrained)
        log.info(f"fine-tuning {n} of {len(backbone.layers)} backbone layers at learning rate {fine_tune_lr:g}")

    def adam(rate: float, epochs: int, fine_tuning: bool):
        """Warm-up and the moving average belong to fine-tuning: the frozen phase trains a new,
        random head, which needs no warm-up, and Keras' average (no bias correction) would keep
        a share of that random start (0.99 ** steps) in its weights."""

        def make():
            rate_at = rate
            if config.schedule == "cosine":
                warmup = min(config.warmup_epochs, epochs) * steps_per_epoch if fine_tuning else 0
                rate_at = keras.optimizers.schedules.CosineDecay(
                    0.0 if warmup else rate,
                    decay_steps=max(1, epochs * steps_per_epoch - warmup),
                    warmup_target=rate if warmup else None,
                    warmup_steps=warmup,
                )
            ema = config.ema and fine_tuning
            return keras.optimizers.Adam(rate_at, use_ema=ema, ema_momentum=config.ema_momentum)

        return make

    learning_rate, fine_tune_lr = config.learning_rate * replicas, config.fine_tune_lr * replicas
    adaptive = config.schedule == "plateau"
    soft = config.batch_augmentation.soft_targets
    loss = "categorical_crossentropy" if soft else "sparse_categorical_crossentropy"
    frozen, fine_tune = config.epochs, config.fine_tune_epochs
    return [
        Phase("frozen", frozen, adam(learning_rate, frozen, False), freeze, adaptive, loss),
        Phase("fine_tune", fine_tune, adam(fine_tune_lr, fine_tune, True), unfreeze, adaptive, loss),
    ]


def _fit_competition(
    model: keras.Model,
    run: Run,
    config: TrainConfig,
    data: Data,
    progress: Progress,
    replicas: int = 1,
    budget: Budget | None = None,
) -> None:
    classes = len(data.competition.classes)
    loader = make_loader(config, replicas, classes)
    phases = competition_phases(model, config, replicas, math.ceil(len(data.train) / loader.batch_size))
    train_data, val_data = loader.training(data.train), loader.evaluation(data.val)
    if config.batch_augmentation.soft_targets:  # the same loss scores plain labels as distributions
        val_data = val_data.map(lambda images, labels: (images, tf.one_hot(labels, classes)))
    fit_phases(model, run, phases, train_data, val_data, progress, config.patience, budget=budget)


def _finish(
    run: Run, config: TrainConfig, data: Data, precision: str, strategy: tf.distribute.Strategy, budget: Budget
) -> TrainResult:
    """Score the best model on the validation split; metrics.json and the plot."""
    replicas = strategy.num_replicas_in_sync
    best, loader = run.load_model(), make_loader(config, replicas)
    found = labelled_scores(best, loader, {"val": data.val})
    held_out = predict(best, loader, data.val, tta=True, desc="validation images")  # as submit predicts
    run.save_predictions(Run.val_predictions_file, data.val["id"], data.competition.classes, held_out)
    history = pd.read_csv(run.file(Run.log_file))
    n_classes = len(data.competition.classes)
    metrics = found | {
        "uniform_log_loss": math.log(n_classes),
        "best_epoch": int(history["val_loss"].idxmin()) + 1,
        "epochs": len(history),
        "train_images": len(data.train),
        "val_images": len(data.val),
        "train_seconds": round(float(history["seconds"].sum()), 1),
        "precision": precision,
        "strategy": describe(strategy),
        "global_batch_size": config.batch_size * replicas,
        "stopped_by_time_budget": budget.stopped,
    }
    run.save_metrics(metrics)
    plot_history(history, run.file(Run.plot_file), title=run.name)
    return TrainResult(run, metrics)


def _save_skipped(run: Run, data: Data) -> None:
    if len(data.skipped):
        run.write(Run.skipped_file, data.skipped.to_csv(index=False))
        log.warning(f"the skipped images are listed in {run.file(Run.skipped_file)}")


def train(config: TrainConfig, run_dir: str | None = None, budget: Budget | None = None) -> TrainResult:
    """A new run: everything is checked before the run folder is made."""
    budget = budget or Budget()
    if config.folds > 1:
        return train_folds(config, run_dir, budget)
    return _train_one(config, run_dir, budget=budget)


def _train_one(
    config: TrainConfig, run_dir: str | Path | None, inputs: HeadInputs | None = None, budget: Budget | None = None
) -> TrainResult:
    """One model on one split: a single run, or one fold of a k-fold run."""
    budget = budget or Budget()
    if config.method == "features":
        return train_features(config, run_dir, inputs)
    strategy = make_strategy(config.strategy)  # first: it may connect a TPU or split the CPU
    data = prepare_data(config)
    keras.utils.set_random_seed(config.seed)
    precision = use_precision(config.precision)
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
    _save_skipped(run, data)
    _save_fold(run, config, data)
    log.info(
        f"training {config.backbone} at {config.image_size}px on {len(data.train)} images "
        f"({len(data.val)} held out, {len(data.competition.classes)} classes, {precision}, "
        f"{describe(strategy)}) -> {run.path}"
    )
    with user_facing_failures(config.batch_size, _resume_hint(run)), strategy.scope():
        _fit_competition(model, run, config, data, Progress(), strategy.num_replicas_in_sync, budget)
        return _finish(run, config, data, precision, strategy, budget)


def _extracted(function, *args):
    """An extraction that a Ctrl-C stops with a line saying that it resumes."""
    try:
        return function(*args)
    except KeyboardInterrupt:
        raise Interrupted("interrupted; run the same command again: the extraction resumes where it stopped") from None


def _readable_tests(data: Data) -> list[pd.DataFrame]:
    """The test images, when all can be read: extracted with the rest, so submit finds them cached."""
    test = data.competition.test_frame()
    report = inspect_images(test["path"].tolist())
    readable = len(test) and (report["problem"] == "").all()
    return [test.assign(orientation=report["orientation"].to_numpy())] if readable else []


def train_features(
    config: TrainConfig, run_dir: str | Path | None = None, inputs: HeadInputs | None = None
) -> TrainResult:
    """--method features: cached backbone vectors (train, validation, test), then a head on them.

    Extraction comes first and fills the cache, so a failure there leaves no run folder;
    the head then trains in seconds, and submit finds the test vectors already cached.
    A fold of a k-fold run is handed its `inputs`, cut from one extraction of every image.
    """
    data = prepare_data(config)
    cache = FeatureCache(config.cache_dir, config.batch_size)
    started = time.perf_counter()
    if inputs is None:
        inputs = _extracted(head_inputs, cache, config, data.train, data.val, _readable_tests(data))
    extraction_seconds = time.perf_counter() - started

    run = Run.create(config, data.competition.classes, run_dir)
    _save_skipped(run, data)
    _save_fold(run, config, data)
    n_classes, y_val = len(data.competition.classes), data.val["label"].to_numpy()
    log.info(
        f"training a {config.head} head on {inputs.x.shape[1]} features x {len(inputs.x)} rows "
        f"({config.feature_views} views of {len(data.train)} images; {len(data.val)} held out) -> {run.path}"
    )
    title = f"{run.name}: {config.head} head on cached features"
    head = fit_head(run, config, inputs.x, inputs.y, inputs.x_val, y_val, n_classes, title)
    probabilities = head.model.predict(inputs.x_val, batch_size=1024, verbose=0)
    run.save_predictions(Run.val_predictions_file, data.val["id"], data.competition.classes, probabilities)
    metrics = {f"val_{k}": v for k, v in scores(probabilities, y_val).items()} | {
        "uniform_log_loss": math.log(n_classes),
        "method": "features",
        "head": config.head,
        "features": int(inputs.x.shape[1]),
        "train_images": len(data.train),
        "val_images": len(data.val),
        "feature_rows": len(inputs.x),
        "images_extracted": cache.extracted,
        "extraction_seconds": round(extraction_seconds, 2),
        "head_seconds": round(head.seconds, 3),
    }
    if head.epochs is not None:
        metrics |= {"best_epoch": head.best_epoch, "epochs": head.epochs}
    run.save_metrics(metrics)
    return TrainResult(run, metrics)


# -- k folds ----------------------------------------------------------------------------


def _save_fold(run: Run, config: TrainConfig, data: Data) -> None:
    """A fold folder says which split it belongs to, so folds trained apart are checked when merged."""
    if config.folds > 1:
        run.write(Run.fold_file, json.dumps(_fold_identity(config, data) | {"fold": config.fold}, indent=1))


def _fold_identity(config: TrainConfig, data: Data) -> dict:
    digest = labels_digest(data.competition)
    return {"folds": config.folds, "seed": config.seed, "limit": config.limit, "labels": digest}


def _fold_finished(run: Run) -> bool:
    return all(run.file(name).is_file() for name in (Run.model_file, Run.metrics_file, Run.val_predictions_file))


def _stopped_early(run: Run) -> bool:
    """A fold that --time-budget stopped: it has a model and metrics, but epochs left to train."""
    return bool(json.loads(run.file(Run.metrics_file).read_text()).get("stopped_by_time_budget"))


@dataclass
class FoldsResult(TrainResult):
    """A k-fold run: its out-of-fold figures once every fold is trained."""

    def text(self) -> str:
        m = self.metrics
        done = m["folds_trained"]
        if not done:
            return (
                f"run {self.run.path}: no fold is trained to its end yet (--time-budget); continue with "
                f"dogbreeds train --resume {self.run.path}"
            )
        if len(done) < m["folds"]:
            missing = sorted(set(range(1, m["folds"] + 1)) - set(done))
            return (
                f"run {self.run.path}: folds {', '.join(map(str, done))} of {m['folds']} trained; train the others "
                f"(--fold {missing[0]} ...), put their fold-* folders in {self.run.path} and run "
                f"`dogbreeds train --resume {self.run.path}`"
            )
        per_fold = ", ".join(f"{f['val_log_loss']:.4f}" for f in m["per_fold"])
        return (
            f"run {self.run.path}: out-of-fold log loss {m['val_log_loss']:.4f} (uniform guess "
            f"{m['uniform_log_loss']:.4f}), accuracy {m['val_accuracy']:.2%} on {m['val_images']} images; "
            f"folds: {per_fold}"
        )


def train_folds(config: TrainConfig, run_dir: str | Path | None = None, budget: Budget | None = None) -> FoldsResult:
    """K models on stratified folds into RUN/fold-1 ... RUN/fold-K (only --fold I when given).

    Finished folds are kept, a stopped fine-tuning fold resumes from its last epoch; once every
    fold is there, oof.csv holds each labelled image's prediction by the fold that held it out.
    Features: every labelled image is extracted once, and each fold's head is cut from that.
    """
    first = prepare_data(replace(config, fold=1))  # checks the data before any folder is made
    competition = first.competition
    images = first.labelled()
    if run_dir is not None and Run(Path(run_dir)).file(Run.config_file).is_file():
        existing = Run(Path(run_dir)).config()
        differing = [k for k, v in asdict(replace(config, fold=None)).items() if asdict(existing).get(k) != v]
        if differing:
            raise DogbreedsError(
                f"{run_dir} holds a run with other settings ({', '.join(differing)}); give the same options "
                "as its other folds, or another --run-dir"
            )
    root = Run.create(replace(config, fold=None), competition.classes, run_dir)
    vectors, started = None, time.perf_counter()
    if config.method == "features":
        cache = FeatureCache(config.cache_dir, config.batch_size)
        vectors = _extracted(labelled_vectors, cache, config, images, _readable_tests(first))
    extraction_seconds = round(time.perf_counter() - started, 2)
    budget = budget or Budget()  # one budget for all the folds
    for i in [config.fold] if config.fold else range(1, config.folds + 1):
        fold_run, fold_config = root.fold(i), replace(config, fold=i)
        if _fold_finished(fold_run) and not _stopped_early(fold_run):
            log.info(f"fold {i} of {config.folds} is trained: kept")
            continue
        if not budget.allows_another():
            break
        log.info(f"fold {i} of {config.folds} -> {fold_run.path}")
        if fold_run.file(Run.progress_file).is_file() and fold_run.file(Run.last_file).is_file():
            _resume_one(fold_run, budget)
        else:
            data = prepare_data(fold_config)
            inputs = vectors.head_inputs(data.train["id"], data.val["id"]) if vectors else None
            _train_one(fold_config, fold_run.path, inputs, budget)
    result = _finish_folds(root, config, _fold_identity(config, first), images)
    if vectors is not None:  # this command's extraction, shared by its folds (a later one reads the cache)
        result.metrics["extraction_seconds"] = extraction_seconds
        root.save_metrics(result.metrics)
    return result


def _seconds(metrics: dict) -> float:
    """A fold's training time: its epochs, or its head (the extraction is shared)."""
    return metrics.get("train_seconds", metrics.get("head_seconds", 0.0))


def _finish_folds(root: Run, config: TrainConfig, identity: dict, images: pd.DataFrame) -> FoldsResult:
    """Merge the trained folds: check they belong to one split, then oof.csv and the metrics."""
    folds = [root.fold(i) for i in range(1, config.folds + 1)]
    trained = [i for i, fold in enumerate(folds, 1) if _fold_finished(fold) and not _stopped_early(fold)]
    fold_metrics = {}
    for i in trained:
        recorded = json.loads(root.fold(i).file(Run.fold_file).read_text())
        theirs = {k: recorded.get(k) for k in identity}
        if theirs != identity or recorded.get("fold") != i:
            raise DogbreedsError(
                f"{root.fold(i).path} belongs to another split ({theirs}, fold {recorded.get('fold')}) than "
                f"{root.path} ({identity}, fold {i}); train that fold again with this run's settings"
            )
        fold_metrics[i] = json.loads(root.fold(i).file(Run.metrics_file).read_text())
    metrics = {
        "folds": config.folds,
        "folds_trained": trained,
        "method": config.method,
        "per_fold": [
            {"fold": i} | {k: m[k] for k in ("val_log_loss", "val_accuracy", "val_images")}
            for i, m in fold_metrics.items()
        ],
    }
    if len(trained) == config.folds:
        oof = pd.concat([root.fold(i).predictions(Run.val_predictions_file) for i in trained]).set_index("id")
        oof = oof.loc[images["id"]]  # labels.csv's order; each image held out by exactly one fold
        found = scores(oof.to_numpy(), images["label"].to_numpy())
        root.write(Run.oof_file, oof.reset_index().to_csv(index=False, float_format="%.8g"))
        metrics |= {f"val_{k}": v for k, v in found.items()} | {
            "uniform_log_loss": math.log(len(root.classes())),
            "val_images": len(images),
            "train_seconds": round(sum(_seconds(m) for m in fold_metrics.values()), 1),
        }
    root.save_metrics(metrics)
    return FoldsResult(root, metrics)


def resume(run_ref: str, budget: Budget | None = None) -> TrainResult:
    """Continue a stopped run from its last completed epoch, on the same split; a k-fold run
    keeps its finished folds, continues or trains the others, and merges them."""
    run = Run.open(run_ref, need_model=False)
    if run.folds > 1:
        return train_folds(run.config(), run.path, budget)
    return _resume_one(run, budget or Budget())


def _resume_one(run: Run, budget: Budget) -> TrainResult:
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
    precision = use_precision(config.precision)
    keras.utils.set_random_seed(config.seed + progress.epoch)  # fresh but repeatable draws from here
    with strategy.scope():  # the model's variables, and its optimizer's, live on every replica
        model = keras.models.load_model(run.file(Run.last_file), safe_mode=True)
    log.info(f"resuming {run.path} after epoch {progress.epoch} ({progress.phase or 'start'}) on {describe(strategy)}")
    with user_facing_failures(config.batch_size, _resume_hint(run)), strategy.scope():
        _fit_competition(model, run, config, data, progress, strategy.num_replicas_in_sync, budget)
        return _finish(run, config, data, precision, strategy, budget)
