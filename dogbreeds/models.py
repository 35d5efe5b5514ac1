"""Backbones by name, the classification head, and weights from ImageNet, a file, or none.

One registry holds keras.applications' CNNs and KerasHub's foundation models (`dogbreeds.hub`):
everything that takes a backbone takes either, by name."""

from __future__ import annotations

import dataclasses
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import keras
import numpy as np
from keras import layers

from dogbreeds import hub
from dogbreeds.errors import DogbreedsError, log
from dogbreeds.places import kaggle_root

apps = keras.applications
GOOGLE_STORAGE = "https://storage.googleapis.com/"


@dataclass(frozen=True)
class Backbone:
    """A pretrained feature extractor and the preprocessing its weights expect."""

    name: str
    build: Callable[..., keras.Model]  # keras.applications-style: include_top, weights, input_shape
    preprocess: Callable  # float32 RGB in [0, 255] -> what the network was trained on
    native_size: int
    min_size: int = 32
    parameters: int = 0  # without the top, as keras counts them
    pretraining: str = "ImageNet-1k"  # what its `imagenet` weights were trained on
    imagenet: str = ""  # keras.applications' ImageNet file without the top, under GOOGLE_STORAGE ("": none)
    imagenet_sizes: tuple[int, ...] = ()  # input sizes with a file each ({rows}); other sizes take the last
    default_size: int | None = None  # what --image-size defaults to, where not the native size
    preset: hub.Preset | None = None  # a KerasHub model: its preset, family, pooling and sizes

    @property
    def library(self) -> str:
        return "keras_hub" if self.preset else "keras.applications"

    @property
    def pooling(self) -> str:
        """How the network's output becomes one vector: GAP for a CNN's feature map."""
        return self.preset.family.pooling if self.preset else "avg"

    @property
    def preprocessing(self) -> str:
        """The preprocessing by name, part of a feature cache entry's identity."""
        if self.preset:
            family = self.preset.family
            return f"{family.name}: (pixels/255 - {list(family.mean)}) / {list(family.std)}"
        return f"{self.preprocess.__module__}.preprocess_input"

    @property
    def size(self) -> int:
        """--image-size's default: the native size, unless the competition's practice says otherwise."""
        return self.default_size or self.native_size

    def imagenet_urls(self, image_size: int) -> list[str]:
        """Where Keras downloads the ImageNet file without the top, then the one with it."""
        if not self.imagenet:
            return []
        rows = image_size if image_size in self.imagenet_sizes or not self.imagenet_sizes else self.imagenet_sizes[-1]
        no_top = GOOGLE_STORAGE + self.imagenet.format(rows=rows)
        return [no_top, re.sub(r"[_-]no_?-?top", "", no_top)]


BACKBONES: dict[str, Backbone] = {}


def register(backbone: Backbone) -> Backbone:
    BACKBONES[backbone.name] = backbone
    return backbone


IN1K, IN21K = "ImageNet-1k", "ImageNet-21k, then 1k"  # Keras' ConvNeXt base, large and xlarge saw 21k first

# keras.applications' own file names (its modules' WEIGHTS_PATH and get_file calls): with them,
# `--weights imagenet` finds a file attached to an offline Kaggle kernel (`imagenet_file`).
# NASNet and MobileNetV3 save their files under other names than their URLs': they have none here.
KA = "tensorflow/keras-applications/"
EN, EN2 = "keras-applications/efficientnet", KA + "efficientnet_v2/efficientnetv2-"
RESNET, DENSENET, CONVNEXT = KA + "resnet/", KA + "densenet/", KA + "convnext/convnext_"
TF_KERNELS = "_weights_tf_dim_ordering_tf_kernels_notop.h5"

# name, builder, module (its preprocess_input), native size, smallest size, parameters without
# the top, pretraining, ImageNet file without the top
for _name, _build, _module, _size, _min, _parameters, _pretraining, _file in [
    ("inception_resnet_v2", apps.InceptionResNetV2, apps.inception_resnet_v2, 299, 75, 54_336_736, IN1K,
     KA + "inception_resnet_v2/inception_resnet_v2" + TF_KERNELS),
    ("nasnet_large", apps.NASNetLarge, apps.nasnet, 331, 32, 84_916_818, IN1K, ""),
    ("nasnet_mobile", apps.NASNetMobile, apps.nasnet, 224, 32, 4_269_716, IN1K, ""),
    ("xception", apps.Xception, apps.xception, 299, 71, 20_861_480, IN1K, KA + "xception/xception" + TF_KERNELS),
    ("inception_v3", apps.InceptionV3, apps.inception_v3, 299, 75, 21_802_784, IN1K,
     KA + "inception_v3/inception_v3" + TF_KERNELS),
    ("resnet50", apps.ResNet50, apps.resnet50, 224, 32, 23_587_712, IN1K, RESNET + "resnet50" + TF_KERNELS),
    ("resnet50_v2", apps.ResNet50V2, apps.resnet_v2, 224, 32, 23_564_800, IN1K, RESNET + "resnet50v2" + TF_KERNELS),
    ("resnet101_v2", apps.ResNet101V2, apps.resnet_v2, 224, 32, 42_626_560, IN1K,
     RESNET + "resnet101v2" + TF_KERNELS),
    ("resnet152_v2", apps.ResNet152V2, apps.resnet_v2, 224, 32, 58_331_648, IN1K,
     RESNET + "resnet152v2" + TF_KERNELS),
    ("densenet121", apps.DenseNet121, apps.densenet, 224, 32, 7_037_504, IN1K, DENSENET + "densenet121" + TF_KERNELS),
    ("densenet169", apps.DenseNet169, apps.densenet, 224, 32, 12_642_880, IN1K, DENSENET + "densenet169" + TF_KERNELS),
    ("densenet201", apps.DenseNet201, apps.densenet, 224, 32, 18_321_984, IN1K, DENSENET + "densenet201" + TF_KERNELS),
    ("mobilenet_v2", apps.MobileNetV2, apps.mobilenet_v2, 224, 32, 2_257_984, IN1K,
     KA + "mobilenet_v2/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{rows}_no_top.h5"),
    ("mobilenet_v3_large", apps.MobileNetV3Large, apps.mobilenet_v3, 224, 32, 2_996_352, IN1K, ""),
    ("efficientnet_b0", apps.EfficientNetB0, apps.efficientnet, 224, 32, 4_049_571, IN1K, EN + "b0_notop.h5"),
    ("efficientnet_b1", apps.EfficientNetB1, apps.efficientnet, 240, 32, 6_575_239, IN1K, EN + "b1_notop.h5"),
    ("efficientnet_b2", apps.EfficientNetB2, apps.efficientnet, 260, 32, 7_768_569, IN1K, EN + "b2_notop.h5"),
    ("efficientnet_b3", apps.EfficientNetB3, apps.efficientnet, 300, 32, 10_783_535, IN1K, EN + "b3_notop.h5"),
    ("efficientnet_b4", apps.EfficientNetB4, apps.efficientnet, 380, 32, 17_673_823, IN1K, EN + "b4_notop.h5"),
    ("efficientnet_b5", apps.EfficientNetB5, apps.efficientnet, 456, 32, 28_513_527, IN1K, EN + "b5_notop.h5"),
    ("efficientnet_b6", apps.EfficientNetB6, apps.efficientnet, 528, 32, 40_960_143, IN1K, EN + "b6_notop.h5"),
    ("efficientnet_b7", apps.EfficientNetB7, apps.efficientnet, 600, 32, 64_097_687, IN1K, EN + "b7_notop.h5"),
    ("efficientnet_v2_b0", apps.EfficientNetV2B0, apps.efficientnet_v2, 224, 32, 5_919_312, IN1K, EN2 + "b0_notop.h5"),
    ("efficientnet_v2_b1", apps.EfficientNetV2B1, apps.efficientnet_v2, 240, 32, 6_931_124, IN1K, EN2 + "b1_notop.h5"),
    ("efficientnet_v2_b2", apps.EfficientNetV2B2, apps.efficientnet_v2, 260, 32, 8_769_374, IN1K, EN2 + "b2_notop.h5"),
    ("efficientnet_v2_b3", apps.EfficientNetV2B3, apps.efficientnet_v2, 300, 32, 12_930_622, IN1K, EN2 + "b3_notop.h5"),
    ("efficientnet_v2_s", apps.EfficientNetV2S, apps.efficientnet_v2, 384, 32, 20_331_360, IN1K, EN2 + "s_notop.h5"),
    ("efficientnet_v2_m", apps.EfficientNetV2M, apps.efficientnet_v2, 480, 32, 53_150_388, IN1K, EN2 + "m_notop.h5"),
    ("efficientnet_v2_l", apps.EfficientNetV2L, apps.efficientnet_v2, 480, 32, 117_746_848, IN1K, EN2 + "l_notop.h5"),
    ("convnext_tiny", apps.ConvNeXtTiny, apps.convnext, 224, 32, 27_820_128, IN1K, CONVNEXT + "tiny_notop.h5"),
    ("convnext_small", apps.ConvNeXtSmall, apps.convnext, 224, 32, 49_454_688, IN1K, CONVNEXT + "small_notop.h5"),
    ("convnext_base", apps.ConvNeXtBase, apps.convnext, 224, 32, 87_566_464, IN21K, CONVNEXT + "base_notop.h5"),
    ("convnext_large", apps.ConvNeXtLarge, apps.convnext, 224, 32, 196_230_336, IN21K, CONVNEXT + "large_notop.h5"),
    ("convnext_xlarge", apps.ConvNeXtXLarge, apps.convnext, 224, 32, 348_147_968, IN21K, CONVNEXT + "xlarge_notop.h5"),
]:  # fmt: skip
    register(Backbone(_name, _build, _module.preprocess_input, _size, _min, _parameters, _pretraining, _file))
# MobileNetV2 has a file per input size; Keras loads the 224 px one at other sizes.
register(dataclasses.replace(BACKBONES["mobilenet_v2"], imagenet_sizes=(96, 128, 160, 192, 224)))
# The competition's fine-tuned InceptionResNetV2 (leaderboard 0.300) took 331 px photos: its default.
register(dataclasses.replace(BACKBONES["inception_resnet_v2"], default_size=331))


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


register(Backbone("tiny_cnn", _tiny_cnn, apps.mobilenet_v2.preprocess_input, 64, parameters=61_040, pretraining="none"))


@dataclass(frozen=True)
class Affine:
    """KerasHub's ImageConverter without its resizing: pixels in [0, 255] times scale plus offset."""

    scale: tuple[float, ...]
    offset: tuple[float, ...]

    def __call__(self, pixels):
        return pixels * np.asarray(self.scale, "float32") + np.asarray(self.offset, "float32")


def _not_applications(**_):
    raise AssertionError("a KerasHub backbone is built by dogbreeds.hub")  # build_backbone dispatches first


# Parameters of the image encoder alone (a CLIP or SigLIP preset also holds its text encoder),
# counted on the architecture built with random weights (benchmarks/hub_backbones.py).
HUB_PARAMETERS: dict[str, int] = {
    "dinov2_small": 22_155_264,
    "dinov2_base": 86_777_856,
    "dinov2_large": 304_631_808,
    "dinov2_giant": 1_136_875_520,
    "dinov2_with_registers_small": 22_156_800,
    "dinov2_with_registers_base": 86_780_928,
    "dinov2_with_registers_large": 304_635_904,
    "dinov2_with_registers_giant": 1_136_881_664,
    "dinov3_vit_small_lvd1689m": 21_596_544,
    "dinov3_vit_base_lvd1689m": 85_660_416,
    "dinov3_vit_large_lvd1689m": 303_129_600,
    "siglip_large_patch16_384": 316_284_480,
    "siglip_so400m_patch14_384": 428_226_329,
    "siglip2_large_patch16_384": 316_284_480,
    "siglip2_so400m_patch14_384": 428_226_329,
    "clip_vit_large_patch14_336": 303_508_033,
    "vit_large_patch16_384_imagenet": 303_690_752,
    "swin_large_patch4_window12_384": 195_198_516,
}
for _preset in hub.PRESETS.values():
    register(
        Backbone(
            _preset.name,
            _not_applications,
            Affine(tuple(_preset.family.scale.tolist()), tuple(_preset.family.offset.tolist())),
            _preset.native_size,
            _preset.patch,
            HUB_PARAMETERS.get(_preset.name, 0),
            _preset.pretraining,
            preset=_preset,
        )
    )


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


def _reason(error: Exception) -> str:
    """Why a Keras download failed, without the URL it repeats: "[Errno -2] Name or service not known"."""
    return str(error).splitlines()[0].split(" -- ")[-1][:100]


def keras_cache() -> Path:
    """Where Keras keeps what it downloads: $KERAS_HOME/models, else ~/.keras/models (read now, not at import)."""
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras") / "models"


def imagenet_file(spec: Backbone, image_size: int) -> Path:
    """The backbone's ImageNet weights file under its Keras name, without or with the top: in the
    Keras cache, then (on a Kaggle kernel) anywhere under input/, else downloaded into the cache.

    Looking before downloading is what Keras does too; here it also finds a file attached to a
    kernel whose internet is off, where the download fails at once (no name resolves).
    """
    urls = spec.imagenet_urls(image_size)
    names = [url.rsplit("/", 1)[1] for url in urls]
    root = kaggle_root()
    places = [keras_cache() / name for name in names]
    if root is not None:
        places += [found for name in names for found in sorted((root / "input").rglob(name))]
    for place in places:
        if place.is_file():
            return place
    try:
        return Path(keras.utils.get_file(names[0], urls[0], cache_subdir="models", cache_dir=keras_cache().parent))
    except Exception as error:  # Keras raises bare Exception for a failed download
        where = f"{keras_cache()}" + (f" or under {root / 'input'}" if root is not None else "")
        raise DogbreedsError(
            f"no ImageNet weights for {spec.name} at {image_size} px: the download failed "
            f"({_reason(error)}) and neither {names[0]} nor {names[1]} is in {where}; "
            f"attach a dataset holding {names[0]} (`dogbreeds weights {spec.name} --image-size {image_size} "
            "--download DIR` fetches it where there is internet), or pass --weights FILE"
        ) from None


def download_imagenet(name: str, image_size: int, folder: Path) -> Path:
    """The backbone's ImageNet file without the top, downloaded into `folder`: a Kaggle dataset to attach."""
    spec = get_backbone(name)
    if not spec.imagenet:
        raise DogbreedsError(f"{name} has no ImageNet weights to download")
    url = spec.imagenet_urls(image_size)[0]
    folder.mkdir(parents=True, exist_ok=True)  # Keras falls back to /tmp for a folder it cannot write
    try:
        return Path(keras.utils.get_file(url.rsplit("/", 1)[1], url, cache_subdir="", cache_dir=folder))
    except Exception as error:  # Keras raises bare Exception for a failed download
        raise DogbreedsError(f"could not download {url} ({_reason(error)}); run this where there is internet") from None


def _imagenet_backbone(spec: Backbone, path: Path, input_shape: tuple) -> keras.Model:
    """The backbone without its top from either ImageNet file: a file with the top loads into the
    whole network, whose weights up to the top are the backbone's (same code, same layer order)."""
    if path.name == spec.imagenet_urls(input_shape[0])[0].rsplit("/", 1)[1]:
        return spec.build(include_top=False, weights=str(path), input_shape=input_shape)
    whole = spec.build(include_top=True, weights=str(path), input_shape=input_shape)
    backbone = spec.build(include_top=False, weights=None, input_shape=input_shape)
    backbone.set_weights(whole.get_weights()[: len(backbone.weights)])  # checks every shape
    return backbone


def build_backbone(name: str, weights: str, image_size: int) -> keras.Model:
    """The backbone without its top, its weights loaded; errors name the fix."""
    spec = get_backbone(name)
    if image_size < spec.min_size:
        raise DogbreedsError(f"{name} needs --image-size of at least {spec.min_size}, got {image_size}")
    if spec.preset:
        return hub.hub_backbone(spec.preset, weights, image_size)
    source = _weights_argument(weights)
    shape = (image_size, image_size, 3)
    try:
        with warnings.catch_warnings():  # a mismatched file makes Keras warn per layer; one line below says it
            warnings.simplefilter("ignore")
            if source == "imagenet" and spec.imagenet:
                path = imagenet_file(spec, image_size)
                log.info(f"ImageNet weights of {name}: {path}")
                source = str(path)
                return _imagenet_backbone(spec, path, shape)
            return spec.build(include_top=False, weights=source, input_shape=shape)
    except DogbreedsError:
        raise
    except Exception as error:  # Keras raises bare Exception/ValueError for both cases below
        if source is None:  # no weights to blame
            raise
        if source == "imagenet":
            raise DogbreedsError(
                f"could not download the ImageNet weights of {name} ({type(error).__name__}: {error}); "
                "offline (a Kaggle kernel with internet off), attach a dataset holding the weights file "
                "and pass --weights /kaggle/input/<dataset>/<file>.h5"
            ) from None
        raise DogbreedsError(
            f"--weights {source} does not fit {name}: its layers or shapes differ ({type(error).__name__}); "
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
    """Backbone, then GlobalAveragePooling2D (a CNN's map; a KerasHub backbone pools its own
    tokens), BatchNormalization, Dropout, [Dense], Dense softmax.

    A pretrained backbone is called with training=False so that its BatchNormalization layers
    stay in inference mode even while fine-tuning: their ImageNet statistics survive small
    batches. A backbone trained from scratch has no statistics to keep, so its layers learn them.
    The softmax is float32 so that mixed precision never rounds probabilities.
    """
    inputs = keras.Input(backbone.input_shape[1:], name="image")
    x = backbone(inputs, training=False if pretrained else None)
    if len(x.shape) == 4:
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
