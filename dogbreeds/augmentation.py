"""Augmentation on the pixels of a batch: one fused affine warp per image, and the operations on
whole training batches (RandAugment's photometric operations, random erasing, MixUp, CutMix,
label smoothing).

The warp is written as four gathers and compiled with XLA (see `warp`); a loader composes it
with the resize from each decoded source and its EXIF turn, so a training image is resampled
once (`pipeline.TFDataLoader`).
"""

from __future__ import annotations

import math
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from dogbreeds.settings import Augmentation, BatchAugmentation

Preprocess = Callable[[tf.Tensor], tf.Tensor]


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


def onto_output(transforms: tf.Tensor, sizes: tf.Tensor, size: int) -> tf.Tensor:
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


def turned(transforms: tf.Tensor, orientations: tf.Tensor, stored: tf.Tensor) -> tf.Tensor:
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
):
    """Bilinear resampling of each image by its affine map, to (size, size) float32.

    `sizes` are the images' true (height, width) inside their padding (default: all of it);
    coordinates outside are clamped, so outside pixels repeat the nearest edge. Written as four
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
