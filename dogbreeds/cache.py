"""The feature cache: run each image through a frozen backbone once, keep the vectors.

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
import os
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import keras
import numpy as np
import pandas as pd
from numpy.lib.format import open_memmap

from dogbreeds import hub
from dogbreeds.errors import DogbreedsError, log
from dogbreeds.files import sweep, temporary_sibling, write_atomic
from dogbreeds.models import build_backbone, get_backbone
from dogbreeds.pipeline import DECODING_FORMAT, TFDataLoader
from dogbreeds.places import feature_cache
from dogbreeds.progress import track
from dogbreeds.settings import Augmentation, Features

FEATURE_FORMAT = 2  # 2: images decoded by the pipeline's uint8, DCT-scaled JPEG path


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
        weights, preset = self.weights, get_backbone(self.backbone).preset
        if weights.lower() == "none":
            weights = f"none/seed-{self.seed}"  # random weights are only repeatable for one seed
        elif preset is not None:  # the preset's files, wherever they were found
            weights = hub.digest_files(hub.preset_folder(preset, weights))
        elif weights != "imagenet":
            weights = "sha256:" + _file_digest(weights)  # the content, wherever the file lies
        identity = {
            "format": FEATURE_FORMAT,
            "decoding": DECODING_FORMAT,  # a change in how images are decoded changes the vectors
            "keras": keras.__version__,
            "backbone": self.backbone,
            "weights": weights,
            "image_size": self.image_size,
            "preprocessing": get_backbone(self.backbone).preprocessing,
            "precision": keras.mixed_precision.global_policy().name,  # bfloat16 vectors differ from float32 ones
            "view": view_name(self.view),
        }
        if self.view >= 2:
            identity |= {"augmentation": asdict(self.augmentation), "seed": self.seed}
        return identity

    def key(self, paths: list[str]) -> str:
        text = json.dumps(self.identity() | {"files": _files_digest(paths), "count": len(paths)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:24]


def pooled_backbone(spec: FeatureSpec) -> keras.Model:
    """The backbone whose pooled vectors a cache entry holds: preprocessed images in, vectors out."""
    keras.utils.set_random_seed(spec.seed)  # `--weights none` draws the same network each time
    backbone = build_backbone(spec.backbone, spec.weights, spec.image_size)
    pooled = backbone.output
    if len(pooled.shape) == 4:  # a CNN's feature map; a KerasHub backbone pools its own tokens
        pooled = keras.layers.GlobalAveragePooling2D(dtype="float32")(pooled)
    pooled = keras.layers.Activation("linear", dtype="float32")(pooled)  # float32 vectors under mixed precision
    return keras.Model(backbone.input, pooled, name=f"{spec.backbone}_features")


def view_loader(spec: FeatureSpec, batch_size: int) -> TFDataLoader:
    """The loader that feeds an entry's backbone: its image size and preprocessing, and the
    augmentation and seed its augmented views draw from."""
    return TFDataLoader(
        image_size=spec.image_size,
        batch_size=batch_size,
        preprocess=get_backbone(spec.backbone).preprocess,
        augmentation=spec.augmentation,
        seed=spec.seed,
    )


class FeatureCache:
    """Pooled backbone features on disk, computed at most once for each key."""

    def __init__(self, root: str | Path, batch_size: int = 32, *, recorded: bool = False):
        """`recorded`: `root` comes from a run's config.json, perhaps made on another machine; where
        it cannot be made here, the default place serves (said), as a cache only saves time."""
        self.root = feature_cache(root)  # the default `cache` is /kaggle/working/cache on a kernel
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            fallback = feature_cache("cache").resolve()
            if not recorded or self.root.resolve() == fallback:
                raise DogbreedsError(
                    f"the feature cache {self.root} cannot be made ({error.strerror}); choose another --cache-dir"
                ) from None
            log.warning(f"the run's feature cache {self.root} cannot be made here ({error.strerror}): using {fallback}")
            self.root = fallback
            self.root.mkdir(parents=True, exist_ok=True)
        self.batch_size = batch_size
        self.extracted = 0  # images run through a backbone by this cache: what reuse saves
        self._extractors: dict[tuple, tuple[keras.Model, object]] = {}

    def features(self, spec: FeatureSpec, images: pd.DataFrame) -> np.ndarray:
        """(images, features) for a frame with a `path` column, read-only and memory-mapped."""
        paths = images["path"].tolist()
        entry = self.root / spec.key(paths)
        if (entry / "features.npy").is_file():
            problem = _problem(entry / "features.npy", len(paths))
            if problem is None:
                return np.load(entry / "features.npy", mmap_mode="r")
            log.warning(f"feature cache entry {entry} is damaged ({problem}): extracting it again")
            aside = temporary_sibling(entry, "old")
            os.replace(entry, aside)  # out of other readers' way first, then removed
            shutil.rmtree(aside, ignore_errors=True)
        self._extract(spec, images, entry)
        problem = _problem(entry / "features.npy", len(paths))
        if problem is not None:  # written just now: the disk or another writer is at fault
            raise DogbreedsError(
                f"feature cache entry {entry} is damaged right after extraction ({problem}); "
                f"check the disk, or choose another --cache-dir"
            )
        return np.load(entry / "features.npy", mmap_mode="r")

    def _extractor(self, spec: FeatureSpec) -> keras.Model:
        """The pooled backbone, built once per cache; Keras compiles its forward pass for the
        backend (predict_on_batch: a tf.function, or a jitted JAX function)."""
        key = (spec.backbone, spec.weights, spec.image_size)
        if key not in self._extractors:
            self._extractors[key] = pooled_backbone(spec)
        return self._extractors[key]

    def _extract(self, spec: FeatureSpec, images: pd.DataFrame, entry: Path) -> None:
        """Stream the vectors into a memory-mapped file; progress is saved after every batch."""
        model = self._extractor(spec)
        partial = entry.with_name(entry.name + ".partial")
        partial.mkdir(parents=True, exist_ok=True)
        sweep(partial)  # an extraction killed while saving its progress
        store, progress = partial / "features.npy", partial / "progress.json"
        shape = (len(images), model.output_shape[-1])
        done = _resumable(store, progress, shape)
        array = open_memmap(store, mode="r+" if done else "w+", dtype=np.float32, shape=shape)
        loader = view_loader(spec, self.batch_size)
        batches = loader.prediction(images.iloc[done:], view=spec.view, first_batch=done // self.batch_size)
        what = f"extracting {spec.backbone} {spec.image_size}px {view_name(spec.view)} features of {len(images)} images"
        with track(what, len(images), initial=done) as shown:
            for batch in batches:
                vectors = keras.ops.convert_to_numpy(model.predict_on_batch(np.asarray(batch)))
                array[done : done + len(vectors)] = vectors
                done += len(vectors)
                self.extracted += len(vectors)
                shown.update(len(vectors))
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


def _problem(store: Path, rows: int) -> str | None:
    """What is wrong with an entry's features.npy for `rows` images, or None: its header, its
    length, its type and shape, and every value finite (a read of the file, far cheaper than
    extracting it again)."""
    try:
        array = np.load(store, mmap_mode="r")
    except (ValueError, OSError, EOFError) as error:  # cut short, not .npy, or Python objects
        return str(error).splitlines()[0][:120] or type(error).__name__
    if array.dtype != np.float32 or array.ndim != 2 or array.shape[0] != rows or array.shape[1] == 0:
        return f"{array.dtype} {array.shape} where float32 ({rows}, features) belongs"
    if not np.isfinite(array).all():
        return "values that are not finite numbers"
    return None


def _resumable(store: Path, progress: Path, shape: tuple[int, int]) -> int:
    """How many images an interrupted extraction saved, if its files agree; else 0 (start over)."""
    if not (progress.is_file() and store.is_file()):
        return 0
    try:
        done = json.loads(progress.read_text())["done"]
        array = np.load(store, mmap_mode="r")
        whole = isinstance(done, int) and 0 < done <= shape[0] and array.shape == shape and array.dtype == np.float32
    except (ValueError, OSError, EOFError, KeyError, TypeError):
        whole = False
    if not whole:
        log.warning(f"the interrupted extraction in {store.parent} cannot be resumed: extracting from the start")
        return 0
    return done


def backbone_specs(features: Features) -> list[FeatureSpec]:
    """One spec per backbone of the ensemble, each at --image-size or its own size."""
    return [
        FeatureSpec(
            backbone=name,
            weights=weights,
            image_size=features.image_size or get_backbone(name).size,
            augmentation=features.augmentation,
            seed=features.seed,
        )
        for name, weights in zip(features.backbones, features.weights)
    ]


def ensemble_features(cache: FeatureCache, features: Features, images: pd.DataFrame, views: list[int]) -> np.ndarray:
    """Backbone vectors side by side, averaged over `views` (plain and mirror: flip TTA)."""
    parts = []
    for spec in backbone_specs(features):
        stack = [cache.features(replace(spec, view=v), images) for v in views]
        parts.append(np.mean(stack, axis=0, dtype=np.float32))
    return np.concatenate(parts, axis=1)


def training_features(cache: FeatureCache, features: Features, images: pd.DataFrame) -> np.ndarray:
    """Every view of every training image as its own row: (views x images, features)."""
    views = range(features.training_views)
    return np.concatenate([ensemble_features(cache, features, images, [v]) for v in views])


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
    cache: FeatureCache, features: Features, train: pd.DataFrame, val: pd.DataFrame, others=()
) -> HeadInputs:
    views = features.evaluation_views()
    return HeadInputs(
        x=training_features(cache, features, train),
        y=np.tile(train["label"].to_numpy(), features.training_views),
        x_val=ensemble_features(cache, features, val, views),
        others=[ensemble_features(cache, features, images, views) for images in others],
    )


@dataclass
class LabelledVectors:
    """Every labelled image's vectors once, for all folds of a k-fold run: each training view
    (plain, mirror, augmented...) and the evaluation views averaged, rows in the frame's order."""

    images: pd.DataFrame  # path, label, id: the rows below
    views: list[np.ndarray]
    evaluation: np.ndarray

    def head_inputs(self, train_ids, val_ids) -> HeadInputs:
        """One fold's rows, as `head_inputs` would extract them for its two frames."""
        row = pd.Series(np.arange(len(self.images)), index=self.images["id"])
        train_rows, val_rows = row[list(train_ids)].to_numpy(), row[list(val_ids)].to_numpy()
        labels = self.images["label"].to_numpy()
        return HeadInputs(
            x=np.concatenate([view[train_rows] for view in self.views]),
            y=np.tile(labels[train_rows], len(self.views)),
            x_val=self.evaluation[val_rows],
            others=[],
        )


def labelled_vectors(cache: FeatureCache, features: Features, images: pd.DataFrame, others=()) -> LabelledVectors:
    """One extraction of `images` (and of `others`, for later) that serves every fold."""
    views = [ensemble_features(cache, features, images, [v]) for v in range(features.training_views)]
    for frame in others:
        ensemble_features(cache, features, frame, features.evaluation_views())
    return LabelledVectors(images, views, ensemble_features(cache, features, images, features.evaluation_views()))
