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
NORM_MOMENTUM, NORM_EPSILON = 0.99, 1e-3  # the dense head's BatchNormalization, Keras' defaults


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
    norm = keras.layers.BatchNormalization(
        momentum=NORM_MOMENTUM, epsilon=NORM_EPSILON, dtype="float32", name="head_norm"
    )
    x = norm(inputs)  # float32 whatever the precision: the numbers it was trained with
    x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", dtype="float32", name="breed")(x)
    return keras.Model(inputs, outputs, name="dense_head")


def _kept_bytes(rate: float) -> int:
    """Dropout keeps a unit where its random byte is below this: the rate is kept to 1/256."""
    return min(255, max(1, round((1 - rate) * 256)))


def _dropped_batch(x: np.ndarray, rows: np.ndarray, rate: float, rng: np.random.Generator):
    """The rows with dropout's zeros in them, the mask itself (float32, for a matrix product),
    and the rows' mean and variance before any unit was dropped.

    The masks come from raw generator words, one byte a unit: the cheapest random numbers
    numpy has (floats took 1.2 ms for a batch of 250 x 1280 here, as long as a whole step)."""
    batch = x[rows]
    mean = batch.sum(axis=0) / len(rows)
    # E[x^2] - mean^2 in one pass; pooled features' means are not large enough beside their
    # spread for float32 to lose the difference.
    variance = np.maximum(np.einsum("ij,ij->j", batch, batch) / len(rows) - mean * mean, 0)
    if not rate:
        return batch, np.ones_like(batch), mean, variance
    size = batch.size
    noise = rng.bit_generator.random_raw(-(-size // 8)).view(np.uint8)[:size].reshape(batch.shape)
    kept = noise < _kept_bytes(rate)
    batch *= kept
    return batch, kept.astype(np.float32), mean, variance


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


class _HeadWeights:
    """The dense head's trainable weights, as views into one vector: Adam updates it whole."""

    def __init__(self, width: int, n_classes: int, dtype=np.float32):
        self.vector = np.zeros(width * n_classes + n_classes + 2 * width, dtype)
        kernel, self.bias, self.gamma, self.beta = np.split(
            self.vector, np.cumsum([width * n_classes, n_classes, width])
        )
        self.kernel = kernel.reshape(width, n_classes)


def _head_step(w: _HeadWeights, dropped, mask, mean, variance, target, boost: float, grad: _HeadWeights):
    """The batch's log-probabilities; the gradient of their mean cross-entropy goes in `grad`.

    Normalised, scaled and shifted, the units are x a + b, with a = gamma / sigma and
    b = beta - mu a (the batch's own statistics); dropout and the Dense kernel W then give
    ((x a + b) * mask / keep) W = ((x * mask)(a W) + mask (b W)) / keep: products of the
    batch and of its mask with two small matrices, and no other array the size of a batch.
    """
    inverse_std = 1 / np.sqrt(variance + NORM_EPSILON)
    a = w.gamma * inverse_std
    b = w.beta - mean * a
    log_p = _log_softmax((dropped @ (a[:, None] * w.kernel) + mask @ (b[:, None] * w.kernel)) * boost + w.bias)
    error = (np.exp(log_p) - target) / len(target)  # d loss / d logits
    grad.bias[:] = error.sum(axis=0)
    error *= boost
    grad_a_kernel, grad_b_kernel = dropped.T @ error, mask.T @ error  # d loss / d(a W), d(b W)
    grad.kernel[:] = a[:, None] * grad_a_kernel + b[:, None] * grad_b_kernel
    along_a = np.einsum("ij,ij->i", grad_a_kernel, w.kernel)
    along_b = np.einsum("ij,ij->i", grad_b_kernel, w.kernel)
    grad.gamma[:] = (along_a - along_b * mean) * inverse_std
    grad.beta[:] = along_b
    return log_p


def train_dense_head(config: TrainConfig, x, y, x_val, y_val, n_classes: int) -> tuple[keras.Model, pd.DataFrame]:
    """BatchNormalization, Dropout, Dense softmax; Adam; early stopping on validation loss.

    Trained in numpy, step for step as Keras' `fit` trains these layers (each batch's own
    statistics, moving averages with the layer's momentum for inference, inverted dropout,
    glorot_uniform, Adam), and saved as that Keras model. A step is a few array operations
    on fixed vectors, so a compiled graph cost more to trace than it saved: this takes about
    half the time TensorFlow took, for as low a validation loss (README, "Cached features").
    """
    rng = np.random.default_rng(config.seed)
    n, width = x.shape
    w, grad = _HeadWeights(width, n_classes), _HeadWeights(width, n_classes)
    limit = math.sqrt(6 / (width + n_classes))  # Keras' glorot_uniform
    w.kernel[:] = rng.uniform(-limit, limit, w.kernel.shape)
    w.gamma[:] = 1
    moving_mean, moving_variance = np.zeros(width, np.float32), np.ones(width, np.float32)
    first_moment, second_moment = np.zeros_like(w.vector), np.zeros_like(w.vector)
    targets = np.eye(n_classes, dtype=np.float32)[y]
    boost = 256 / _kept_bytes(config.dropout) if config.dropout else 1.0  # 1 / keep
    # About 32 steps an epoch, of 32 to 256 vectors: measured on CIFAR features, larger batches
    # gave both a lower validation log loss and a faster head than the images' --batch-size.
    batch_size = int(np.clip(n // 32, 32, 256))

    rows, best, wait, step = [], (math.inf, None), 0, 0
    for epoch in range(config.head_epochs):
        total_loss, total_correct = 0.0, 0
        order = rng.permutation(n)
        for start in range(0, n, batch_size):
            batch = order[start : start + batch_size]
            dropped, mask, mean, variance = _dropped_batch(x, batch, config.dropout, rng)
            moving_mean += (1 - NORM_MOMENTUM) * (mean - moving_mean)
            moving_variance += (1 - NORM_MOMENTUM) * (variance - moving_variance)
            target = targets[batch]
            log_p = _head_step(w, dropped, mask, mean, variance, target, boost, grad)
            total_loss -= float((log_p * target).sum())
            total_correct += int((log_p.argmax(axis=1) == y[batch]).sum())
            step += 1  # Adam, as Keras has it
            first_moment += 0.1 * (grad.vector - first_moment)
            second_moment += 0.001 * (grad.vector * grad.vector - second_moment)
            step_size = config.learning_rate * math.sqrt(1 - 0.999**step) / (1 - 0.9**step)
            w.vector -= step_size * first_moment / (np.sqrt(second_moment) + 1e-7)
        scale = w.gamma / np.sqrt(moving_variance + NORM_EPSILON)  # the layer at inference
        log_p_val = _log_softmax(
            x_val @ (scale[:, None] * w.kernel) + (w.beta - moving_mean * scale) @ w.kernel + w.bias
        )
        val_loss = float(-log_p_val[np.arange(len(y_val)), y_val].mean())
        rows.append(
            {
                "epoch": epoch,
                "phase": "head",
                "loss": total_loss / n,
                "accuracy": total_correct / n,
                "val_loss": val_loss,
                "val_accuracy": float((log_p_val.argmax(axis=1) == y_val).mean()),
            }
        )
        if val_loss < best[0]:
            best, wait = (val_loss, (w.vector.copy(), moving_mean.copy(), moving_variance.copy())), 0
        else:
            wait += 1
            if wait >= max(5, config.patience):  # a head's validation loss wanders more than a phase's
                break
    w.vector[:], moving_mean[:], moving_variance[:] = best[1]
    model = _dense_head(width, n_classes, config.dropout)
    model.get_layer("head_norm").set_weights([w.gamma, w.beta, moving_mean, moving_variance])
    model.get_layer("breed").set_weights([w.kernel, w.bias])
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
