"""`dogbreeds train`: the dog job. A frozen-backbone phase, then fine-tuning, into a run folder;
or a head on cached backbone features; or either on each of K folds.

Phase 1 trains the new head on a frozen backbone (the head starts random: large gradients
would wreck pretrained features). Phase 2 unfreezes the top of the backbone at a share of the
learning rate. The phases run in the engine's loop (`loop.fit_phases`), which keeps the best
model by validation loss across both and everything `--resume` needs after every epoch.
`--track mlflow` logs the run to MLflow as it trains (`tracking.tracked`); a fold is a child run.
"""

from __future__ import annotations

import atexit
import json
import math
import shutil
import tempfile
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import keras
import pandas as pd
import tensorflow as tf

from dogbreeds.cache import FeatureCache, HeadInputs, head_inputs, labelled_vectors
from dogbreeds.competition import Competition, Data, labels_digest, locate_data, prepare_data
from dogbreeds.config import TrainConfig
from dogbreeds.distribute import (
    check_same_weights,
    current,
    describe,
    join,
    machine,
    make_strategy,
    process_count,
    process_index,
    static_shapes,
    use_precision,
    user_facing_failures,
)
from dogbreeds.errors import DogbreedsError, Interrupted, log
from dogbreeds.heads import fit_head
from dogbreeds.hub import layer_decay_factors
from dogbreeds.images import inspect_images
from dogbreeds.inference import make_loader, predict
from dogbreeds.loop import Budget, FineTuneAdam, Phase, Progress, fit_phases, read_progress
from dogbreeds.metrics import scores
from dogbreeds.models import build_backbone, build_classifier, get_backbone, set_trainable
from dogbreeds.places import feature_cache
from dogbreeds.report import plot_history
from dogbreeds.runs import Run
from dogbreeds.settings import Cluster
from dogbreeds.tracking import Tracker, check_tracking, tracked


def _resume_hint(run: Run) -> str:
    return f"; continue with: dogbreeds train --resume {run.path}"


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


def competition_phases(
    model: keras.Model, config: TrainConfig, replicas: int = 1, steps_per_epoch: int = 1
) -> list[Phase]:
    """Frozen backbone at --learning-rate, then fine-tuning at --fine-tune-share of it.

    Rates follow the global batch (the linear scaling rule); --accumulate N averages N batches
    into one update, as a batch N times larger would, at the same rates. The frozen phase trains a new,
    random head at a constant rate, cut when validation stalls, whatever the recipe: a schedule
    that decays to zero in a phase of two or three epochs leaves the head under-trained
    (docs/recipes.md). --schedule, --warmup-epochs and --ema act on fine-tuning, where the
    pretrained weights need a gentle start.
    """
    backbone = next(layer for layer in model.layers if isinstance(layer, keras.Model))

    def freeze():
        backbone.trainable = False

    def unfreeze():
        n = set_trainable(backbone, config.fine_tune_layers, pretrained=config.pretrained)
        log.info(f"fine-tuning {n} of {len(backbone.layers)} backbone layers at learning rate {fine_tune_lr:g}")

    def head_optimizer():
        return keras.optimizers.Adam(learning_rate, gradient_accumulation_steps=accumulate)

    def fine_tune_optimizer():
        rate_at = fine_tune_lr
        if config.schedule == "cosine":  # counted in updates, as the optimizer's iterations are
            warmup = min(config.warmup_epochs, fine_tune) * updates_per_epoch
            rate_at = keras.optimizers.schedules.CosineDecay(
                0.0 if warmup else fine_tune_lr,
                decay_steps=max(1, fine_tune * updates_per_epoch - warmup),
                warmup_target=fine_tune_lr if warmup else None,
                warmup_steps=warmup,
            )
        factors = layer_decay_factors(backbone, config.layer_decay) if config.layer_decay < 1 else None
        return FineTuneAdam(
            rate_at,
            use_ema=config.ema,
            ema_momentum=config.ema_momentum,
            rate_factors=factors,
            gradient_accumulation_steps=accumulate,
        )

    learning_rate, fine_tune_lr = config.learning_rate * replicas, config.fine_tune_lr * replicas
    accumulate = config.accumulate if config.accumulate > 1 else None  # Keras' steps: None or at least 2
    updates_per_epoch = math.ceil(steps_per_epoch / config.accumulate)
    soft = config.batch_augmentation.soft_targets
    loss = "categorical_crossentropy" if soft else "sparse_categorical_crossentropy"
    frozen, fine_tune = config.epochs, config.fine_tune_epochs
    return [
        Phase("frozen", frozen, head_optimizer, freeze, True, loss),
        Phase("fine_tune", fine_tune, fine_tune_optimizer, unfreeze, config.schedule == "plateau", loss),
    ]


def _fit_competition(
    model: keras.Model,
    run: Run,
    config: TrainConfig,
    data: Data,
    progress: Progress,
    strategy,
    budget: Budget | None = None,
    tracker: Tracker | None = None,
) -> None:
    classes, replicas = len(data.competition.classes), strategy.num_replicas_in_sync
    train, val = data.partition(config.fold)
    loader = make_loader(config.loading, replicas, classes, static_shapes(strategy), (process_index(), process_count()))
    phases = competition_phases(model, config, replicas, math.ceil(len(train) / loader.batch_size))
    train_data, val_data = loader.training(train), loader.evaluation(val)
    if config.batch_augmentation.soft_targets:  # the same loss scores plain labels as distributions
        val_data = val_data.map(lambda images, labels: (images, tf.one_hot(labels, classes)))
    passes = 2.0 if config.tta else 1.0  # the end of the run predicts the held-out images as submit does
    fit_phases(
        model, run, phases, train_data, val_data, progress, config.patience, budget=budget, finishing=passes,
        tracker=tracker,
    )  # fmt: skip


def _finish(run: Run, config: TrainConfig, data: Data, precision: str, strategy, budget: Budget) -> TrainResult:
    """The best model's held-out predictions, as submit makes them (--tta), and the figures they
    give; metrics.json and the plot. Outside the strategy's scope: across several processes each
    predicts alone (the best model loaded afresh onto its own devices)."""
    replicas = strategy.num_replicas_in_sync
    train, val = data.partition(config.fold)
    best, loader = run.load_model(image_size=config.image_size), make_loader(config.loading, replicas)
    held_out = predict(best, loader, val, tta=config.tta, desc="validation images")
    run.save_predictions(Run.val_predictions_file, val["id"], data.competition.classes, held_out)
    found = {f"val_{k}": v for k, v in scores(held_out, val["label"].to_numpy()).items()}
    history = run.history()
    n_classes = len(data.competition.classes)
    metrics = found | {
        "uniform_log_loss": math.log(n_classes),
        "best_epoch": int(history["val_loss"].idxmin()) + 1,
        "epochs": len(history),
        "train_images": len(train),
        "val_images": len(val),
        "train_seconds": round(float(history["seconds"].sum()), 1),
        "precision": precision,
        "strategy": describe(strategy),
        "processes": process_count(),
        "global_batch_size": config.batch_size * replicas,
        "images_per_update": config.batch_size * replicas * config.accumulate,
        "stopped_by_time_budget": budget.stopped,
    }
    run.save_metrics(metrics)
    plot_history(history, run.file(Run.plot_file), title=run.name)
    return TrainResult(run, metrics)


def _save_skipped(run: Run, data: Data) -> None:
    """The images left out as unreadable, named in the run."""
    if len(data.skipped):
        run.write(Run.skipped_file, data.skipped.to_csv(index=False))
        log.warning(f"the skipped images are listed in {run.file(Run.skipped_file)}")


def train(config: TrainConfig, run_dir: str | None = None, budget: Budget | None = None) -> TrainResult:
    """A new run: everything is checked before the run folder is made."""
    budget = budget or Budget()
    check_tracking(config.track)
    if config.method == "finetune" and config.image_size is None:  # saved as used, for resume and submit
        config = replace(config, image_size=get_backbone(config.backbone).size)
    config = _with_absolute_paths(config)
    if config.folds > 1:
        return train_folds(config, run_dir, budget)
    return _train_one(config, run_dir, budget=budget)


def _with_absolute_paths(config: TrainConfig) -> TrainConfig:
    """The data, the feature cache and weight files as absolute paths: config.json is read by
    `submit` and `--resume` from any directory."""
    weights = [str(Path(w).resolve()) if Path(w).is_file() else w for w in config.weights.split(",")]
    return replace(
        config,
        data=str(locate_data(config.data).resolve()),
        cache_dir=str(feature_cache(config.cache_dir).resolve()),
        weights=",".join(weights),
    )


def _check_backbone_options(config: TrainConfig) -> None:
    """Options that mean something for one library's backbones only are refused for the other's."""
    transformer = get_backbone(config.backbone).preset is not None
    if transformer and config.fine_tune_layers is not None:
        raise DogbreedsError(
            f"--fine-tune-layers counts a CNN's layers; {config.backbone} fine-tunes whole (with --layer-decay "
            "to slow its lower blocks): drop --fine-tune-layers"
        )
    if not transformer and config.layer_decay < 1:
        raise DogbreedsError(
            f"--layer-decay scales a KerasHub transformer's blocks; {config.backbone} is a CNN: drop --layer-decay "
            "or use --fine-tune-layers"
        )


def check_accumulation(config: TrainConfig, replicas: int) -> None:
    """Keras' gradient accumulation all-reduces inside a conditional, which tf.distribute cannot
    run with several replicas (keras-team/keras issue 20582): refused before training starts. JAX
    runs it (tests/test_jax.py trains so on two devices)."""
    if config.accumulate > 1 and replicas > 1 and keras.backend.backend() == "tensorflow":
        raise DogbreedsError(
            f"--accumulate {config.accumulate} cannot run on {replicas} replicas under TensorFlow (Keras issue "
            "20582); several devices already multiply the batch: drop --accumulate, or train on one device"
        )


def _train_one(
    config: TrainConfig,
    run_dir: str | Path | None,
    data: Data | None = None,
    inputs: HeadInputs | None = None,
    budget: Budget | None = None,
    again: bool = False,
    parent: Tracker | None = None,
) -> TrainResult:
    """One model on one split: a single run, or one fold of a k-fold run (handed its `data`, and
    its MLflow `parent`); `again`: the same run started over in its folder."""
    budget = budget or Budget()
    if config.method == "features":
        return train_features(config, run_dir, data, inputs, again, parent)
    _check_backbone_options(config)
    strategy = _devices(config, config.cluster, budget)
    data = data or prepare_data(config.data, config.split)
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
    run = Run.create(
        config.to_json(), data.competition.classes, _own_folder(run_dir), name=config.backbone, again=again
    )
    _save_skipped(run, data)
    _save_fold(run, config, data)
    train, val = data.partition(config.fold)
    log.info(
        f"training {config.backbone} at {config.image_size}px on {len(train)} images "
        f"({len(val)} held out, {len(data.competition.classes)} classes, {precision}, "
        f"{describe(strategy)}) -> {run.path}"
    )
    failures = user_facing_failures(config.batch_size, _resume_hint(run))
    with failures, run.lock(), tracked(run, config.track, parent) as tracker:
        with strategy.scope():
            _fit_competition(model, run, config, data, Progress(), strategy, budget, tracker)
            check_same_weights(model)
        with strategy.scope() if process_count() == 1 else nullcontext():
            return _finish(run, config, data, precision, strategy, budget)


def _devices(config: TrainConfig, cluster: Cluster, budget: Budget):
    """The devices that train, once joined with the other processes, said on the run's first line;
    first: it may connect a TPU, split the CPU or wait for the other processes."""
    join(cluster)
    strategy = make_strategy(config.strategy)
    if process_count() > 1 and budget.deadline is not None:
        raise DogbreedsError(
            "--time-budget cannot stop several processes at the same epoch (each times its own): drop it, "
            "and stop with Ctrl-C on every process, then --resume"
        )
    check_accumulation(config, strategy.num_replicas_in_sync)
    log.info(machine(strategy))
    return strategy


def _own_folder(run_dir: str | Path | None) -> str | Path | None:
    """Process 0 writes the run; each other process trains the same model into a folder of its
    own, thrown away (it holds what that process saw: the same weights, its own timings)."""
    return run_dir if process_index() == 0 else _scratch() / "run"


def _scratch() -> Path:
    folder = Path(tempfile.mkdtemp(prefix=f"dogbreeds-process-{process_index()}-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


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
    config: TrainConfig,
    run_dir: str | Path | None = None,
    data: Data | None = None,
    inputs: HeadInputs | None = None,
    again: bool = False,
    parent: Tracker | None = None,
) -> TrainResult:
    """--method features: cached backbone vectors (train, validation, test), then a head on them.

    Extraction comes first and fills the cache, so a failure there leaves no run folder;
    the head then trains in seconds, and submit finds the test vectors already cached.
    A fold of a k-fold run is handed its `inputs`, cut from one extraction of every image.
    """
    log.info(machine(current()))  # the backbones run on one device
    data = data or prepare_data(config.data, config.split)
    train, val = data.partition(config.fold)
    features = config.features
    cache = FeatureCache(features.cache_dir, features.batch_size)
    started = time.perf_counter()
    if inputs is None:
        inputs = _extracted(head_inputs, cache, features, train, val, _readable_tests(data))
    extraction_seconds = time.perf_counter() - started

    run = Run.create(config.to_json(), data.competition.classes, run_dir, name=config.backbone, again=again)
    with run.lock(), tracked(run, config.track, parent) as tracker:
        _save_skipped(run, data)
        _save_fold(run, config, data)
        n_classes, y_val = len(data.competition.classes), val["label"].to_numpy()
        log.info(
            f"training a {config.head} head on {inputs.x.shape[1]} features x {len(inputs.x)} rows "
            f"({config.feature_views} views of {len(train)} images; {len(val)} held out) -> {run.path}"
        )
        title = f"{run.name}: {config.head} head on cached features"
        head = fit_head(run, config.head_settings, inputs, y_val, n_classes, title)
        if tracker is not None and head.epochs is not None:
            tracker.log_epochs(head.history.to_dict("records"))
        probabilities = head.model.predict(inputs.x_val, batch_size=1024, verbose=0)
        run.save_predictions(Run.val_predictions_file, val["id"], data.competition.classes, probabilities)
        metrics = {f"val_{k}": v for k, v in scores(probabilities, y_val).items()} | {
            "uniform_log_loss": math.log(n_classes),
            "method": "features",
            "head": config.head,
            "features": int(inputs.x.shape[1]),
            "train_images": len(train),
            "val_images": len(val),
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
    """A run says which split it was trained on: folds trained apart are checked when merged, and
    a run resumed on moved data is checked to have the same labels."""
    run.write(Run.fold_file, json.dumps(_fold_identity(config, data) | {"fold": config.fold}, indent=1))


def _fold_identity(config: TrainConfig, data: Data) -> dict:
    digest = labels_digest(data.competition)
    return {"folds": config.folds, "seed": config.seed, "limit": config.limit, "labels": digest}


def _fold_finished(run: Run) -> bool:
    return all(run.file(name).is_file() for name in (Run.model_file, Run.metrics_file, Run.val_predictions_file))


def _stopped_early(run: Run) -> bool:
    """A fold that --time-budget stopped: it has a model and metrics, but epochs left to train."""
    return bool(run.metrics().get("stopped_by_time_budget"))


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
    data = prepare_data(config.data, replace(config.split, fold=None))  # checked before any folder is made
    competition, images = data.competition, data.images
    if run_dir is not None and Run(Path(run_dir)).file(Run.config_file).is_file():
        existing = TrainConfig.load(Run(Path(run_dir)).file(Run.config_file))
        differing = [k for k, v in asdict(replace(config, fold=None)).items() if asdict(existing).get(k) != v]
        if differing:
            raise DogbreedsError(
                f"{run_dir} holds a run with other settings ({', '.join(differing)}); give the same options "
                "as its other folds, or another --run-dir"
            )
    root = Run.create(replace(config, fold=None).to_json(), competition.classes, run_dir, name=config.backbone)
    # the folds' own folders are locked by their own training; their MLflow runs are the root's children
    with root.lock(), tracked(root, config.track) as parent:
        vectors, started = None, time.perf_counter()
        if config.method == "features":
            cache = FeatureCache(config.cache_dir, config.batch_size)
            vectors = _extracted(labelled_vectors, cache, config.features, images, _readable_tests(data))
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
                _resume_one(fold_run, budget, data, parent)
            else:
                train, val = data.partition(i)
                inputs = vectors.head_inputs(train["id"], val["id"]) if vectors else None
                _train_one(fold_config, fold_run.path, data, inputs, budget, again=True, parent=parent)
        result = _finish_folds(root, config, _fold_identity(config, data), images)
        if vectors is not None:  # this command's extraction, shared by its folds (a later one reads the cache)
            result.metrics["extraction_seconds"] = extraction_seconds
            root.save_metrics(result.metrics)
        return result


def _seconds(metrics: dict) -> float:
    """A fold's training time: its epochs, or its head (the extraction is shared)."""
    return metrics.get("train_seconds", metrics.get("head_seconds", 0.0))


def _finish_folds(root: Run, config: TrainConfig, identity: dict, images: pd.DataFrame) -> FoldsResult:
    """Merge the trained folds: check they belong to one split, then oof.csv and the metrics."""
    trained = [i for i, fold in enumerate(root.members, 1) if _fold_finished(fold) and not _stopped_early(fold)]
    fold_metrics = {}
    for i in trained:
        recorded = root.fold(i).read_json(Run.fold_file)
        theirs = {k: recorded.get(k) for k in identity}
        if theirs != identity or recorded.get("fold") != i:
            raise DogbreedsError(
                f"{root.fold(i).path} belongs to another split ({theirs}, fold {recorded.get('fold')}) than "
                f"{root.path} ({identity}, fold {i}); train that fold again with this run's settings"
            )
        fold_metrics[i] = root.fold(i).metrics()
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


def resume(
    run_ref: str, budget: Budget | None = None, data: str | None = None, cluster: Cluster | None = None
) -> TrainResult:
    """Continue a stopped run from its last completed epoch, on the same split; a k-fold run
    keeps its finished folds, continues or trains the others, and merges them. `data`: where the
    run's competition folder is now (another machine, a kernel's input), its labels unchanged;
    `cluster`: the processes it goes on with now (not those it started with)."""
    run = Run.open(run_ref, need_model=False)
    if data is not None:
        _move_data(run, data)
    if run.folds > 1:
        return train_folds(TrainConfig.load(run.file(Run.config_file)), run.path, budget)
    return _resume_one(run, budget or Budget(), cluster=cluster)


def _own_copy(run: Run, cluster: Cluster) -> Run:
    """The run as process 0 resumes it; another process resumes a copy of its own (`_own_folder`)."""
    join(cluster)
    if process_index() == 0:
        return run
    return Run.open(shutil.copytree(run.path, _scratch() / run.path.name), need_model=False)


def _move_data(run: Run, data: str) -> None:
    """Record the run's data at its new place, in the run and its folds, once its labels are
    checked to be those it was split from: other labels would change its held-out images."""
    competition = Competition.load(data)
    digest = labels_digest(competition)
    members = [run, *(run.members if run.folds > 1 else [])]
    for member in members:
        if member.file(Run.fold_file).is_file() and member.read_json(Run.fold_file).get("labels") != digest:
            raise DogbreedsError(
                f"{competition.root / 'labels.csv'} is not the labels.csv run {run.path} was split from; "
                "resume on the data it was trained on"
            )
    with run.lock():
        for member in members:
            if member.file(Run.config_file).is_file():
                config = TrainConfig.load(member.file(Run.config_file))
                member.write(Run.config_file, replace(config, data=str(competition.root.resolve())).to_json())


def _resume_one(
    run: Run, budget: Budget, data: Data | None = None, parent: Tracker | None = None, cluster: Cluster | None = None
) -> TrainResult:
    cluster = cluster or Cluster()
    config = replace(TrainConfig.load(run.file(Run.config_file)), cluster=cluster)
    check_tracking(config.track)
    if config.method == "features":
        raise DogbreedsError(
            f"run {run.path} uses cached features: run its training command again; the extraction resumes by itself"
        )
    progress_path = run.file(Run.progress_file)
    if not progress_path.is_file() or not run.file(Run.last_file).is_file():  # stopped in its first epoch
        log.info(f"run {run.path} saved no epoch to resume from: training it from the start")
        return _train_one(config, run.path, data, budget=budget, again=True, parent=parent)
    run = _own_copy(run, cluster)
    progress = read_progress(run)
    strategy = _devices(config, cluster, budget)
    data = data or prepare_data(config.data, config.split)
    if data.competition.classes != run.classes():
        raise DogbreedsError(f"the classes of {data.competition.root} differ from run {run.path}'s; resume on its data")
    precision = use_precision(config.precision)
    keras.utils.set_random_seed(config.seed + progress.epoch)  # fresh but repeatable draws from here
    with strategy.scope():  # the model's variables, and its optimizer's, live on every replica
        model = run.load_model(Run.last_file, image_size=config.image_size)
    log.info(f"resuming {run.path} after epoch {progress.epoch} ({progress.phase or 'start'}) on {describe(strategy)}")
    failures = user_facing_failures(config.batch_size, _resume_hint(run))
    with failures, run.lock(), tracked(run, config.track, parent) as tracker:
        with strategy.scope():
            _fit_competition(model, run, config, data, progress, strategy, budget, tracker)
            check_same_weights(model)
        with strategy.scope() if process_count() == 1 else nullcontext():
            return _finish(run, config, data, precision, strategy, budget)
