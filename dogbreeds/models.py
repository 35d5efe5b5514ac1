"""Backbones by name, the classification head, and weights from ImageNet, a file, or none."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import keras
import numpy as np
from keras import layers

from dogbreeds.errors import DogbreedsError

apps = keras.applications


@dataclass(frozen=True)
class Backbone:
    """A pretrained feature extractor and the preprocessing its weights expect."""

    name: str
    build: Callable[..., keras.Model]  # keras.applications-style: include_top, weights, input_shape
    preprocess: Callable  # float32 RGB in [0, 255] -> what the network was trained on
    native_size: int
    min_size: int = 32


BACKBONES: dict[str, Backbone] = {}


def register(backbone: Backbone) -> Backbone:
    BACKBONES[backbone.name] = backbone
    return backbone


for _name, _build, _module, _size, _min in [
    ("inception_resnet_v2", apps.InceptionResNetV2, apps.inception_resnet_v2, 299, 75),
    ("xception", apps.Xception, apps.xception, 299, 71),
    ("inception_v3", apps.InceptionV3, apps.inception_v3, 299, 75),
    ("resnet50", apps.ResNet50, apps.resnet50, 224, 32),
    ("mobilenet_v2", apps.MobileNetV2, apps.mobilenet_v2, 224, 32),
    ("efficientnet_b0", apps.EfficientNetB0, apps.efficientnet, 224, 32),
    ("efficientnet_b1", apps.EfficientNetB1, apps.efficientnet, 240, 32),
    ("efficientnet_b2", apps.EfficientNetB2, apps.efficientnet, 260, 32),
    ("efficientnet_b3", apps.EfficientNetB3, apps.efficientnet, 300, 32),
    ("efficientnet_v2_s", apps.EfficientNetV2S, apps.efficientnet_v2, 384, 32),
    ("convnext_tiny", apps.ConvNeXtTiny, apps.convnext, 224, 32),
]:
    register(Backbone(_name, _build, _module.preprocess_input, _size, _min))


def _tiny_cnn(include_top=False, weights=None, input_shape=None) -> keras.Model:
    """A four-layer network for tests and the offline demo: no pretrained weights exist."""
    if weights == "imagenet":
        raise DogbreedsError("tiny_cnn has no ImageNet weights; pass --weights none or a file")
    inputs = keras.Input(input_shape)
    x = inputs
    for filters in (16, 32, 64, 64):
        x = layers.Conv2D(filters, 3, strides=2, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization(momentum=0.9)(x)  # statistics settle within a short demo
        x = layers.ReLU()(x)
    model = keras.Model(inputs, x, name="tiny_cnn")
    if weights is not None:
        model.load_weights(weights)
    return model


register(Backbone("tiny_cnn", _tiny_cnn, apps.mobilenet_v2.preprocess_input, 64))


def get_backbone(name: str) -> Backbone:
    if name not in BACKBONES:
        raise DogbreedsError(f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}")
    return BACKBONES[name]


def _weights_argument(weights: str) -> str | None:
    if weights == "imagenet":
        return "imagenet"
    if weights.lower() == "none":
        return None
    path = Path(weights).expanduser()
    if not path.is_file():
        raise DogbreedsError(
            f"--weights {weights}: no such file; pass imagenet, none, or the path of a .h5 weights file"
        )
    with open(path, "rb") as f:
        if f.read(8) != b"\x89HDF\r\n\x1a\n":
            raise DogbreedsError(
                f"--weights {weights} is not an HDF5 file; pass a Keras .h5 or .weights.h5 weights file"
            )
    return str(path)


def build_backbone(name: str, weights: str, image_size: int) -> keras.Model:
    """The backbone without its top, its weights loaded; errors name the fix."""
    spec = get_backbone(name)
    if image_size < spec.min_size:
        raise DogbreedsError(f"{name} needs --image-size of at least {spec.min_size}, got {image_size}")
    source = _weights_argument(weights)
    try:
        with warnings.catch_warnings():  # a mismatched file makes Keras warn per layer; one line below says it
            warnings.simplefilter("ignore")
            return spec.build(include_top=False, weights=source, input_shape=(image_size, image_size, 3))
    except DogbreedsError:
        raise
    except Exception as error:  # Keras raises bare Exception/ValueError for both cases below
        if source == "imagenet":
            raise DogbreedsError(
                f"could not download the ImageNet weights of {name} ({type(error).__name__}: {error}); "
                "offline (a Kaggle kernel with internet off), attach a dataset holding the weights file "
                "and pass --weights /kaggle/input/<dataset>/<file>.h5"
            ) from None
        raise DogbreedsError(
            f"--weights {weights} does not fit {name}: its layers or shapes differ ({type(error).__name__}); "
            f"pass the weights file of {name} without its top (include_top=False)"
        ) from None


def build_classifier(
    backbone: keras.Model,
    n_classes: int,
    *,
    dropout: float = 0.5,
    hidden_units: int = 0,
    pretrained: bool = True,
) -> keras.Model:
    """Backbone, then GlobalAveragePooling2D, BatchNormalization, Dropout, [Dense], Dense softmax.

    A pretrained backbone is called with training=False so that its BatchNormalization layers
    stay in inference mode even while fine-tuning: their ImageNet statistics survive small
    batches. A backbone trained from scratch has no statistics to keep, so its layers learn them.
    The softmax is float32 so that mixed precision never rounds probabilities.
    """
    inputs = keras.Input(backbone.input_shape[1:], name="image")
    x = backbone(inputs, training=False if pretrained else None)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.BatchNormalization(name="head_norm")(x)
    x = layers.Dropout(dropout, name="head_dropout")(x)
    if hidden_units:
        x = layers.Dense(hidden_units, activation="relu", name="head_hidden")(x)
        x = layers.Dropout(dropout, name="hidden_dropout")(x)
    outputs = layers.Dense(n_classes, activation="softmax", dtype="float32", name="breed")(x)
    return keras.Model(inputs, outputs, name=f"{backbone.name}_classifier")


def set_trainable(backbone: keras.Model, top_layers: int | None, *, pretrained: bool = True) -> int:
    """Unfreeze the top `top_layers` layers (None: all); pretrained BatchNormalization stays frozen."""
    backbone.trainable = True
    cut = 0 if top_layers is None else max(0, len(backbone.layers) - top_layers)
    for i, layer in enumerate(backbone.layers):
        frozen_norm = pretrained and isinstance(layer, layers.BatchNormalization)
        layer.trainable = i >= cut and not frozen_norm
    return sum(layer.trainable for layer in backbone.layers)


# -- CIFAR: whole classifiers for 32x32 images, trained from scratch ----------------------


def _mlp(input_shape, n_classes: int) -> keras.Model:
    """The write-ups' perceptron, Flatten-Dense(512)-Dense(512), with dropout against its overfitting."""
    inputs = keras.Input(input_shape, name="image")
    x = layers.Flatten()(inputs)
    for units in (512, 512):
        x = layers.Dense(units, activation="relu")(x)
        x = layers.Dropout(0.2)(x)
    outputs = layers.Dense(n_classes, activation="softmax", dtype="float32", name="label")(x)
    return keras.Model(inputs, outputs, name="mlp")


def _seed_cnn(input_shape, n_classes: int) -> keras.Model:
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


def _resnet9(input_shape, n_classes: int, widths=(32, 64, 128, 256)) -> keras.Model:
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


def _airbench(input_shape, n_classes: int, widths=(64, 256, 256)) -> keras.Model:
    """airbench94's network (Keller Jordan, 2024): a 2x2 whitening convolution (set from the data by
    `whiten`, then frozen), three groups of conv-pool-norm-GELU-conv-norm-GELU, max pooling, and
    logits scaled by 1/9. BatchNormalization learns its shift only; its statistics move fast
    (momentum 0.6) to keep up with a 10-epoch run."""
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


CIFAR_ARCHITECTURES: dict[str, Callable[..., keras.Model]] = {
    "mlp": _mlp,
    "seed-cnn": _seed_cnn,
    "cnn": _airbench,
    "resnet9": _resnet9,
}
