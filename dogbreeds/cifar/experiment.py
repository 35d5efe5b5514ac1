"""`dogbreeds cifar`: the CIFAR-10/100 experiments, a client of the engine like any user's script.

The images go through the engine's loader, the networks train in its loop (`loop.fit_phases`)
into the same kind of run folder, and `transfer` uses the feature cache and a head as
`train --method features` does. What is CIFAR's own lives in this package: reading its files
(`data`), the networks (`networks`, `airbench`), and each model's recipe below (optimizer,
schedule, augmentation, epochs).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Callable

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from dogbreeds.cache import FeatureCache, head_inputs
from dogbreeds.cifar import airbench, networks
from dogbreeds.cifar.config import CifarConfig
from dogbreeds.cifar.data import CifarData, load_cifar
from dogbreeds.competition import split_frame
from dogbreeds.distribute import use_precision
from dogbreeds.errors import DogbreedsError, log
from dogbreeds.files import write_atomic
from dogbreeds.heads import fit_head
from dogbreeds.inference import labelled_scores, with_flip_tta
from dogbreeds.loop import Phase, Progress, fit_phases
from dogbreeds.metrics import scores
from dogbreeds.pipeline import TFDataLoader
from dogbreeds.places import runs_dir
from dogbreeds.report import plot_accuracy_curves, plot_history
from dogbreeds.runs import Run
from dogbreeds.settings import Augmentation, Features, HeadSettings

# -- each network's recipe ------------------------------------------------------------------

CIFAR_MEAN = np.array([125.3, 123.0, 113.9], np.float32)  # per channel, in [0, 255]
CIFAR_STD = np.array([63.0, 62.1, 66.7], np.float32)


def standardise(images):
    return (images - CIFAR_MEAN) / CIFAR_STD


def unit_scale(images):
    return images / 255.0


def _adam(rate: float, steps_per_epoch: int, epochs: int) -> keras.optimizers.Optimizer:
    return keras.optimizers.Adam(rate)


def _sgd_time_decay(rate: float, steps_per_epoch: int, epochs: int) -> keras.optimizers.Optimizer:
    """The write-up's SGD(lr, momentum=0.9, decay=lr/epochs): old Keras divided the rate by
    (1 + decay x step)."""
    return keras.optimizers.SGD(keras.optimizers.schedules.InverseTimeDecay(rate, 1, rate / epochs), momentum=0.9)


def _one_cycle(rate: float, steps_per_epoch: int, epochs: int) -> keras.optimizers.Optimizer:
    """Linear warm-up over the first fifth to `rate`, then cosine down to zero; Nesterov SGD with
    decoupled weight decay (5e-3 x rate per step: the 5e-4 of the DAWNBench recipe through momentum)."""
    steps = steps_per_epoch * epochs
    warmup = max(1, steps // 5)
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, max(1, steps - warmup), warmup_target=rate, warmup_steps=warmup
    )
    return keras.optimizers.SGD(schedule, momentum=0.9, nesterov=True, weight_decay=5e-3)


@dataclass(frozen=True)
class Network:
    """A network trained from scratch and how it trains by default: the write-ups' settings for mlp
    and seed-cnn, airbench94's for airbench, ours for resnet9."""

    build: Callable[..., keras.Model]  # (input shape, classes)
    epochs: int
    batch_size: int
    learning_rate: float
    optimizer: Callable[[float, int, int], keras.optimizers.Optimizer]  # (rate, steps per epoch, epochs)
    preprocess: Callable
    augmentation: Augmentation
    loader: type[TFDataLoader] = TFDataLoader
    adaptive: bool = False  # early stopping and rate cuts on a plateau, instead of a fixed schedule
    label_smoothing: float = 0.0
    tta: Callable[[keras.Model], keras.Model] | None = None  # the views test predictions average
    whiten: bool = False  # the first layer whitens the patches of training images, frozen
    lookahead: bool = False


NETWORKS = {
    "mlp": Network(networks.mlp, 30, 128, 1e-3, _adam, standardise, Augmentation.none(), adaptive=True),
    "seed-cnn": Network(networks.seed_cnn, 10, 32, 0.01, _sgd_time_decay, unit_scale, Augmentation.none()),
    "airbench": Network(
        airbench.network,
        8,  # airbench94's 10 take about 22 minutes on 2 CPU cores, 8 fit in 20 (docs/cifar.md)
        1024,
        1.5,
        airbench.optimizer,
        standardise,
        Augmentation.none(),  # its loader mirrors on alternate epochs and moves by whole pixels
        loader=airbench.AirbenchLoader,
        label_smoothing=0.2,
        tta=airbench.with_flip_translate_tta,
        whiten=True,
        lookahead=True,
    ),
    "resnet9": Network(
        networks.resnet9,
        30,
        512,
        0.4,
        _one_cycle,
        standardise,
        Augmentation(flip=True, rotation=0.0, shift=0.125, zoom=0.0),  # flip and a shift of up to 4 pixels
        label_smoothing=0.2,
        tta=with_flip_tta,
    ),
}
TRANSFER_IMAGE_SIZE = 96  # CIFAR's 32 px images upscaled 3x: what a 2-core CPU extracts in minutes


# What the write-ups this mode grows from reported (the resnet9 recipe is ours).
PUBLISHED = {
    "mlp": "19.3% on CIFAR-100",
    "seed-cnn": "69.4% on CIFAR-10",
    "airbench": "94.01% on CIFAR-10 (airbench94, 50,000 images)",
    "resnet9": "",
    "transfer": "89% training accuracy (InceptionV3, 299px)",
}


# -- training ---------------------------------------------------------------------------


@dataclass
class Outcome:
    """One model's line of the table, and its curves."""

    model: str
    run: Run
    metrics: dict
    history: pd.DataFrame


def _one_hot(ds: tf.data.Dataset, n_classes: int) -> tf.data.Dataset:
    return ds.map(lambda x, y: (x, tf.one_hot(y, n_classes)), num_parallel_calls=tf.data.AUTOTUNE)


def _train_network(config: CifarConfig, data: CifarData, train, val, run: Run) -> tuple[dict, pd.DataFrame]:
    """mlp, seed-cnn, airbench, resnet9: the engine's loader and training loop with the model's recipe."""
    network = NETWORKS[config.model]
    epochs, batch_size = config.epochs or network.epochs, config.batch_size or network.batch_size
    n_classes = len(data.classes)
    loader = network.loader(
        image_size=32,
        batch_size=batch_size,
        preprocess=network.preprocess,
        augmentation=network.augmentation,
        seed=config.seed,
        cache="memory",  # 3 KB an image: decoded once
    )
    model = network.build((32, 32, 3), n_classes)
    if network.whiten:  # from 5,000 training images, as airbench
        sample = train.sample(min(5000, len(train)), random_state=config.seed)
        images = np.concatenate([x for x, _ in loader.evaluation(sample).as_numpy_iterator()])[: len(sample)]
        airbench.whiten(model.get_layer("whiten"), images)
    steps = math.ceil(len(train) / batch_size)
    rate = config.learning_rate or network.learning_rate
    train_data, val_data = loader.training(train), loader.evaluation(val)
    loss = "sparse_categorical_crossentropy"
    if network.label_smoothing:  # Keras smooths one-hot targets only
        train_data, val_data = _one_hot(train_data, n_classes), _one_hot(val_data, n_classes)
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=network.label_smoothing)
    phase = Phase(
        config.model,
        epochs,
        lambda: network.optimizer(rate, steps, epochs),
        adaptive=network.adaptive,
        loss=loss,
        callbacks=[airbench.Lookahead()] if network.lookahead else [],
    )
    fit_phases(model, run, [phase], train_data, val_data, Progress(), resumable=False)  # no --resume here
    best = run.load_model()
    found = labelled_scores(network.tta(best) if network.tta else best, loader, {"val": val, "test": data.test})
    history = pd.read_csv(run.file(Run.log_file))
    plot_history(history, run.file(Run.plot_file), title=f"{run.name}: {config.model} on {config.dataset}")
    metrics = {
        "parameters": int(model.count_params()),
        "epochs": len(history),
        "seconds_per_epoch": round(float(history["seconds"].mean()), 1),
        "train_seconds": round(float(history["seconds"].sum()), 1),
        "batch_size": batch_size,
        "test_tta": network.tta.__name__.removeprefix("with_").removesuffix("_tta") if network.tta else "",
    }
    return metrics | found, history


def _train_transfer(config: CifarConfig, data: CifarData, train, val, run: Run) -> tuple[dict, pd.DataFrame]:
    """A frozen registry backbone on upscaled images: the engine's feature cache and dense head."""
    image_size = config.image_size or TRANSFER_IMAGE_SIZE
    features = Features(
        backbones=(config.backbone,),
        weights=(config.weights,),
        image_size=image_size,
        seed=config.seed,
        cache_dir=config.cache_dir,
        batch_size=config.batch_size or 64,
    )
    settings = HeadSettings(
        head="dense", learning_rate=config.learning_rate or 1e-3, epochs=config.epochs or 60, seed=config.seed
    )
    cache = FeatureCache(features.cache_dir, features.batch_size)
    started = time.perf_counter()
    inputs = head_inputs(cache, features, train, val, [data.test])
    extraction = time.perf_counter() - started
    title = f"{run.name}: dense head on {config.backbone} features"
    head = fit_head(run, settings, inputs, val["label"].to_numpy(), len(data.classes), title)
    found = {}
    for name, x, frame in (("val", inputs.x_val, val), ("test", inputs.others[0], data.test)):
        probabilities = head.model.predict(x, batch_size=1024, verbose=0)
        found |= {f"{name}_{k}": v for k, v in scores(probabilities, frame["label"].to_numpy()).items()}
    metrics = {
        "parameters": int(head.model.count_params()),
        "backbone": f"{config.backbone} at {image_size}px, frozen",
        "epochs": head.epochs,
        "seconds_per_epoch": round(head.seconds / head.epochs, 2),
        "extraction_seconds": round(extraction, 1),
        "images_extracted": cache.extracted,
        "train_seconds": round(extraction + head.seconds, 1),
        "test_tta": features.tta,
    }
    return metrics | found, head.history


def train_model(config: CifarConfig, data: CifarData, run_dir: Path) -> Outcome:
    """One model on the data's training images (validation held out), scored on its test set."""
    train, val = split_frame(data.train, val_split=config.val_split, seed=config.seed, limit=config.limit)
    keras.utils.set_random_seed(config.seed)
    precision = use_precision(config.precision)
    run = Run.create(config.to_json(), data.classes, run_dir)
    log.info(
        f"{config.model} on {config.dataset}: {len(train)} training, {len(val)} validation, "
        f"{len(data.test)} test images ({precision}) -> {run.path}"
    )
    trainer = _train_transfer if config.model == "transfer" else _train_network
    metrics, history = trainer(config, data, train, val, run)
    metrics |= {
        "model": config.model,
        "dataset": config.dataset,
        "train_images": len(train),
        "val_images": len(val),
        "test_images": len(data.test),
        "precision": precision,
        "published": PUBLISHED[config.model],
    }
    run.save_metrics(metrics)
    return Outcome(config.model, run, metrics, history)


TABLE_COLUMNS = {
    "model": "model",
    "parameters": "parameters",
    "epochs": "epochs",
    "seconds_per_epoch": "s / epoch",
    "train_seconds": "training s",
    "test_accuracy": "test accuracy",
    "test_log_loss": "test log loss",
    "published": "published",
}


def results_table(outcomes: list[Outcome]) -> pd.DataFrame:
    return pd.DataFrame([{k: o.metrics[k] for k in TABLE_COLUMNS} for o in outcomes])


def markdown(table: pd.DataFrame) -> str:
    shown = table.assign(
        test_accuracy=table["test_accuracy"].map("{:.2%}".format),
        test_log_loss=table["test_log_loss"].map("{:.4f}".format),
        parameters=table["parameters"].map("{:,}".format),
    ).rename(columns=TABLE_COLUMNS)
    return shown.to_markdown(index=False)


@dataclass
class CifarResult:
    folder: Path
    table: pd.DataFrame

    def text(self) -> str:
        """One line per model, then where the table and the curves are."""
        lines = [
            f"{row.model}: test accuracy {row.test_accuracy:.2%}, test log loss {row.test_log_loss:.4f} "
            f"({row.epochs} epochs, {row.seconds_per_epoch:g} s each)"
            for row in self.table.itertuples(index=False)
        ]
        return "\n".join([*lines, f"results: {self.folder / 'results.md'}, curves: {self.folder / 'accuracy.png'}"])


def run_cifar(config: CifarConfig, models: list[str], run_dir: str | None = None) -> CifarResult:
    """Each model in turn into its own run folder; with several, a table and curves beside them."""
    data = load_cifar(config.data, config.dataset, config.cache_dir)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    name = models[0] if len(models) == 1 else "all"
    root = Path(run_dir) if run_dir else runs_dir() / f"{config.dataset}-{name}-{stamp}"
    if (root / Run.model_file).exists() or (root / "results.csv").exists():
        raise DogbreedsError(f"{root} already holds results; choose another --run-dir")
    outcomes = []
    for model in models:
        outcomes.append(train_model(replace(config, model=model), data, root if len(models) == 1 else root / model))
    table = results_table(outcomes)
    write_atomic(root / "results.csv", table.to_csv(index=False))
    write_atomic(root / "results.md", markdown(table) + "\n")
    plot_accuracy_curves({o.model: o.history for o in outcomes}, root / "accuracy.png", title=config.dataset)
    return CifarResult(root, table)
