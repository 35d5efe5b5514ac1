"""`dogbreeds bench`: images per second of each stage, side by side in one process.

Figures taken in separate processes (or at different times) on a shared machine cannot be
compared, so every stage runs here one after the other, on the same files, after one read
of them (a warm page cache for all). Each figure is taken after a warm-up (tracing, XLA
compilation, the first pass of a pipeline) and is the fastest of three passes, except the
legacy loader's, which has no warm-up and is slow enough to time once, and the forward pass and
submit's path, timed once each (see `_model`).

Stages: the legacy ImageDataGenerator loader and the default tf.data loader with the same
augmentation, and with the strong recipe's batch augmentation; plain decoding, and plain
decoding plus resizing (the reference a loader cannot beat without a cache); the model's
forward pass on in-memory tensors and submit's prediction path from the files; and a
fine-tuning epoch on in-memory tensors and from the
files, which says whether the input pipeline hides behind the model.
"""

from __future__ import annotations

import math
import os
import platform
import sys
import tempfile
import time
from contextlib import redirect_stdout
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from dogbreeds.competition import Competition, readable_test_images
from dogbreeds.config import TrainConfig
from dogbreeds.distribute import use_precision
from dogbreeds.errors import DogbreedsError
from dogbreeds.images import inspect_images
from dogbreeds.inference import make_loader, predict, with_flip_tta
from dogbreeds.models import build_backbone, build_classifier, get_backbone, set_trainable
from dogbreeds.pipeline import prefetched
from dogbreeds.progress import Tracker, track
from dogbreeds.synthetic import make_competition

PHOTO_SIZE = (500, 375)  # what a typical Kaggle dog photo costs to decode

TARGETS = {  # ratio: (numerator, denominator, the least it should be, what it says)
    "tfdata_vs_legacy": ("tfdata_loader", "legacy_loader", 4.0, "default loader / legacy loader"),
    "strong_vs_legacy": ("tfdata_strong", "legacy_loader", 3.0, "default loader, --recipe strong / legacy loader"),
    "tfdata_vs_decode_resize": ("tfdata_loader", "decode_resize", 0.6, "default loader / decode + resize"),
    "submit_vs_forward": ("submit", "forward", 0.9, "submit path / forward pass"),
    "epoch_vs_steps": ("fit_from_files", "fit_in_memory", 1 / 1.1, "epoch from files / in-memory steps (speed)"),
}


@dataclass
class Stage:
    name: str
    what: str
    images: int
    seconds: float
    peak_megabytes: float | None = None  # TensorFlow's allocator on the device that ran it

    @property
    def rate(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else math.inf


@dataclass
class BenchResult:
    settings: dict
    machine: dict
    stages: list[Stage] = field(default_factory=list)

    def rates(self) -> dict[str, float]:
        return {s.name: round(s.rate, 2) for s in self.stages}

    def ratios(self) -> dict[str, dict]:
        rates = {s.name: s.rate for s in self.stages}
        return {
            name: {"ratio": round(rates[top] / rates[bottom], 3), "target": round(least, 3), "what": what}
            | {"met": rates[top] / rates[bottom] >= least}
            for name, (top, bottom, least, what) in TARGETS.items()
            if top in rates and bottom in rates
        }

    def to_dict(self) -> dict:
        return {
            "settings": self.settings,
            "machine": self.machine,
            "stages": [asdict(s) | {"images_per_second": round(s.rate, 2)} for s in self.stages],
            "rates": self.rates(),
            "ratios": self.ratios(),
        }

    def text(self) -> str:
        s, m = self.settings, self.machine
        lines = [
            f"{s['backbone']} at {s['image_size']}x{s['image_size']}, batch {s['batch_size']}, {m['precision']}, "
            f"{s['data']}; {m['device']}, {m['cpus']} CPUs, load average {m['load_average_before']:.2f} "
            f"-> {m['load_average_after']:.2f}",
            "",
        ]
        width = max(len(stage.what) for stage in self.stages)
        lines.append(f"{'stage':<{width}}  {'images':>6}  {'seconds':>8}  {'images/s':>9}  {'peak MB':>8}")
        for stage in self.stages:
            peak = "" if stage.peak_megabytes is None else f"{stage.peak_megabytes:.0f}"
            lines.append(
                f"{stage.what:<{width}}  {stage.images:>6}  {stage.seconds:>8.2f}  {stage.rate:>9.1f}  {peak:>8}"
            )
        lines.append("")
        for ratio in self.ratios().values():
            verdict = "met" if ratio["met"] else "NOT met"
            lines.append(f"{ratio['what']}: {ratio['ratio']:.2f} (target >= {ratio['target']:.2f}, {verdict})")
        return "\n".join(lines)


def _timed(work, repeats: int = 1) -> float:
    """The fastest of `repeats` runs: the steady state, without warm-up or a neighbour's burst."""
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        seconds.append(time.perf_counter() - started)
    return min(seconds)


def _accumulated(
    result: BenchResult, shown: Tracker, model: keras.Model, x, labels, steps: int, accumulate: int
) -> None:
    """The same images per update as the row before, as --accumulate N batches of B / N: the
    memory a smaller batch saves, and what the extra steps cost in speed."""
    small = len(x) // accumulate
    model.compile(
        optimizer=keras.optimizers.Adam(1e-4, gradient_accumulation_steps=accumulate),
        loss="sparse_categorical_crossentropy",
    )
    one_update = tf.data.Dataset.from_tensor_slices((x, labels)).batch(small)
    model.fit(one_update, epochs=1, verbose=0, shuffle=False)  # tracing
    seconds = _timed(lambda: model.fit(one_update.repeat(steps), epochs=1, verbose=0, shuffle=False), repeats=3)
    peak = _peak_megabytes(lambda: model.fit(one_update, epochs=1, verbose=0, shuffle=False))
    what = f"fine-tuning steps, batches of {small}, {accumulate} an update"
    result.stages.append(Stage("fit_accumulated", what, steps * len(x), seconds, peak))
    shown.update()


def _drain(ds) -> None:
    for _ in ds:
        pass


def _frames(
    data: str | Path | None, images: int, model_images: int, folder: Path
) -> tuple[str, pd.DataFrame, pd.DataFrame]:
    """Training images (with labels) and test images, from a competition or generated photos."""
    if data is None:
        n_classes = 6
        data = make_competition(
            folder / "data",
            n_classes=n_classes,
            train_per_class=math.ceil(images / n_classes),
            n_test=model_images,
            image_size=PHOTO_SIZE,
        )
        source = f"{images} generated {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} JPEGs"
    else:
        source = str(data)
    competition = Competition.load(data, need_test=True)
    train = competition.labels.head(images)
    train = train.assign(orientation=inspect_images(train["path"].tolist())["orientation"].to_numpy())
    test = readable_test_images(competition).head(model_images)
    if len(train) < images or len(test) < model_images:
        source += f" ({len(train)} training and {len(test)} test images there)"
    return source, train.reset_index(drop=True), test.reset_index(drop=True)


def bench(
    data: str | Path | None = None,
    *,
    image_size: int | None = None,
    backbone: str = "inception_resnet_v2",
    weights: str = "none",
    batch_size: int = 32,
    images: int = 512,
    model_images: int = 128,
    tta: bool = True,
    precision: str = "auto",
    accumulate: int = 1,
) -> BenchResult:
    """Every stage's images/s in one process; see the module's docstring."""
    if images < 1 or model_images < 1:
        raise DogbreedsError("--images and --model-images must be at least 1")
    if accumulate < 1 or batch_size % accumulate:
        raise DogbreedsError(f"--accumulate must divide --batch-size {batch_size} into whole batches, got {accumulate}")
    image_size = image_size or get_backbone(backbone).size  # an unknown name fails before any work
    config = TrainConfig(
        data=None if data is None else str(data),
        backbone=backbone,
        weights=weights,
        image_size=image_size,
        batch_size=batch_size,
        precision=precision,
        recipe="classic",  # the loader stages compare like with like; the strong recipe has its own
    )
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="dogbreeds-bench-") as folder:
        source, train, test = _frames(data, images, model_images, Path(folder))
        # Whole batches only: a last, smaller batch makes Keras trace the model again, once per call.
        test = test.head(max(batch_size, len(test) // batch_size * batch_size))
        for path in [*train["path"], *test["path"]]:
            Path(path).read_bytes()  # the same warm page cache for every stage
        precision = use_precision(config.precision, quiet=True)  # the table says which
        result = BenchResult(
            settings={
                "data": source,
                "image_size": image_size,
                "backbone": backbone,
                "weights": weights,
                "batch_size": batch_size,
                "images": len(train),
                "model_images": len(test),
                "tta": tta,
                "accumulate": accumulate,
                "augmentation": asdict(config.augmentation),
            },
            machine={
                "device": ", ".join(d.name for d in tf.config.list_logical_devices() if d.device_type != "CPU")
                or f"CPU only ({platform.processor() or platform.machine()})",
                "cpus": os.cpu_count(),
                "precision": precision,
                "tensorflow": tf.__version__,
                "keras": keras.__version__,
                "load_average_before": load_before,
            },
        )
        stages = 10 + (accumulate > 1)  # _loaders times 6, _model 4 (and _accumulated 1)
        with redirect_stdout(sys.stderr):  # ImageDataGenerator prints; standard output may be the JSON
            with track(f"timing {stages} stages", stages, unit="stage") as shown:
                _loaders(result, shown, config, train)
                _model(result, shown, config, train, test, tta, accumulate)
        result.machine["load_average_after"] = os.getloadavg()[0]
    return result


def _loaders(result: BenchResult, shown: Tracker, config: TrainConfig, train: pd.DataFrame) -> None:
    n, size = len(train), config.image_size
    legacy = make_loader(replace(config.with_recipe("classic"), loader="legacy").loading).training(train)
    seconds = _timed(lambda: [legacy[i] for i in range(len(legacy))])  # what fit does with it: one thread
    result.stages.append(Stage("legacy_loader", "legacy loader (ImageDataGenerator), augmented", n, seconds))
    shown.update()

    fast = make_loader(config.loading).training(train)
    _drain(fast)  # the first epoch compiles the warp
    seconds = _timed(lambda: _drain(fast), repeats=3)
    result.stages.append(Stage("tfdata_loader", "default loader (tf.data), augmented", n, seconds))
    shown.update()
    classes = int(train["label"].max()) + 1
    strong = make_loader(config.with_recipe("strong").loading, classes=classes).training(train)
    _drain(strong)
    what = "default loader, --recipe strong (its batch augmentation)"
    result.stages.append(Stage("tfdata_strong", what, n, _timed(lambda: _drain(strong), repeats=3)))
    shown.update()
    cached = make_loader(replace(config, cache_images="memory").loading).training(train)
    _drain(cached)  # the first epoch fills the cache
    what = "default loader, --cache-images memory, later epochs"
    result.stages.append(Stage("tfdata_cached", what, n, _timed(lambda: _drain(cached), repeats=3)))
    shown.update()

    paths = tf.data.Dataset.from_tensor_slices(train["path"].to_numpy(dtype=str))

    def plain(path):
        return tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)

    for name, what, function in [
        ("decode", "decode alone (tf.io.decode_image)", lambda p: tf.shape(plain(p))),
        ("decode_resize", "decode + resize (bilinear)", lambda p: tf.image.resize(plain(p), (size, size))),
    ]:
        ds = paths.map(function, num_parallel_calls=tf.data.AUTOTUNE).batch(config.batch_size)
        ds = prefetched(ds)  # the loaders' own settings: each stage at its best
        _drain(ds)
        result.stages.append(Stage(name, what, n, _timed(lambda: _drain(ds), repeats=3)))
        shown.update()


def _peak_megabytes(work) -> float:
    """The most memory TensorFlow's allocator held while `work` ran, on the device the model uses."""
    device = "GPU:0" if tf.config.list_logical_devices("GPU") else "CPU:0"
    tf.config.experimental.reset_memory_stats(device)
    work()
    return tf.config.experimental.get_memory_info(device)["peak"] / 2**20


def _model(
    result: BenchResult,
    shown: Tracker,
    config: TrainConfig,
    train: pd.DataFrame,
    test: pd.DataFrame,
    tta: bool,
    accumulate: int,
) -> None:
    n_classes = int(train["label"].max()) + 1
    backbone = build_backbone(config.backbone, config.weights, config.image_size)
    model = build_classifier(backbone, n_classes, pretrained=config.pretrained)
    batch = config.batch_size
    rng = np.random.default_rng(0)
    pixels = rng.uniform(0, 255, (batch, config.image_size, config.image_size, 3)).astype("float32")
    x = tf.constant(get_backbone(config.backbone).preprocess(pixels))
    steps = math.ceil(len(test) / batch)
    served = with_flip_tta(model) if tta else model
    tensors = tf.data.Dataset.from_tensors(x)
    served.predict(tensors, verbose=0)  # tracing
    seconds = _timed(lambda: served.predict(tensors.repeat(steps), verbose=0))  # once, like submit (see below)
    passes = " (and its mirror)" if tta else ""
    result.stages.append(Stage("forward", f"forward pass{passes}, in-memory tensors", steps * batch, seconds))
    shown.update()

    # submit's own path (header check, decoding, batching, the TTA model); it traces a new model
    # each call, so the cost per image is the difference between a run on all images and on one batch.
    # Its first steps after tracing are slow (see the fit rows) and cannot be left out, so the
    # forward pass above is timed once too: with few images both carry that warm-up.
    loader = make_loader(config.loading)

    def submit_path(frame):
        return predict(model, loader, inspect_images(frame["path"].tolist()), tta=tta, desc=None)  # shown as a stage

    submit_path(test.head(batch))  # the first call sets up the pipeline's functions
    small = _timed(lambda: submit_path(test.head(batch)))
    full = _timed(lambda: submit_path(test))
    seconds = full
    if len(test) > batch and full - small > 0.2 * full:  # else too small a model or sample to tell
        seconds = (full - small) * len(test) / (len(test) - batch)
    result.stages.append(Stage("submit", f"submit's prediction path{passes}, from files", len(test), seconds))
    shown.update()

    # Fine-tuning steps: the whole backbone trainable, as in the second phase.
    set_trainable(backbone, None, pretrained=config.pretrained)
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="sparse_categorical_crossentropy")
    fit_frame = train.head(steps * batch)
    files = make_loader(config.loading).training(fit_frame)
    labels = tf.constant(rng.integers(n_classes, size=batch), dtype=tf.int64)
    # Batched from slices, so that both datasets have the same signature and share one traced step.
    in_memory = tf.data.Dataset.from_tensor_slices((x, labels)).batch(batch)
    steps_in_memory = in_memory.repeat(steps)
    model.fit(in_memory, epochs=1, verbose=0, shuffle=False)  # tracing
    # The first few passes after tracing can take nearly twice as long as the rest (measured:
    # 5.1 s, 5.1 s, 5.1 s, then 2.8 s for 96 images); each fit row is its fastest of three.
    seconds = _timed(lambda: model.fit(steps_in_memory, epochs=1, verbose=0, shuffle=False), repeats=3)
    peak = _peak_megabytes(lambda: model.fit(in_memory, epochs=1, verbose=0, shuffle=False))
    result.stages.append(Stage("fit_in_memory", "fine-tuning steps, in-memory tensors", steps * batch, seconds, peak))
    shown.update()
    if accumulate > 1:
        _accumulated(result, shown, model, x, labels, steps, accumulate)
    _drain(files)  # the first epoch compiles the warp, as in the first epoch of a run
    seconds = _timed(lambda: model.fit(files, epochs=1, verbose=0, shuffle=False), repeats=3)
    result.stages.append(Stage("fit_from_files", "fine-tuning epoch, from files, augmented", len(fit_frame), seconds))
    shown.update()
