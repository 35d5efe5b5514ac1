"""Bottleneck features: run each image through a frozen backbone once, keep the vectors.

A fine-tuning run recomputes the frozen backbone on every epoch; this method computes it
once, stores it in a cache, and trains only a head on the stored vectors, so a second
run with other head settings takes seconds. Concatenating the vectors of several
backbones (an ensemble) costs one extraction each.

The cache holds one entry per (backbone, weights, image size, preprocessing, view, image
files), named by a hash of those: any change gives a new entry, never a stale one.

    cache/<key>/features.npy     float32 (images, features), memory-mapped
    cache/<key>/meta.json        what the key stands for
    cache/<key>.partial/         an extraction under way: features.npy + progress.json

An entry is written under `.partial`, which is renamed into place when complete; an
interrupted extraction resumes from the last batch its progress file records.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from numpy.lib.format import open_memmap
from sklearn.linear_model import LogisticRegression
from tqdm.auto import tqdm

from dogbreeds.config import Augmentation, TrainConfig
from dogbreeds.errors import log
from dogbreeds.models import build_backbone, get_backbone
from dogbreeds.pipeline import CACHE_FORMAT as DECODING_FORMAT
from dogbreeds.pipeline import TFDataLoader
from dogbreeds.runs import Run, write_atomic

CACHE_FORMAT = 2  # 2: images decoded by the pipeline's uint8, DCT-scaled JPEG path


def view_name(view: int) -> str:
    return {0: "plain", 1: "mirror"}.get(view, f"augmented-{view - 1}")


def _file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files_digest(paths: list[str]) -> str:
    """The list of images, in order, with each file's size and modification time."""
    digest = hashlib.sha256()
    for path in paths:
        stat = os.stat(path)
        digest.update(f"{path}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class FeatureSpec:
    """What one cache entry's vectors depend on, besides the image files."""

    backbone: str
    weights: str  # "imagenet", "none", or a file path
    image_size: int
    view: int = 0
    augmentation: Augmentation = field(default_factory=Augmentation)
    seed: int = 42

    def identity(self) -> dict:
        weights = self.weights
        if weights.lower() == "none":
            weights = f"none/seed-{self.seed}"  # random weights are only repeatable for one seed
        elif weights != "imagenet":
            weights = "sha256:" + _file_digest(weights)  # the content, wherever the file lies
        identity = {
            "format": CACHE_FORMAT,
            "decoding": DECODING_FORMAT,  # a change in how images are decoded changes the vectors
            "keras": keras.__version__,
            "backbone": self.backbone,
            "weights": weights,
            "image_size": self.image_size,
            "preprocessing": f"{get_backbone(self.backbone).preprocess.__module__}.preprocess_input",
            "precision": keras.mixed_precision.global_policy().name,  # bfloat16 vectors differ from float32 ones
            "view": view_name(self.view),
        }
        if self.view >= 2:
            identity |= {"augmentation": asdict(self.augmentation), "seed": self.seed}
        return identity

    def key(self, paths: list[str]) -> str:
        text = json.dumps(self.identity() | {"files": _files_digest(paths), "count": len(paths)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:24]


class FeatureCache:
    """Pooled backbone features on disk, computed at most once for each key."""

    def __init__(self, root: str | Path, batch_size: int = 32):
        self.root = Path(root)
        self.batch_size = batch_size
        self.extracted = 0  # images run through a backbone by this cache: what reuse saves
        self._extractors: dict[tuple, tuple[keras.Model, object]] = {}

    def features(self, spec: FeatureSpec, images: pd.DataFrame) -> np.ndarray:
        """(images, features) for a frame with a `path` column, read-only and memory-mapped."""
        paths = images["path"].tolist()
        entry = self.root / spec.key(paths)
        if not (entry / "features.npy").is_file():
            self._extract(spec, images, entry)
        return np.load(entry / "features.npy", mmap_mode="r")

    def _extractor(self, spec: FeatureSpec) -> tuple[keras.Model, object]:
        """The pooled backbone and its compiled forward pass, built once per cache."""
        key = (spec.backbone, spec.weights, spec.image_size)
        if key not in self._extractors:
            keras.utils.set_random_seed(spec.seed)  # `--weights none` draws the same network each time
            backbone = build_backbone(spec.backbone, spec.weights, spec.image_size)
            pooled = keras.layers.GlobalAveragePooling2D(dtype="float32")(backbone.output)
            model = keras.Model(backbone.input, pooled, name=f"{spec.backbone}_features")
            signature = [tf.TensorSpec((None, spec.image_size, spec.image_size, 3), tf.float32)]
            forward = tf.function(lambda x: model(x, training=False), input_signature=signature)
            self._extractors[key] = (model, forward)
        return self._extractors[key]

    def _extract(self, spec: FeatureSpec, images: pd.DataFrame, entry: Path) -> None:
        """Stream the vectors into a memory-mapped file; progress is saved after every batch."""
        model, forward = self._extractor(spec)
        partial = entry.with_name(entry.name + ".partial")
        partial.mkdir(parents=True, exist_ok=True)
        store, progress = partial / "features.npy", partial / "progress.json"
        shape = (len(images), model.output_shape[-1])
        done = json.loads(progress.read_text())["done"] if progress.is_file() and store.is_file() else 0
        array = open_memmap(store, mode="r+" if done else "w+", dtype=np.float32, shape=shape)
        loader = TFDataLoader(
            image_size=spec.image_size,
            batch_size=self.batch_size,
            preprocess=get_backbone(spec.backbone).preprocess,
            augmentation=spec.augmentation,
            seed=spec.seed,
        )
        batches = loader.prediction(images.iloc[done:], view=spec.view, first_batch=done // self.batch_size)
        description = f"{spec.backbone} {spec.image_size}px {view_name(spec.view)}"
        with tqdm(total=len(images), initial=done, unit="img", desc=description, dynamic_ncols=True) as bar:
            for batch in batches:
                vectors = forward(batch).numpy()
                array[done : done + len(vectors)] = vectors
                done += len(vectors)
                self.extracted += len(vectors)
                bar.update(len(vectors))
                array.flush()
                write_atomic(progress, json.dumps({"done": done}))
        del array
        identity = spec.identity() | {"images": shape[0], "features": shape[1], "first": images["path"].iloc[0]}
        write_atomic(partial / "meta.json", json.dumps(identity, indent=1))
        progress.unlink()
        try:
            os.replace(partial, entry)  # the entry appears whole, or not at all
        except OSError:  # another process completed the same entry first
            shutil.rmtree(partial, ignore_errors=True)


def backbone_specs(config: TrainConfig) -> list[FeatureSpec]:
    """One spec per backbone of the ensemble, each at --image-size or its native size."""
    return [
        FeatureSpec(
            backbone=name,
            weights=config.weights_for(i),
            image_size=config.image_size or get_backbone(name).native_size,
            augmentation=config.augmentation,
            seed=config.seed,
        )
        for i, name in enumerate(config.backbones)
    ]


def ensemble_features(cache: FeatureCache, config: TrainConfig, images: pd.DataFrame, views: list[int]) -> np.ndarray:
    """Backbone vectors side by side, averaged over `views` (plain and mirror: flip TTA)."""
    parts = []
    for spec in backbone_specs(config):
        stack = [cache.features(replace(spec, view=v), images) for v in views]
        parts.append(np.mean(stack, axis=0, dtype=np.float32))
    return np.concatenate(parts, axis=1)


def training_features(cache: FeatureCache, config: TrainConfig, images: pd.DataFrame) -> np.ndarray:
    """Every view of every training image as its own row: (views x images, features)."""
    return np.concatenate([ensemble_features(cache, config, images, [v]) for v in range(config.feature_views)])


def evaluation_views(config: TrainConfig, tta: bool | None = None) -> list[int]:
    return [0, 1] if (config.tta if tta is None else tta) else [0]


@dataclass
class HeadInputs:
    """What a head trains and is scored on: a row per view of each training image, with its
    label (the rows come view by view, so the labels repeat in the same order), and the
    vectors of the validation images and of any other sets, their evaluation views averaged."""

    x: np.ndarray
    y: np.ndarray
    x_val: np.ndarray
    others: list[np.ndarray]


def head_inputs(
    cache: FeatureCache, config: TrainConfig, train: pd.DataFrame, val: pd.DataFrame, others=()
) -> HeadInputs:
    views = evaluation_views(config)
    return HeadInputs(
        x=training_features(cache, config, train),
        y=np.tile(train["label"].to_numpy(), config.feature_views),
        x_val=ensemble_features(cache, config, val, views),
        others=[ensemble_features(cache, config, images, views) for images in others],
    )


# -- heads ------------------------------------------------------------------------------


def _dense_head(n_features: int, n_classes: int, dropout: float) -> keras.Model:
    inputs = keras.Input((n_features,), name="features")
    x = keras.layers.BatchNormalization(name="head_norm")(inputs)
    x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", dtype="float32", name="breed")(x)
    return keras.Model(inputs, outputs, name="dense_head")


def _dropout_mask(shape, rate: float, seed) -> tf.Tensor:
    """Inverted dropout from random bytes: a quarter of the random draws of Keras' Dropout,
    which spent half of each head epoch drawing them. The rate is kept to 1/256."""
    rows, columns = shape[0], shape[1]
    words = tf.random.stateless_uniform((rows, -(-columns // 4)), seed, minval=None, maxval=None, dtype=tf.int32)
    noise = tf.reshape(tf.bitcast(words, tf.uint8), (rows, -1))[:, :columns]
    kept = min(255, max(1, round((1 - rate) * 256)))
    return tf.cast(noise < kept, tf.float32) * (256 / kept)


def train_dense_head(config: TrainConfig, x, y, x_val, y_val, n_classes: int) -> tuple[keras.Model, pd.DataFrame]:
    """Keras: BatchNormalization, Dropout, Dense softmax; early stopping on validation loss.

    Each epoch is one compiled call (shuffle, every mini-batch step, then the validation
    scores): `fit` would spend far longer in Python per epoch than the head needs to learn.
    The step applies the model's layers itself, with a cheaper dropout mask (`_dropout_mask`).
    """
    keras.utils.set_random_seed(config.seed)
    model = _dense_head(x.shape[1], n_classes, config.dropout)
    norm, dense = model.get_layer("head_norm"), model.get_layer("breed")
    optimizer = keras.optimizers.Adam(config.learning_rate)
    optimizer.build(model.trainable_variables)  # variables made inside the traced epoch would trace it twice
    cross_entropy = keras.losses.SparseCategoricalCrossentropy()
    x, y = tf.constant(x, tf.float32), tf.constant(y, tf.int64)
    x_val, y_val = tf.constant(x_val, tf.float32), tf.constant(y_val, tf.int64)
    # About 32 steps an epoch, of 32 to 256 vectors: measured on CIFAR features, larger batches
    # gave both a lower validation log loss and a faster head than the images' --batch-size.
    batch_size = int(np.clip(len(x) // 32, 32, 256))

    def correct(labels, p):
        return tf.reduce_sum(tf.cast(tf.argmax(p, axis=1) == labels, tf.float32))

    def forward(batch, seed):
        h = norm(batch, training=True)
        if config.dropout:
            h = h * _dropout_mask(tf.shape(h), config.dropout, seed)
        return dense(h)

    @tf.function
    def epoch(seed):
        n = tf.shape(x)[0]
        order = tf.random.experimental.stateless_shuffle(tf.range(n), seed)
        total_loss, total_correct = 0.0, 0.0
        for start in tf.range(0, n, batch_size):
            rows = order[start : start + batch_size]
            labels = tf.gather(y, rows)
            with tf.GradientTape() as tape:
                p = forward(tf.gather(x, rows), tf.random.experimental.stateless_fold_in(seed, start))
                loss = cross_entropy(labels, p)
            gradients = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(gradients, model.trainable_variables))
            total_loss += loss * tf.cast(tf.shape(rows)[0], tf.float32)
            total_correct += correct(labels, p)
        p_val = model(x_val, training=False)
        size, val_size = tf.cast(n, tf.float32), tf.cast(tf.shape(x_val)[0], tf.float32)
        return total_loss / size, total_correct / size, cross_entropy(y_val, p_val), correct(y_val, p_val) / val_size

    rows, best, wait = [], (math.inf, None), 0
    for i in range(config.head_epochs):
        loss, accuracy, val_loss, val_accuracy = (float(v) for v in epoch(tf.constant([config.seed, i])))
        rows.append(
            {
                "epoch": i,
                "phase": "head",
                "loss": loss,
                "accuracy": accuracy,
                "val_loss": val_loss,
                "val_accuracy": val_accuracy,
            }
        )
        if val_loss < best[0]:
            best, wait = (val_loss, model.get_weights()), 0
        else:
            wait += 1
            if wait >= max(5, config.patience):
                break
    model.set_weights(best[1])
    return model, pd.DataFrame(rows)


def train_logreg_head(config: TrainConfig, x, y, x_val, y_val, n_classes: int) -> tuple[keras.Model, pd.DataFrame]:
    """scikit-learn multinomial logistic regression, its strength C chosen on validation.

    The fitted coefficients go into an equivalent Keras model (standardise, Dense softmax),
    so a logreg run is saved, loaded and used like any other, with no pickle.
    """
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    z, z_val = (x - mean) / scale, (x_val - mean) / scale
    rows, best = [], None
    for c in (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0):
        fitted = LogisticRegression(C=c, max_iter=300).fit(z, y)
        probabilities = np.zeros((len(z_val), n_classes))
        probabilities[:, fitted.classes_] = fitted.predict_proba(z_val)
        loss = float(-np.mean(np.log(np.clip(probabilities[np.arange(len(y_val)), y_val], 1e-15, 1))))
        rows.append({"C": c, "val_loss": loss, "val_accuracy": float(np.mean(probabilities.argmax(1) == y_val))})
        if best is None or loss < best[0]:
            best = (loss, c, fitted)
    _, c, fitted = best
    log.info(f"logistic regression: C = {c:g} has the lowest validation log loss")
    coef = np.zeros((n_classes, x.shape[1]), np.float32)
    intercept = np.full(n_classes, -1e4, np.float32)  # classes absent from training get no probability
    if len(fitted.classes_) == 2 and fitted.coef_.shape[0] == 1:  # binary: sklearn keeps one row
        coef[fitted.classes_[1]], intercept[fitted.classes_[1]] = fitted.coef_[0], fitted.intercept_[0]
        coef[fitted.classes_[0]], intercept[fitted.classes_[0]] = 0.0, 0.0
    else:
        coef[fitted.classes_], intercept[fitted.classes_] = fitted.coef_, fitted.intercept_
    inputs = keras.Input((x.shape[1],), name="features")
    standardised = keras.layers.Normalization(mean=mean, variance=scale**2, name="standardise")(inputs)
    dense = keras.layers.Dense(n_classes, activation="softmax", dtype="float32", name="breed")
    model = keras.Model(inputs, dense(standardised), name="logreg_head")
    dense.set_weights([coef.T, intercept])
    return model, pd.DataFrame(rows)


HEADS = {"dense": train_dense_head, "logreg": train_logreg_head}


def save_head(run: Run, model: keras.Model) -> None:
    tmp = run.file(Run.model_file).with_name(f".head.{os.getpid()}.tmp.keras")
    model.save(tmp)
    tmp.replace(run.file(Run.model_file))


def predict_images(run: Run, config: TrainConfig, images: pd.DataFrame, *, tta: bool) -> np.ndarray:
    """A features run's probabilities for any images: cached vectors, then its head."""
    cache = FeatureCache(config.cache_dir, config.batch_size)
    vectors = ensemble_features(cache, config, images, evaluation_views(config, tta))
    return np.asarray(run.load_model().predict(vectors, batch_size=1024, verbose=0), dtype=np.float64)
