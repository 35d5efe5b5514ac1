"""`dogbreeds cifar`: the CIFAR-10/100 experiments on the competition's engine.

Every source (the python batches, image folders, keras.datasets) becomes image folders
(`train/<class>/`, `test/<class>/`), so the images go through the same loader, models train
in the same loop (`training.fit_phases`) into the same kind of run folder, and `transfer`
uses the same feature cache as `--method features`. What is CIFAR's own lives here: reading
its files, and each model's recipe (optimizer, schedule, augmentation, epochs).
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import pickle
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Callable

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from PIL import Image

from dogbreeds.cache import FeatureCache, head_inputs
from dogbreeds.competition import split
from dogbreeds.config import CIFAR_MODELS, Augmentation, CifarConfig, TrainConfig
from dogbreeds.distribute import use_precision
from dogbreeds.errors import DogbreedsError, log
from dogbreeds.heads import fit_head
from dogbreeds.images import inspect_images
from dogbreeds.inference import labelled_scores, with_flip_translate_tta, with_flip_tta
from dogbreeds.metrics import scores
from dogbreeds.models import CIFAR_ARCHITECTURES, whiten
from dogbreeds.pipeline import TFDataLoader
from dogbreeds.places import feature_cache, runs_dir
from dogbreeds.report import plot_accuracy_curves, plot_history
from dogbreeds.runs import Run, write_atomic
from dogbreeds.training import Lookahead, Phase, Progress, ScaledSGD, Triangular, fit_phases

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"}
DATA_HINT = (
    "pass --data DIR: the python batches folder (cifar-10-batches-py, cifar-100-python) "
    "or image folders train/<class>/ and test/<class>/"
)

# -- data -------------------------------------------------------------------------------


@dataclass
class CifarData:
    classes: list[str]
    train: pd.DataFrame  # path, label, orientation: the whole training set
    test: pd.DataFrame
    source: str


class _PlainData(pickle.Unpickler):
    """Unpickles numpy arrays, lists, dicts, strings and numbers, and nothing else.

    A pickle can name any importable function to call while loading; the CIFAR batches need
    only numpy's array reconstruction, so every other name is refused before it is looked up.
    """

    ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),  # arrays pickled at protocol 5
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),  # how Python 3 pickles bytes at protocol 2
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name}")


def _plain(value) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, (str, bytes)) and _plain(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, np.ndarray):
        return value.dtype != object
    return isinstance(value, (str, bytes, int, float, bool, type(None)))


def read_batch(path: Path) -> dict:
    """One CIFAR python batch (a pickled dict), its keys as str; only plain data comes out."""
    try:
        with open(path, "rb") as f:
            value = _PlainData(f, encoding="bytes").load()
    except pickle.UnpicklingError as error:
        raise DogbreedsError(
            f"{path} asks to load {error}, not plain arrays, lists and dicts: refused (unpickling it could run "
            "code); use the files from https://www.cs.toronto.edu/~kriz/cifar.html"
        ) from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, OSError) as error:
        raise DogbreedsError(
            f"{path} is not a CIFAR python batch ({type(error).__name__}); download it again"
        ) from None
    if not isinstance(value, dict) or not _plain(value):
        raise DogbreedsError(f"{path} does not hold a dict of plain arrays and lists; it is not a CIFAR batch")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in value.items()}


def _batch_arrays(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    batch = read_batch(path)
    if "data" not in batch or label_key not in batch:
        raise DogbreedsError(f"{path} has no {label_key!r} or 'data' entry; it is not a batch of this dataset")
    images = np.asarray(batch["data"], dtype=np.uint8)
    if images.ndim != 2 or images.shape[1] != 3 * 32 * 32:
        raise DogbreedsError(f"{path}: images of shape {images.shape}, expected (n, 3072)")
    labels = np.asarray(batch[label_key], dtype=np.int64)
    return images.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def _names(values) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def read_python_batches(folder: Path) -> tuple[list[str], tuple, tuple]:
    """cifar-10-batches-py (data_batch_1..5, test_batch) or cifar-100-python (train, test):
    class names and (images NHWC uint8, labels) for train and test."""
    if (folder / "data_batch_1").is_file():
        names = (
            _names(read_batch(folder / "batches.meta")["label_names"]) if (folder / "batches.meta").is_file() else []
        )
        parts = [_batch_arrays(p, "labels") for p in sorted(folder.glob("data_batch_*"))]
        train = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
        test = _batch_arrays(folder / "test_batch", "labels")
    else:
        names = _names(read_batch(folder / "meta")["fine_label_names"]) if (folder / "meta").is_file() else []
        train, test = _batch_arrays(folder / "train", "fine_labels"), _batch_arrays(folder / "test", "fine_labels")
    n_classes = int(max(train[1].max(), test[1].max())) + 1
    return names or [f"class-{i:02d}" for i in range(n_classes)], train, test


def _write_png(path: Path, image: np.ndarray) -> None:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    path.write_bytes(buffer.getvalue())


def arrays_to_folders(classes: list[str], train: tuple, test: tuple, root: Path) -> Path:
    """The arrays as lossless PNG image folders, once: later calls find them (written, then renamed)."""
    digest = hashlib.sha256(repr(classes).encode())
    for images, labels in (train, test):
        digest.update(images.tobytes())
        digest.update(np.asarray(labels, np.int64).tobytes())
    target = root / f"images-{len(classes)}-classes-{digest.hexdigest()[:16]}"
    if target.is_dir():
        return target
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    log.info(f"writing the {len(train[1]) + len(test[1])} images once as PNG files under {target}")
    jobs = []
    for part, (images, labels) in (("train", train), ("test", test)):
        for name in classes:
            (partial / part / name.replace("/", "_")).mkdir(parents=True, exist_ok=True)
        for i, (image, label) in enumerate(zip(images, labels)):
            jobs.append((partial / part / classes[label].replace("/", "_") / f"{i:05d}.png", image))
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda job: _write_png(*job), jobs, chunksize=256))
    os.replace(partial, target)
    return target


def _folder_frame(folder: Path, classes: list[str]) -> pd.DataFrame:
    index = {name: i for i, name in enumerate(classes)}
    rows = [
        (str(path), index[path.parent.name])
        for path in sorted(folder.glob("*/*"))
        if path.suffix.lower() in IMAGE_SUFFIXES and path.parent.name in index
    ]
    return pd.DataFrame(rows, columns=["path", "label"])


def read_image_folders(root: Path, classes: list[str] | None = None) -> tuple[list[str], pd.DataFrame, pd.DataFrame]:
    """train/<class>/*.jpg and test/<class>/*.jpg; the classes are train's folder names, sorted,
    unless their order is known (the label order of batches written as folders)."""
    classes = classes or sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    if len(classes) < 2:
        raise DogbreedsError(
            f"{root / 'train'} has {len(classes)} class folders; it needs train/<class>/ for each class"
        )
    strays = sorted(p.name for p in (root / "test").iterdir() if p.is_dir() and p.name not in classes)
    if strays:
        raise DogbreedsError(
            f"{root / 'test'}: classes not in train/: {', '.join(strays[:3])}; use one dataset's folders"
        )
    train, test = _folder_frame(root / "train", classes), _folder_frame(root / "test", classes)
    for part, frame in (("train", train), ("test", test)):
        if frame.empty:
            raise DogbreedsError(f"no images in {root / part}/<class>/; {DATA_HINT}")
    return classes, train, test


def _download(dataset: str):
    module = keras.datasets.cifar10 if dataset == "cifar10" else keras.datasets.cifar100
    try:
        (x, y), (x_test, y_test) = module.load_data()
    except Exception as error:  # keras raises whatever urllib or the archive gives
        raise DogbreedsError(
            f"could not download {dataset} with keras.datasets ({type(error).__name__}); "
            f"connect to the internet once, or {DATA_HINT}"
        ) from None
    classes = CIFAR10_CLASSES if dataset == "cifar10" else [f"class-{i:02d}" for i in range(100)]
    return classes, (x, y.reshape(-1)), (x_test, y_test.reshape(-1))


def load_cifar(data: str | None, dataset: str, cache_dir: str | Path) -> CifarData:
    """Image folders as they are; python batches or a download written once as image folders."""
    cache, order = feature_cache(cache_dir) / "cifar", None
    if data is None:
        arrays = _download(dataset)
        root, source, order = arrays_to_folders(*arrays, cache), f"keras.datasets.{dataset}", arrays[0]
    else:
        folder = Path(data)
        if not folder.is_dir():
            raise DogbreedsError(f"--data {data} is not a folder; {DATA_HINT}")
        if (folder / "train").is_dir() and (folder / "test").is_dir():
            root, source = folder, str(folder)
        elif (folder / "data_batch_1").is_file() or (folder / "train").is_file():
            arrays = read_python_batches(folder)
            root, source, order = arrays_to_folders(*arrays, cache), str(folder), arrays[0]
        else:
            raise DogbreedsError(f"--data {data} holds neither CIFAR python batches nor train/ and test/; {DATA_HINT}")
    classes, train, test = read_image_folders(root, order and [name.replace("/", "_") for name in order])
    report = inspect_images(train["path"].tolist() + test["path"].tolist())
    bad = report[report["problem"] != ""]
    if len(bad):
        raise DogbreedsError(
            f"{len(bad)} images cannot be read (first: {bad['path'].iloc[0]}: {bad['problem'].iloc[0]})"
        )
    orientation = report["orientation"].to_numpy()
    train, test = (
        train.assign(orientation=orientation[: len(train)]),
        test.assign(orientation=orientation[len(train) :]),
    )
    return CifarData(classes, train, test, source)


# -- recipes ----------------------------------------------------------------------------

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


def _airbench_sgd(rate: float, steps_per_epoch: int, epochs: int) -> keras.optimizers.Optimizer:
    """airbench94's optimizer in Keras' terms: Nesterov SGD, momentum 0.85, on a triangular
    schedule peaking at `rate` (its 11.5 per 1024 images on a summed loss is 1.5 on Keras' mean);
    BatchNormalization shifts at 64 times the rate; its coupled weight decay (1.33e-3 on the mean
    loss), which momentum multiplies by 1 / (1 - 0.85), as decoupled decay of 8.9e-3 x rate."""
    return ScaledSGD(
        Triangular(rate, steps_per_epoch * epochs),
        momentum=0.85,
        nesterov=True,
        weight_decay=8.9e-3,
        rate_scales={"beta": 64.0},
    )


@dataclass(frozen=True)
class Recipe:
    """How a model trains by default: the write-ups' settings for mlp and seed-cnn, airbench94's
    for cnn, ours for resnet9."""

    epochs: int
    batch_size: int
    learning_rate: float
    optimizer: Callable[[float, int, int], keras.optimizers.Optimizer]  # (rate, steps per epoch, epochs)
    preprocess: Callable
    augmentation: Augmentation
    adaptive: bool = False  # early stopping and rate cuts on a plateau, instead of a fixed schedule
    label_smoothing: float = 0.0
    tta: Callable[[keras.Model], keras.Model] | None = None  # the views test predictions average
    alternate_flips: bool = False  # each image mirrored on alternate epochs, not at random
    whole_pixels: bool = False  # shifts by whole pixels
    whiten: bool = False  # the first layer whitens the patches of training images, frozen
    lookahead: bool = False


RECIPES = {
    "mlp": Recipe(30, 128, 1e-3, _adam, standardise, Augmentation.none(), adaptive=True),
    "seed-cnn": Recipe(10, 32, 0.01, _sgd_time_decay, unit_scale, Augmentation.none()),
    "cnn": Recipe(
        8,  # airbench94's 10 take about 22 minutes on 2 CPU cores, 8 fit in 20 (docs/cifar.md)
        1024,
        1.5,
        _airbench_sgd,
        standardise,
        Augmentation(flip=True, rotation=0.0, shift=2 / 32, zoom=0.0),  # flip and a shift of up to 2 pixels
        label_smoothing=0.2,
        tta=with_flip_translate_tta,
        alternate_flips=True,
        whole_pixels=True,
        whiten=True,
        lookahead=True,
    ),
    "resnet9": Recipe(
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


# What the write-ups this mode grows from reported (the resnet9 recipe is ours).
PUBLISHED = {
    "mlp": "19.3% on CIFAR-100",
    "seed-cnn": "69.4% on CIFAR-10",
    "cnn": "94.01% on CIFAR-10 (airbench94, 50,000 images)",
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
    """mlp, seed-cnn, cnn, resnet9: the competition's loader and training loop with the model's recipe."""
    recipe = RECIPES[config.model]
    epochs, batch_size = config.epochs or recipe.epochs, config.batch_size or recipe.batch_size
    n_classes = len(data.classes)
    loader = TFDataLoader(
        image_size=32,
        batch_size=batch_size,
        preprocess=recipe.preprocess,
        augmentation=recipe.augmentation,
        seed=config.seed,
        cache="memory",  # 3 KB an image: decoded once
        alternate_flips=recipe.alternate_flips,
        whole_pixels=recipe.whole_pixels,
    )
    model = CIFAR_ARCHITECTURES[config.model]((32, 32, 3), n_classes)
    if recipe.whiten:  # from 5,000 training images, as airbench
        sample = train.sample(min(5000, len(train)), random_state=config.seed)
        images = np.concatenate([x for x, _ in loader.evaluation(sample).as_numpy_iterator()])[: len(sample)]
        whiten(model.get_layer("whiten"), images)
    steps = math.ceil(len(train) / batch_size)
    rate = config.learning_rate or recipe.learning_rate
    train_data, val_data = loader.training(train), loader.evaluation(val)
    loss = "sparse_categorical_crossentropy"
    if recipe.label_smoothing:  # Keras smooths one-hot targets only
        train_data, val_data = _one_hot(train_data, n_classes), _one_hot(val_data, n_classes)
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=recipe.label_smoothing)
    phase = Phase(
        config.model,
        epochs,
        lambda: recipe.optimizer(rate, steps, epochs),
        adaptive=recipe.adaptive,
        loss=loss,
        callbacks=[Lookahead()] if recipe.lookahead else [],
    )
    fit_phases(model, run, [phase], train_data, val_data, Progress(), resumable=False)  # no --resume here
    best = run.load_model()
    found = labelled_scores(recipe.tta(best) if recipe.tta else best, loader, {"val": val, "test": data.test})
    history = pd.read_csv(run.file(Run.log_file))
    plot_history(history, run.file(Run.plot_file), title=f"{run.name}: {config.model} on {config.dataset}")
    metrics = {
        "parameters": int(model.count_params()),
        "epochs": len(history),
        "seconds_per_epoch": round(float(history["seconds"].mean()), 1),
        "train_seconds": round(float(history["seconds"].sum()), 1),
        "batch_size": batch_size,
        "test_tta": recipe.tta.__name__.removeprefix("with_").removesuffix("_tta") if recipe.tta else "",
    }
    return metrics | found, history


def _train_transfer(config: CifarConfig, data: CifarData, train, val, run: Run) -> tuple[dict, pd.DataFrame]:
    """A frozen registry backbone on upscaled images: the competition's feature cache and dense head."""
    settings = TrainConfig(
        method="features",
        backbone=config.backbone,
        weights=config.weights,
        image_size=config.image_size,
        batch_size=config.batch_size or 64,
        head_epochs=config.epochs or 60,
        learning_rate=config.learning_rate or 1e-3,
        seed=config.seed,
        cache_dir=config.cache_dir,
    )
    cache = FeatureCache(settings.cache_dir, settings.batch_size)
    started = time.perf_counter()
    inputs = head_inputs(cache, settings, train, val, [data.test])
    extraction = time.perf_counter() - started
    title = f"{run.name}: dense head on {config.backbone} features"
    n_classes = len(data.classes)
    head = fit_head(run, settings, inputs.x, inputs.y, inputs.x_val, val["label"].to_numpy(), n_classes, title)
    found = {}
    for name, x, frame in (("val", inputs.x_val, val), ("test", inputs.others[0], data.test)):
        probabilities = head.model.predict(x, batch_size=1024, verbose=0)
        found |= {f"{name}_{k}": v for k, v in scores(probabilities, frame["label"].to_numpy()).items()}
    metrics = {
        "parameters": int(head.model.count_params()),
        "backbone": f"{config.backbone} at {config.image_size}px, frozen",
        "epochs": head.epochs,
        "seconds_per_epoch": round(head.seconds / head.epochs, 2),
        "extraction_seconds": round(extraction, 1),
        "images_extracted": cache.extracted,
        "train_seconds": round(extraction + head.seconds, 1),
        "test_tta": settings.tta,
    }
    return metrics | found, head.history


def train_model(config: CifarConfig, data: CifarData, run_dir: Path) -> Outcome:
    """One model on the data's training images (validation held out), scored on its test set."""
    train, val = split(data.train, val_split=config.val_split, seed=config.seed, limit=config.limit)
    keras.utils.set_random_seed(config.seed)
    precision = use_precision(config.precision)
    run = Run.create(config, data.classes, run_dir)
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
    lines = ["| " + " | ".join(shown.columns) + " |", "|" + " --- |" * len(shown.columns)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in shown.itertuples(index=False)]
    return "\n".join(lines)


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


def parse_models(value: str) -> list[str]:
    if value == "all":
        return ["mlp", "seed-cnn", "resnet9", "cnn", "transfer"]  # the table's order: from the write-ups on
    names = [v.strip() for v in value.split(",")]
    unknown = [n for n in names if n not in CIFAR_MODELS]
    if unknown:
        raise DogbreedsError(f"--model {unknown[0]!r} is not one of {', '.join(CIFAR_MODELS)}, all")
    return names
