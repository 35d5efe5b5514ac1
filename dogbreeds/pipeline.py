"""Files to batches: decoding, resizing, augmentation, preprocessing.

Two loaders share one interface (`training`, `evaluation`, `prediction`):

* `TFDataLoader` (default): parallel reads and decodes in `tf.data`, one fused affine warp
  per batch for rotation, shift, zoom and flip, then the backbone's preprocessing; with a
  `BatchAugmentation`, Keras' RandAugment operations, RandomErasing, MixUp and CutMix on each
  training batch, in the same graph.
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
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from dogbreeds.images import inspect_images
from dogbreeds.places import image_cache
from dogbreeds.settings import Augmentation, BatchAugmentation

Preprocess = Callable[[tf.Tensor], tf.Tensor]
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


def affine_transforms(
    n: tf.Tensor,
    height: tf.Tensor,
    width: tf.Tensor,
    seed: tf.Tensor,
    augmentation: Augmentation,
):
    """Per image, the (n, 6) map from output pixel (x, y) to source (a0 x + a1 y + a2, b0 x + b1 y + b2).

    Flip, rotation, shift and zoom in ImageDataGenerator's units, composed into one matrix.
    """
    u = tf.random.stateless_uniform((n, 5), seed=seed, minval=-1.0, maxval=1.0)
    angle = u[:, 0] * augmentation.rotation * math.pi / 180.0
    # ImageDataGenerator's zoom z > 1 shows more of the image: output pixel p samples c + z(p - c).
    zoom = 1.0 + u[:, 1] * augmentation.zoom
    shift_x = u[:, 2] * augmentation.shift * width
    shift_y = u[:, 3] * augmentation.shift * height
    mirror = tf.where(u[:, 4] < 0.0, -1.0, 1.0) if augmentation.flip else tf.ones_like(angle)
    cos, sin = tf.cos(angle) * zoom, tf.sin(angle) * zoom
    a0, a1 = cos * mirror, -sin
    b0, b1 = sin * mirror, cos
    cx, cy = (width - 1.0) / 2.0, (height - 1.0) / 2.0
    a2 = cx - (a0 * cx + a1 * cy) + shift_x
    b2 = cy - (b0 * cx + b1 * cy) + shift_y
    return tf.stack([a0, a1, a2, b0, b1, b2], axis=1)


def _onto(transforms: tf.Tensor, sizes: tf.Tensor, size: int) -> tf.Tensor:
    """Maps on the (size, size) output composed with the resize from each source (half-pixel centres)."""
    sy = tf.cast(sizes[:, 0], tf.float32) / size
    sx = tf.cast(sizes[:, 1], tf.float32) / size
    a0, a1, a2, b0, b1, b2 = tf.unstack(transforms, axis=1)
    return tf.stack([a0 * sx, a1 * sx, (a2 + 0.5) * sx - 0.5, b0 * sy, b1 * sy, (b2 + 0.5) * sy - 0.5], axis=1)


# EXIF orientation 1-8 as a map from upright pixel (u, v) to stored pixel (x, y):
# x = m00 u + m01 v + ox (w - 1), y = m10 u + m11 v + oy (h - 1), for a stored (h, w) image.
# A numpy array: a tensor made at import would set up TensorFlow's devices before
# $DOGBREEDS_CPU_DEVICES can split the CPU.
EXIF_MAPS = np.array(
    [
        [1, 0, 0, 1, 0, 0],  # 1: upright
        [-1, 0, 0, 1, 1, 0],  # 2: mirrored
        [-1, 0, 0, -1, 1, 1],  # 3: upside down
        [1, 0, 0, -1, 0, 1],  # 4: mirrored vertically
        [0, 1, 1, 0, 0, 0],  # 5: transposed
        [0, 1, -1, 0, 0, 1],  # 6: stored rotated 90 degrees anticlockwise
        [0, -1, -1, 0, 1, 1],  # 7: transverse
        [0, -1, 1, 0, 1, 0],  # 8: stored rotated 90 degrees clockwise
    ],
    np.float32,
)


def _turned(transforms: tf.Tensor, orientations: tf.Tensor, stored: tf.Tensor) -> tf.Tensor:
    """Maps onto upright images composed with the EXIF turn to the stored pixels: no pixel moves twice."""
    m00, m01, m10, m11, ox, oy = tf.unstack(tf.gather(EXIF_MAPS, tf.clip_by_value(orientations - 1, 0, 7)), axis=1)
    a0, a1, a2, b0, b1, b2 = tf.unstack(transforms, axis=1)
    last_y, last_x = tf.unstack(tf.cast(stored - 1, tf.float32), axis=1)
    return tf.stack(
        [
            m00 * a0 + m01 * b0,
            m00 * a1 + m01 * b1,
            m00 * a2 + m01 * b2 + ox * last_x,
            m10 * a0 + m11 * b0,
            m10 * a1 + m11 * b1,
            m10 * a2 + m11 * b2 + oy * last_y,
        ],
        axis=1,
    )


@tf.function(jit_compile=True)
def warp(
    images: tf.Tensor,
    transforms: tf.Tensor,
    sizes: tf.Tensor | None = None,
    size: int | None = None,
    reflect: bool = False,
):
    """Bilinear resampling of each image by its affine map, to (size, size) float32.

    `sizes` are the images' true (height, width) inside their padding (default: all of it);
    coordinates outside are clamped, so outside pixels repeat the nearest edge, or with `reflect`
    mirror the pixels inside it (as a reflect-padded crop, up to one image size out). Written as four
    gathers and compiled with XLA: on a CPU several times faster than TensorFlow's
    ImageProjectiveTransform kernel (which resamples each channel apart), and it resizes too.
    """
    shape = tf.shape(images)
    n, height, width = shape[0], shape[1], shape[2]
    if sizes is None:
        sizes = tf.tile(shape[None, 1:3], [n, 1])
    out_height, out_width = (size, size) if size else (height, width)
    ys, xs = tf.meshgrid(tf.range(out_height, dtype=tf.float32), tf.range(out_width, dtype=tf.float32), indexing="ij")
    t = transforms[:, :, None, None]
    last_y, last_x = sizes[:, 0, None, None] - 1, sizes[:, 1, None, None] - 1
    edge_x, edge_y = tf.cast(last_x, tf.float32), tf.cast(last_y, tf.float32)
    sx, sy = t[:, 0] * xs + t[:, 1] * ys + t[:, 2], t[:, 3] * xs + t[:, 4] * ys + t[:, 5]
    if reflect:
        sx, sy = edge_x - tf.abs(edge_x - tf.abs(sx)), edge_y - tf.abs(edge_y - tf.abs(sy))
    sx, sy = tf.clip_by_value(sx, 0.0, edge_x), tf.clip_by_value(sy, 0.0, edge_y)
    x0, y0 = tf.floor(sx), tf.floor(sy)
    fx, fy = (sx - x0)[..., None], (sy - y0)[..., None]
    left, top = tf.cast(x0, tf.int32), tf.cast(y0, tf.int32)
    right, bottom = tf.minimum(left + 1, last_x), tf.minimum(top + 1, last_y)
    pixels = tf.reshape(images, (-1, shape[3]))
    first = (tf.range(n) * height * width)[:, None, None]

    def at(y, x):
        return tf.cast(tf.gather(pixels, first + y * width + x), tf.float32)

    upper = at(top, left) * (1.0 - fx) + at(top, right) * fx
    lower = at(bottom, left) * (1.0 - fx) + at(bottom, right) * fx
    return upper * (1.0 - fy) + lower * fy


def random_affine(batch: tf.Tensor, seed: tf.Tensor, augmentation: Augmentation) -> tf.Tensor:
    """Flip, rotation, shift and zoom as one warp per image (one resampling), float32 out."""
    shape = tf.shape(batch)
    height, width = tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
    return warp(batch, affine_transforms(shape[0], height, width, seed, augmentation))


def photometric_operations(magnitude: float, seed: int) -> list[keras.layers.Layer]:
    """The photometric operations of `keras.layers.RandAugment`, built as it builds them.

    Not the layer itself: it runs all eleven of its operations on every batch and keeps the
    drawn ones (51 images/s at 160 px on a 2-core CPU, docs/recipes.md); `batch_augmenter` runs
    only the drawn one through `tf.switch_case`. Its geometric operations (shear, translation,
    rotation) are left to the fused warp, which already turns, shifts and zooms each image.
    """
    factor, common = (0.0, magnitude), {"value_range": (0, 255), "dtype": "float32"}
    return [
        keras.layers.RandomBrightness(factor, seed=seed, **common),
        keras.layers.RandomColorDegeneration(factor, seed=seed + 1, **common),
        keras.layers.RandomContrast(factor, seed=seed + 2, **common),
        keras.layers.RandomSharpness(factor, seed=seed + 3, **common),
        keras.layers.RandomPosterization(max(1, int(8 * magnitude)), seed=seed + 4, **common),
        keras.layers.Solarization(factor, factor, seed=seed + 5, **common),
        keras.layers.AutoContrast(**common),
        keras.layers.Equalization(**common),
    ]


def batch_augmenter(augmentation: BatchAugmentation, classes: int, preprocess: Preprocess, seed: int):
    """(images in [0, 255], integer labels) -> (preprocessed images, target distributions).

    RandAugment and random erasing work on the pixels before the preprocessing (they expect
    [0, 255]); label smoothing, then MixUp or CutMix, make the targets. Label smoothing is done
    here rather than by the loss so that validation keeps scoring plain log loss. Keras' layers
    draw from seeded generators in call order, so the function is mapped one batch at a time.
    """
    a = augmentation
    operations = photometric_operations(a.randaugment_magnitude or 0.5, seed) if a.randaugment else []
    exact = {"dtype": "float32"}  # in the input pipeline even under a mixed precision policy
    erasing = a.random_erasing and keras.layers.RandomErasing(
        (a.random_erasing,) * 2, value_range=(0, 255), seed=seed + 10, **exact
    )
    mixup = a.mixup and keras.layers.MixUp(alpha=a.mixup, seed=seed + 11, **exact)
    cutmix = a.cutmix and keras.layers.CutMix(factor=a.cutmix, seed=seed + 12, **exact)
    draws = keras.random.SeedGenerator(seed + 13)
    smoothing = a.label_smoothing or 0.0

    def augment(images, labels):
        images = tf.cast(images, tf.float32)
        for _ in range(a.randaugment or 0):
            drawn = keras.random.randint((), 0, len(operations), seed=draws)
            images = tf.switch_case(drawn, [lambda op=op: op(images, training=True) for op in operations])
        if erasing:
            images = erasing(images, training=True)
        images = preprocess(images)
        if not a.soft_targets:
            return images, labels
        targets = tf.one_hot(labels, classes) * (1 - smoothing) + smoothing / classes
        batch = {"images": images, "labels": targets}
        if mixup and cutmix:
            use_mixup = keras.random.uniform((), seed=draws) < 0.5
            batch = tf.cond(use_mixup, lambda: mixup(batch, training=True), lambda: cutmix(batch, training=True))
        elif mixup or cutmix:
            batch = (mixup or cutmix)(batch, training=True)
        return batch["images"], batch["labels"]

    return augment


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
    replicas: int = 1  # under tf.distribute, batches are split among this many replicas
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
        """One file per set of images and size, so runs on the same split share it; a partial one is dropped."""
        key = hashlib.sha1(f"{DECODING_FORMAT} {self.image_size}\n".encode())
        for path, orientation in zip(frame["path"], frame.get("orientation", [1] * len(frame))):
            key.update(f"{os.path.abspath(path)}:{orientation}\n".encode())
        folder = image_cache()
        folder.mkdir(parents=True, exist_ok=True)
        prefix = folder / f"images-{self.image_size}px-{len(frame)}-{key.hexdigest()[:16]}"
        if not prefix.with_name(prefix.name + ".index").is_file():  # a pass that never finished
            for leftover in folder.glob(prefix.name + "*"):
                leftover.unlink()
        return prefix

    def _padded(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The frame with its last row repeated up to a multiple of the replicas, so that no
        replica gets an empty share of the last batch (a CPU convolution fails on one); the
        callers drop the extra predictions."""
        extra = -len(frame) % self.replicas
        return frame.iloc[list(range(len(frame))) + [len(frame) - 1] * extra] if extra else frame

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
        # A last batch too small to split among the replicas is left out (other images each epoch).
        drop = 0 < len(frame) % self.batch_size < self.replicas
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
            transforms = _turned(_onto(transforms, upright[None], size), orientation[None], stored[None])
            return preprocess(warp(source[None], transforms, stored[None], size)[0])

        return lambda image, seed: (warped(*decode_source(image[0], size), image[1], seed), image[2])

    def evaluation(self, frame: pd.DataFrame) -> tf.data.Dataset:
        return self._finish(self._decoded(self._padded(frame)).batch(self.batch_size))

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
