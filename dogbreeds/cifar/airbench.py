"""airbench94 (Keller Jordan, 2024) in Keras: `dogbreeds cifar --model airbench`.

What is airbench's own lives here, apart from the engine a dog run uses: the network with its
whitening first layer (set from the training images, then frozen), the optimizer (Nesterov SGD
with BatchNormalization shifts at 64 times the rate, on a triangular schedule), lookahead, the
training batches (each image mirrored on alternate epochs, moved by whole pixels) and the
six-view test-time average.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from keras import layers

from dogbreeds.pipeline import TFDataLoader, prefetched

# -- the network ------------------------------------------------------------------------


def whitening_kernel(patches: np.ndarray, epsilon: float = 5e-4) -> tuple[np.ndarray, np.ndarray]:
    """A convolution kernel and bias that whiten `patches` (n, k, k, channels), as airbench does:
    PCA whitening (each filter an eigenvector of the patches' covariance, scaled by
    1/sqrt(eigenvalue + epsilon)), each filter also negated so that a GELU after it loses nothing.
    The bias centres the patches. numpy: Keras has no whitening initializer.
    """
    n, k, _, channels = patches.shape
    flat = patches.reshape(n, -1).astype(np.float64)
    mean = flat.mean(axis=0)
    eigenvalues, eigenvectors = np.linalg.eigh(np.cov(flat, rowvar=False))
    filters = eigenvectors[:, ::-1] / np.sqrt(eigenvalues[::-1] + epsilon)  # largest first
    filters = np.concatenate([filters, -filters], axis=1)
    return filters.reshape(k, k, channels, -1).astype(np.float32), (-mean @ filters).astype(np.float32)


def image_patches(images: np.ndarray, size: int) -> np.ndarray:
    """Every size x size patch of images (n, height, width, channels), as (m, size, size, channels)."""
    windows = np.lib.stride_tricks.sliding_window_view(images, (size, size), axis=(1, 2))
    return windows.transpose(0, 1, 2, 4, 5, 3).reshape(-1, size, size, images.shape[-1])


def whiten(layer: layers.Conv2D, images: np.ndarray, epsilon: float = 5e-4) -> None:
    """Set a convolution to whiten the patches of `images` (preprocessed, NHWC) and freeze it."""
    kernel, bias = whitening_kernel(image_patches(images, layer.kernel_size[0]), epsilon)
    layer.set_weights([kernel, bias])
    layer.trainable = False


def _dirac(conv: layers.Conv2D) -> None:
    """The first filters pass their input channel through (PyTorch's dirac_): a group starts near
    the identity on what comes in, as in airbench."""
    kernel = keras.ops.convert_to_numpy(conv.kernel).copy()
    size, channels = kernel.shape[0], min(kernel.shape[2], kernel.shape[3])
    kernel[..., :channels] = 0.0
    kernel[size // 2, size // 2, np.arange(channels), np.arange(channels)] = 1.0
    conv.kernel.assign(kernel)


# PyTorch's default initialisation, uniform within 1/sqrt(fan-in), which airbench's rates are tuned for.
TORCH_INIT = keras.initializers.VarianceScaling(1 / 3, "fan_in", "uniform")


def network(input_shape, n_classes: int, widths=(64, 256, 256)) -> keras.Model:
    """airbench94's network (Keller Jordan, 2024): a 2x2 whitening convolution (set from the data by
    `whiten`, then frozen), three groups of conv-pool-norm-GELU-conv-norm-GELU, max pooling, and
    logits scaled by 1/9. BatchNormalization learns its shift only; its statistics move fast
    to keep up with a 10-epoch run (momentum 0.6: airbench's PyTorch momentum of 0.4)."""
    inputs = keras.Input(input_shape, name="image")
    whitening = layers.Conv2D(2 * input_shape[-1] * 2 * 2, 2, name="whiten")  # every 2x2 patch direction, +-
    x = layers.Activation("gelu")(whitening(inputs))
    convs = []
    for i, width in enumerate(widths, 1):
        for j, pool in ((1, True), (2, False)):
            conv = layers.Conv2D(width, 3, padding="same", use_bias=False, kernel_initializer=TORCH_INIT)
            convs.append(conv)
            x = conv(x)
            if pool:
                x = layers.MaxPooling2D()(x)
            x = layers.BatchNormalization(momentum=0.6, epsilon=1e-5, scale=False, name=f"norm{i}_{j}")(x)
            x = layers.Activation("gelu")(x)
    x = layers.GlobalMaxPooling2D()(x)
    x = layers.Dense(n_classes, use_bias=False, kernel_initializer=TORCH_INIT)(x)
    x = layers.Rescaling(1 / 9)(x)
    outputs = layers.Activation("softmax", dtype="float32", name="label")(x)
    model = keras.Model(inputs, outputs, name="airbench")
    for conv in convs:
        _dirac(conv)
    return model


# -- the optimizer, its schedule and lookahead --------------------------------------------


class Lookahead(keras.callbacks.Callback):
    """Lookahead (Zhang et al., 2019) as airbench uses it: every `every` steps the slow weights
    move toward the model's, slow += (1 - decay) (fast - slow), and the model continues from
    them, as it does after each epoch's last step (validation and checkpoints see them).
    `decay(fraction of training done)` lets the pull grow during training. Every float weight
    takes part, BatchNormalization's statistics too. A callback: Keras has no lookahead optimizer.
    """

    def __init__(self, every: int = 5, decay: Callable[[float], float] = lambda done: 0.95**5 * done**3):
        super().__init__()
        self.every, self.decay = every, decay

    def on_train_begin(self, logs=None):
        self.weights = [w for w in self.model.weights if "float" in str(w.dtype)]
        self.slow = [keras.ops.copy(w.value) for w in self.weights]
        self.total = self.params["epochs"] * self.params["steps"]

    def on_epoch_begin(self, epoch, logs=None):
        self.first_step = epoch * self.params["steps"]

    def on_train_batch_end(self, batch, logs=None):
        step = self.first_step + batch + 1
        if step % self.every and batch + 1 != self.params["steps"]:
            return
        # Under JAX the trainer holds the weights between epochs; Keras' `Callback.model` puts them
        # back into the variables, which are read and written below, and the trainer reads them back.
        self.model  # noqa: B018
        if step % self.every == 0:
            rate = 1.0 - self.decay(step / self.total)
            self.slow = [s + rate * (w.value - s) for s, w in zip(self.slow, self.weights)]
        for s, w in zip(self.slow, self.weights):  # every `every` steps, and an epoch's end: before validation
            w.assign(keras.ops.copy(s))  # a copy: JAX's train step takes over (donates) what the variable holds


@keras.saving.register_keras_serializable("dogbreeds")
class Triangular(keras.optimizers.schedules.LearningRateSchedule):
    """Linear from `start` x `rate` up to `rate` at `peak` of the steps, then linear down to
    `end` x `rate` (airbench's schedule; Keras' warm-ups end in a cosine, not a line)."""

    def __init__(self, rate: float, steps: int, start: float = 0.2, peak: float = 0.23, end: float = 0.07):
        self.rate, self.steps, self.start, self.peak, self.end = rate, steps, start, peak, end

    def __call__(self, step):
        done = keras.ops.cast(step, "float32") / max(1, self.steps)
        up = self.start + (1.0 - self.start) * done / self.peak
        down = 1.0 + (self.end - 1.0) * (done - self.peak) / (1.0 - self.peak)
        return self.rate * keras.ops.where(done < self.peak, up, keras.ops.maximum(down, self.end))

    def get_config(self):
        return {"rate": self.rate, "steps": self.steps, "start": self.start, "peak": self.peak, "end": self.end}


@keras.saving.register_keras_serializable("dogbreeds")
class ScaledSGD(keras.optimizers.SGD):
    """SGD in which variables of the given names learn at a multiple of the rate (airbench's
    BatchNormalization shifts: 64 times); Keras' optimizers take one rate for every variable."""

    def __init__(self, *args, rate_scales: dict[str, float] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.rate_scales = dict(rate_scales or {})

    def build(self, variables):
        if not self.built:
            self.scales = [self.rate_scales.get(v.name, 1.0) for v in variables]
        super().build(variables)

    def update_step(self, gradient, variable, learning_rate):
        scale = self.scales[self._get_variable_index(variable)]
        super().update_step(gradient, variable, learning_rate * scale if scale != 1.0 else learning_rate)

    def get_config(self):
        return super().get_config() | {"rate_scales": self.rate_scales}


def optimizer(rate: float, steps_per_epoch: int, epochs: int) -> keras.optimizers.Optimizer:
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


# -- training batches and the test-time average --------------------------------------------


def flip_and_translate(images: tf.Tensor, seed: tf.Tensor, mirrored: tf.Tensor, pixels: int) -> tf.Tensor:
    """Each image mirrored where `mirrored` says, and moved by whole pixels, up to `pixels` each
    way, uniformly: a crop of the reflect-padded image, so there is no resampling blur. Two
    gathers of the padded batch; the offsets are drawn as the engine's warp draws its shifts."""
    shape = tf.shape(images)
    height, width = shape[1], shape[2]
    u = tf.random.stateless_uniform((shape[0], 5), seed=seed, minval=-1.0, maxval=1.0)
    shift_x, shift_y = (
        tf.cast(tf.floor((u[:, i] + 1.0) / 2.0 * (2.0 * pixels + 1.0)), tf.int32) for i in (2, 3)
    )  # 0 .. 2 x pixels: the top-left corner of the crop in the padded image
    padded = tf.pad(images, [[0, 0], [pixels, pixels], [pixels, pixels], [0, 0]], mode="REFLECT")
    x, y = tf.range(width), tf.range(height)
    columns = tf.where(mirrored[:, None], width - 1 - x[None], x[None]) + shift_x[:, None]
    rows = y[None] + shift_y[:, None]
    return tf.gather(tf.gather(padded, rows, axis=1, batch_dims=1), columns, axis=2, batch_dims=1)


@dataclass
class AirbenchLoader(TFDataLoader):
    """airbench's training batches: decoded once and cached, each image mirrored on alternate
    epochs (from a random first side) rather than at random, which shows both sides more evenly,
    and moved by up to `pixels` whole pixels. Evaluation and prediction are the engine's."""

    pixels: int = 2

    def training(self, frame: pd.DataFrame) -> tf.data.Dataset:
        if self.cache == "none":
            raise ValueError("alternate flips need a cache (memory or disk)")
        first = np.random.default_rng(self.seed).random(len(frame)) < 0.5
        ds = tf.data.Dataset.zip(self._decoded(frame), tf.data.Dataset.from_tensor_slices(first))
        ds = ds.map(lambda pair, flip: (*pair, flip))
        ds = ds.shuffle(len(frame), seed=self.seed, reshuffle_each_iteration=True)
        ds = ds.batch(self.batch_size, drop_remainder=0 < len(frame) % self.batch_size < self.replicas)
        batches = ds.cardinality()  # which zipping with the endless epoch counter hides from Keras
        preprocess, pixels = self.preprocess, self.pixels

        @tf.function(jit_compile=True)
        def finish(images, seed, mirrored):
            return preprocess(flip_and_translate(tf.cast(images, tf.float32), seed, mirrored, pixels))

        def augment(batch, seed, epoch):
            images, labels, first_side = batch
            return finish(images, seed, tf.math.logical_xor(first_side, epoch % 2 == 1)), labels

        ds = tf.data.Dataset.zip(ds, self._seeds(), self._epochs()).map(augment, num_parallel_calls=tf.data.AUTOTUNE)
        return prefetched(ds.apply(tf.data.experimental.assert_cardinality(batches)))

    def _epochs(self) -> tf.data.Dataset:
        """How many times the dataset that zips this in was iterated before, endlessly repeated.

        Alternate flips need the epoch's parity, and tf.data knows no epochs (Keras iterates the
        dataset anew each epoch): a counter that each new iteration increments says it.
        """
        counter = tf.Variable(-1, dtype=tf.int64, trainable=False)
        self._counters = [*getattr(self, "_counters", []), counter]  # alive as long as the loader
        started = tf.data.Dataset.from_tensors(tf.constant(0, tf.int64)).map(lambda _: counter.assign_add(1))
        return started.flat_map(lambda epoch: tf.data.Dataset.from_tensors(epoch).repeat())


def with_flip_translate_tta(model: keras.Model, pixels: int = 1) -> keras.Model:
    """The model averaged over six views, in one compiled graph: each image and its mirror, as
    they are and moved `pixels` up-left and down-right (edges reflected), as airbench predicts.
    The unmoved pair weighs as much as the four moved views together. Like airbench it averages
    logits: the softmax of the views' mean log-probability is the softmax of their mean logits."""
    inputs = keras.Input(model.input_shape[1:])
    height, width = model.input_shape[1:3]
    padded = keras.ops.pad(inputs, [(0, 0), (pixels, pixels), (pixels, pixels), (0, 0)], mode="reflect")
    moved = [padded[:, :height, :width], padded[:, 2 * pixels :, 2 * pixels :]]

    def log_probabilities(x):
        return keras.ops.log(keras.ops.maximum(model(x), 1e-30))

    pairs = [(log_probabilities(x) + log_probabilities(keras.ops.flip(x, axis=2))) / 2.0 for x in [inputs, *moved]]
    outputs = keras.ops.softmax(pairs[0] / 2.0 + (pairs[1] + pairs[2]) / 4.0)
    return keras.Model(inputs, outputs)
