"""Files to batches: decoding, resizing, augmentation, preprocessing.

Two loaders share one interface (`training`, `evaluation`, `prediction`):

* `TFDataLoader` (default): parallel reads and decodes in `tf.data`, one fused affine warp
  per batch for rotation, shift, zoom and flip, then the backbone's preprocessing; with a
  `BatchAugmentation`, Keras' RandAugment operations, RandomErasing, MixUp and CutMix on each
  training batch, in the same graph (both from `augmentation`).
* `LegacyLoader`: the classic `ImageDataGenerator.flow_from_dataframe`, with the same
  augmentation ranges, for users coming from it and for side-by-side measurement.

Both take frames with a `path` column (and `label`, and optionally the `orientation` found by
`inspect_images`) and yield float32 batches of shape (batch, size, size, 3), already
preprocessed, with integer labels (training batches: target distributions when the batch
augmentation mixes or smooths them); evaluation and prediction are deterministic and keep
the input order.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf

from dogbreeds.augmentation import (
    Preprocess,
    affine_transforms,
    batch_augmenter,
    onto_output,
    random_affine,
    turned,
    warp,
)
from dogbreeds.images import inspect_images
from dogbreeds.places import image_cache
from dogbreeds.settings import Augmentation, BatchAugmentation


def _apply_orientation(image: tf.Tensor, orientation: tf.Tensor) -> tf.Tensor:
    """Turn the stored pixels upright, as PIL's ImageOps.exif_transpose does."""
    branches = [
        lambda: image,  # 1: upright
        lambda: tf.image.flip_left_right(image),  # 2: mirrored
        lambda: tf.image.rot90(image, 2),  # 3: upside down
        lambda: tf.image.flip_up_down(image),  # 4: mirrored vertically
        lambda: tf.image.transpose(image),  # 5: transposed
        lambda: tf.image.rot90(image, 3),  # 6: stored rotated 90 degrees anticlockwise
        lambda: tf.image.rot90(tf.image.transpose(image), 2),  # 7: transverse
        lambda: tf.image.rot90(image, 1),  # 8: stored rotated 90 degrees clockwise
    ]
    return tf.switch_case(tf.clip_by_value(orientation - 1, 0, 7), branches)


JPEG_SCALES = (1, 2, 4, 8)  # the DCT scalings libjpeg decodes at almost no cost
SOURCE_STEP = 128  # warp sources are padded to multiples of this: few shapes for XLA to compile
SOURCE_LIMIT = 4  # a source longer than this many output sides is resized first (panoramas)


def _scaled_jpeg(data: tf.Tensor, size: int) -> tf.Tensor:
    """A JPEG decoded at the smallest scale (1, 1/2, 1/4, 1/8) that keeps its short side >= size.

    Scaling inside the decoder skips most of the work for large photos and low-pass filters
    as it goes, so what samples it afterwards never shrinks it by more than 2x.
    """
    short = tf.reduce_min(tf.io.extract_jpeg_shape(data)[:2])
    scale = tf.add_n([tf.cast(short >= size * r, tf.int32) for r in JPEG_SCALES[1:]])
    return tf.switch_case(scale, [lambda r=r: tf.io.decode_jpeg(data, channels=3, ratio=r) for r in JPEG_SCALES])


def _square(image: tf.Tensor, size: int, antialias: bool = False) -> tf.Tensor:
    # Bilinear and triangle filters stay within [0, 255]: rounding needs no clipping.
    return tf.cast(tf.image.resize(image, (size, size), antialias=antialias) + 0.5, tf.uint8)


def _decode_other(data: tf.Tensor, size: int) -> tf.Tensor:
    """PNG, GIF, BMP, WebP (rare here): full decode, antialiased resize."""
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    image.set_shape((None, None, 3))
    return _square(image, size, antialias=True)


def decode(path: tf.Tensor, orientation: tf.Tensor | None, size: int) -> tf.Tensor:
    """Any JPEG, PNG, GIF, BMP or WebP (whatever its name says) to a (size, size, 3) uint8 RGB square.

    `orientation` None: no photo needs an EXIF turn (the usual case; the turn costs a tenth of
    the decoding even when it does nothing).
    """
    data = tf.io.read_file(path)
    image = tf.cond(
        tf.io.is_jpeg(data), lambda: _square(_scaled_jpeg(data, size), size), lambda: _decode_other(data, size)
    )
    # Resizing to a square commutes with the EXIF turns, which are cheaper on the small image.
    return image if orientation is None else _apply_orientation(image, orientation)


def decode_source(path: tf.Tensor, size: int) -> tuple[tf.Tensor, tf.Tensor]:
    """For the training warp, which resizes and turns upright as it warps: the image as stored, at
    its JPEG scale, padded to multiples of SOURCE_STEP pixels, and its true (height, width)."""
    data = tf.io.read_file(path)

    def jpeg():
        image = _scaled_jpeg(data, size)
        fits = tf.reduce_max(tf.shape(image)[:2]) <= SOURCE_LIMIT * size
        return tf.cond(fits, lambda: image, lambda: _square(image, size))

    image = tf.cond(tf.io.is_jpeg(data), jpeg, lambda: _decode_other(data, size))
    shape = tf.shape(image)[:2]
    padding = -shape % SOURCE_STEP
    return tf.pad(image, [[0, padding[0]], [0, padding[1]], [0, 0]]), shape


DECODING_FORMAT = 1  # bump when decoding changes, so that no stale disk cache is read
DISK_SHUFFLE_BYTES = 1 << 30  # a disk cache is shuffled within this much of decoded images


def prefetched(ds: tf.data.Dataset) -> tf.data.Dataset:
    """The end of every pipeline: batches made ahead, every parallel step on all cores.

    tf.data's autotuner is off: on 2 cores it switched between using both and using one from
    one epoch to the next (about 1,050 or 815 images/s decoding alone, 690 or 385 with the
    augmentation); without it AUTOTUNE steps run on as many threads as there are cores.
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.prefetch(tf.data.AUTOTUNE).with_options(options)


@dataclass
class Loader:
    """What training and prediction need from a loader; subclasses say how."""

    image_size: int
    batch_size: int
    preprocess: Preprocess
    augmentation: Augmentation = field(default_factory=Augmentation.none)
    seed: int = 42
    cache: str = "none"  # decoded, resized images kept for later epochs: none, memory or disk
    replicas: int = 1  # data-parallel: batches are split among this many replicas
    whole_batches: bool = False  # every batch full: TPUs and several processes need static shapes
    shard: tuple[int, int] = (0, 1)  # (this process, processes): each reads its own rows, i::N, in batches of its share
    batch_augmentation: BatchAugmentation = field(default_factory=BatchAugmentation)  # training batches only
    classes: int = 0  # the number of classes, for target distributions

    def training(self, frame: pd.DataFrame):
        """Batches of (images, labels), shuffled and augmented afresh each epoch."""
        raise NotImplementedError

    def evaluation(self, frame: pd.DataFrame):
        """Batches of (images, labels) in the frame's order, not augmented."""
        raise NotImplementedError

    def prediction(self, frame: pd.DataFrame):
        """Batches of images in the frame's order, not augmented (labels not needed)."""
        raise NotImplementedError


class TFDataLoader(Loader):
    """The default loader: tf.data with parallel decoding and batched augmentation.

    Decoded images travel as uint8 (a quarter of the memory in shuffle and prefetch buffers,
    and in the cache); the warp and the preprocessing make them float32.
    """

    name = "tfdata"

    def _images(self, frame: pd.DataFrame, labelled: bool = True) -> tf.data.Dataset:
        if "orientation" not in frame:
            frame = frame.assign(orientation=inspect_images(frame["path"].tolist())["orientation"].to_numpy())
        columns = (frame["path"].to_numpy(dtype=str), frame["orientation"].to_numpy(dtype=np.int32))
        if labelled:
            columns += (frame["label"].to_numpy(dtype=np.int64),)
        return tf.data.Dataset.from_tensor_slices(columns)

    def _decoder(self, frame: pd.DataFrame):
        """decode() for the rows of `frame`, with the EXIF turn only if one of its photos needs it."""
        turns = "orientation" not in frame or bool((frame["orientation"] != 1).any())

        def decoded(path, orientation, *label):
            image = decode(path, orientation if turns else None, self.image_size)
            return (image, *label) if label else image

        return decoded

    def _decoded(self, frame: pd.DataFrame, labelled: bool = True, cache: bool = True) -> tf.data.Dataset:
        """Decoded images in the frame's order, from the cache after the first pass when there is one."""
        ds = self._images(frame, labelled).map(self._decoder(frame), num_parallel_calls=tf.data.AUTOTUNE)
        if cache and self.cache == "memory":
            return ds.cache()
        if cache and self.cache == "disk":
            return ds.cache(str(self._cache_file(frame)))
        return ds

    def _cache_file(self, frame: pd.DataFrame) -> Path:
        """One file per set of images and size, so runs on the same split share it; a partial one is
        dropped. Each image's size and modification time are in the key: a changed file is decoded anew."""
        key = hashlib.sha1(f"{DECODING_FORMAT} {self.image_size}\n".encode())
        for path, orientation in zip(frame["path"], frame.get("orientation", [1] * len(frame))):
            stat = os.stat(path)
            key.update(f"{os.path.abspath(path)}:{orientation}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
        folder = image_cache()
        folder.mkdir(parents=True, exist_ok=True)
        prefix = folder / f"images-{self.image_size}px-{len(frame)}-{key.hexdigest()[:16]}"
        if not prefix.with_name(prefix.name + ".index").is_file():  # a pass that never finished
            for leftover in folder.glob(prefix.name + "*"):
                leftover.unlink()
        return prefix

    def _padded(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The frame with its last row repeated up to a multiple of the replicas (of the batch, for
        `whole_batches`), so that every replica gets an equal share of the last batch (a CPU
        convolution fails on an empty one; JAX splits a batch evenly); the callers drop the extra
        predictions."""
        extra = -len(frame) % (self.batch_size * self.shard[1] if self.whole_batches else self.replicas)
        return frame.iloc[list(range(len(frame))) + [len(frame) - 1] * extra] if extra else frame

    def _share(self, frame: pd.DataFrame) -> pd.DataFrame:
        """This process's rows of a frame of a multiple of the processes (training: cut to one; the
        others are padded to whole batches first): every process takes the same number of steps."""
        index, processes = self.shard
        return frame.iloc[: len(frame) - len(frame) % processes].iloc[index::processes] if processes > 1 else frame

    def _seeds(self) -> tf.data.Dataset:
        """Seeds for the warps: the same sequence for the same seed, a new one each epoch."""
        return tf.data.Dataset.random(seed=self.seed, rerandomize_each_iteration=True).batch(2)

    def _mixed(self, ds: tf.data.Dataset) -> tf.data.Dataset:
        """Training batches through the batch augmentation, one at a time (see batch_augmenter)."""
        return ds.map(batch_augmenter(self.batch_augmentation, self.classes, self.preprocess, self.seed))

    def _finish(self, ds: tf.data.Dataset, augment: bool = False, mix: bool = False) -> tf.data.Dataset:
        """Batches of uint8 images to the backbone's input, warped first when augmenting.

        One XLA-compiled function per batch: casting, warping and preprocessing become a single
        pass over the pixels instead of one each. Batches to `mix` leave it unpreprocessed.
        """
        preprocess = (lambda images: images) if mix else self.preprocess
        augmentation = self.augmentation
        parallel = {"num_parallel_calls": tf.data.AUTOTUNE}

        @tf.function(jit_compile=True)
        def finish(images, seed=None):
            if augment:
                images = random_affine(images, seed, augmentation)
            return preprocess(tf.cast(images, tf.float32))

        if augment:
            ds = tf.data.Dataset.zip(ds, self._seeds()).map(
                lambda batch, seed: (finish(batch[0], seed), batch[1]), **parallel
            )
        elif isinstance(ds.element_spec, tuple):
            ds = ds.map(lambda x, *y: (finish(x), *y), **parallel)
        else:
            ds = ds.map(finish, **parallel)
        return prefetched(self._mixed(ds) if mix else ds)

    def training(self, frame: pd.DataFrame) -> tf.data.Dataset:
        # The same sequence of orders and warps for the same seed, different each epoch.
        # A last batch that does not split evenly among the replicas is left out (other images each epoch).
        frame = self._share(frame)
        drop = self.whole_batches or len(frame) % self.batch_size % self.replicas != 0
        mix = self.batch_augmentation.enabled
        if self.cache == "none":
            ds = self._images(frame).shuffle(len(frame), seed=self.seed, reshuffle_each_iteration=True)
            ds = tf.data.Dataset.zip(ds, self._seeds()).map(
                self._warped_from_file(preprocess=not mix), num_parallel_calls=tf.data.AUTOTUNE
            )
            ds = ds.batch(self.batch_size, drop_remainder=drop)
            return prefetched(self._mixed(ds) if mix else ds)
        # In memory the shuffle buffer shares the cached tensors; from disk it would load them
        # all, so the disk cache is shuffled within a window (of a seeded order).
        per_image = self.image_size**2 * 3
        window = len(frame) if self.cache == "memory" else max(self.batch_size, DISK_SHUFFLE_BYTES // per_image)
        order = frame.sample(frac=1.0, random_state=self.seed) if self.cache == "disk" else frame
        ds = self._decoded(order)
        ds = ds.shuffle(min(window, len(frame)), seed=self.seed, reshuffle_each_iteration=True)
        batches = ds.batch(self.batch_size, drop_remainder=drop)
        return self._finish(batches, augment=self.augmentation.enabled, mix=mix)

    def _warped_from_file(self, preprocess: bool = True):
        """Each image warped straight from its decoded source: one resampling turns it upright,
        resizes, flips, rotates, shifts and zooms it, and preprocesses on the way (XLA compiles it
        once per source shape)."""
        size, augmentation = self.image_size, self.augmentation
        preprocess = self.preprocess if preprocess else (lambda images: images)

        @tf.function(jit_compile=True)
        def warped(source, stored, orientation, seed):
            upright = tf.where(orientation > 4, stored[::-1], stored)
            transforms = affine_transforms(1, float(size), float(size), seed, augmentation)
            transforms = turned(onto_output(transforms, upright[None], size), orientation[None], stored[None])
            return preprocess(warp(source[None], transforms, stored[None], size)[0])

        return lambda image, seed: (warped(*decode_source(image[0], size), image[1], seed), image[2])

    def evaluation(self, frame: pd.DataFrame) -> tf.data.Dataset:
        return self._finish(self._decoded(self._share(self._padded(frame))).batch(self.batch_size))

    def prediction(self, frame: pd.DataFrame, view: int = 0, first_batch: int = 0) -> tf.data.Dataset:
        """View 0: the images as they are; 1: mirrored; k >= 2: the k-th augmented view.

        Augmented views draw from (seed, view, batch index), so a view is the same on every
        call, and one started at `first_batch` (a resumed extraction) matches the rest of it.
        """
        # Predicted once: nothing to cache.
        ds = self._decoded(self._padded(frame), labelled=False, cache=False).batch(self.batch_size)
        if view == 1:
            ds = ds.map(tf.image.flip_left_right, num_parallel_calls=tf.data.AUTOTUNE)
        if view < 2:
            return self._finish(ds)
        augmentation, preprocess, base = self.augmentation, self.preprocess, self.seed * 1000 + view
        seeds = tf.data.Dataset.range(first_batch, 2**62).map(lambda i: tf.stack([tf.constant(base, tf.int64), i]))
        ds = tf.data.Dataset.zip(ds, seeds).map(
            lambda batch, seed: preprocess(random_affine(batch, seed, augmentation)),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        return ds.prefetch(tf.data.AUTOTUNE)


class LegacyLoader(Loader):
    """The classic `ImageDataGenerator.flow_from_dataframe` pipeline, one image at a time.

    Our stratified split replaces ImageDataGenerator's `validation_split` (which takes the
    last rows, unstratified), so both loaders train and validate on the same images.
    """

    name = "legacy"

    def _preprocess(self, image: np.ndarray) -> np.ndarray:
        return np.asarray(self.preprocess(image.astype("float32")))

    def _flow(self, frame: pd.DataFrame, generator, *, labelled: bool, shuffle: bool):
        # Listing every label up to the largest makes flow_from_dataframe's index the label; the
        # largest is taken before the labels become strings, which it needs ("99" > "119").
        classes = [str(i) for i in range(int(frame["label"].max()) + 1)] if labelled else None
        frame = frame.assign(label=frame["label"].astype(str)) if labelled else frame
        return generator.flow_from_dataframe(
            frame,
            directory=None,
            x_col="path",
            y_col="label" if labelled else None,
            classes=classes,
            class_mode="sparse" if labelled else None,
            target_size=(self.image_size, self.image_size),
            interpolation="bilinear",
            batch_size=self.batch_size,
            shuffle=shuffle,
            seed=self.seed,
            validate_filenames=False,
        )

    def training(self, frame: pd.DataFrame):
        a = self.augmentation
        generator = tf.keras.preprocessing.image.ImageDataGenerator(
            rotation_range=a.rotation,
            width_shift_range=a.shift,
            height_shift_range=a.shift,
            zoom_range=a.zoom,
            horizontal_flip=a.flip,
            fill_mode="nearest",
            preprocessing_function=self._preprocess,
        )
        return self._flow(frame, generator, labelled=True, shuffle=True)

    def evaluation(self, frame: pd.DataFrame):
        generator = tf.keras.preprocessing.image.ImageDataGenerator(preprocessing_function=self._preprocess)
        return self._flow(frame, generator, labelled=True, shuffle=False)

    def prediction(self, frame: pd.DataFrame):
        generator = tf.keras.preprocessing.image.ImageDataGenerator(preprocessing_function=self._preprocess)
        return self._flow(frame[["path"]], generator, labelled=False, shuffle=False)


LOADERS: dict[str, type] = {loader.name: loader for loader in (TFDataLoader, LegacyLoader)}
