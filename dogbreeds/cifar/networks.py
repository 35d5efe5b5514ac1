"""The classic networks of `dogbreeds cifar`, trained from scratch on 32x32 images: the write-ups'
perceptron and small CNN, and ResNet-9 (airbench's network is in `airbench`)."""

from __future__ import annotations

import keras
from keras import layers


def mlp(input_shape, n_classes: int) -> keras.Model:
    """The write-ups' perceptron, Flatten-Dense(512)-Dense(512), with dropout against its overfitting."""
    inputs = keras.Input(input_shape, name="image")
    x = layers.Flatten()(inputs)
    for units in (512, 512):
        x = layers.Dense(units, activation="relu")(x)
        x = layers.Dropout(0.2)(x)
    outputs = layers.Dense(n_classes, activation="softmax", dtype="float32", name="label")(x)
    return keras.Model(inputs, outputs, name="mlp")


def seed_cnn(input_shape, n_classes: int) -> keras.Model:
    """The write-ups' Conv(32)-Conv(32)-MaxPool-Dense(512), max-norm 3 and dropout, as published."""
    norm = keras.constraints.MaxNorm(3)
    inputs = keras.Input(input_shape, name="image")
    x = layers.Conv2D(32, 3, padding="same", activation="relu", kernel_constraint=norm)(inputs)
    x = layers.Dropout(0.2)(x)
    x = layers.Conv2D(32, 3, padding="same", activation="relu", kernel_constraint=norm)(x)
    x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    x = layers.Dense(512, activation="relu", kernel_constraint=norm)(x)
    x = layers.Dropout(0.5)(x)
    outputs = layers.Dense(n_classes, activation="softmax", dtype="float32", name="label")(x)
    return keras.Model(inputs, outputs, name="seed_cnn")


def _conv_block(x, filters: int, pool: bool = False):
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
    if pool:
        x = layers.MaxPooling2D()(x)
    x = layers.BatchNormalization(momentum=0.9)(x)  # statistics that keep up with a one-cycle schedule
    return layers.ReLU()(x)


def _residual(x, filters: int):
    return layers.Add()([x, _conv_block(_conv_block(x, filters), filters)])


def resnet9(input_shape, n_classes: int, widths=(32, 64, 128, 256)) -> keras.Model:
    """ResNet-9 (Page's DAWNBench network) at half its width: a quarter of the compute for a
    2-core CPU. Logits are scaled by 1/8 before the softmax, as in the original: with label
    smoothing it keeps early steps from saturating."""
    inputs = keras.Input(input_shape, name="image")
    x = _conv_block(inputs, widths[0])
    x = _residual(_conv_block(x, widths[1], pool=True), widths[1])
    x = _conv_block(x, widths[2], pool=True)
    x = _residual(_conv_block(x, widths[3], pool=True), widths[3])
    x = layers.GlobalMaxPooling2D()(x)
    x = layers.Dense(n_classes, use_bias=False)(x)
    x = layers.Rescaling(0.125)(x)
    outputs = layers.Activation("softmax", dtype="float32", name="label")(x)
    return keras.Model(inputs, outputs, name="resnet9")
