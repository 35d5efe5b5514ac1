"""KerasHub's foundation models as backbones: their presets, where a preset's files are, and how
their tokens become one vector.

A KerasHub preset is a folder (config.json, model.weights.h5, metadata.json, image_converter.json)
that `Backbone.from_preset(folder)` loads with no network. It is found, in this order: the folder
passed as --weights; KerasHub's own download cache (kagglehub's); on a Kaggle kernel, the Kaggle
Model attached under /kaggle/input (any version); online, KerasHub's download. keras_hub is
imported only when a model is built, so listing backbones and runs stays instant.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from dogbreeds.errors import DogbreedsError, log
from dogbreeds.places import kaggle_root

INSTALL = 'pip install "dogbreeds[hub]"'
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)  # SigLIP and Google's ViT: pixels to [-1, 1]


@dataclass(frozen=True)
class Family:
    """What the presets of one KerasHub model class share.

    `pooling` turns the encoder's tokens into one vector, as each model's own evaluation does:
    `cls+mean` (the class token beside the mean of the patch tokens: DINOv2's linear probe), `cls`
    (the token a ViT's or CLIP's head reads), `mean` (Swin's global average), `map` (SigLIP's own
    attention-pooling head, inside its encoder). `sizes`: `patch` takes any multiple of the patch
    size (DINOv2 interpolates its position embeddings, DINOv3 rotates them), `native` only the
    preset's size (learned position embeddings, or Swin's windows).
    """

    name: str
    loader: str  # the keras_hub.models class whose from_preset reads the folder
    encoder: str  # the class of the image encoder: built for --weights none
    mean: tuple[float, ...]
    std: tuple[float, ...]
    pooling: str
    sizes: str
    image_input: str = ""  # the encoder's input name where it takes a dict ("images", "pixel_values")
    part: str = ""  # the loader's attribute holding the image encoder (CLIP, SigLIP: "vision_encoder")

    @property
    def scale(self) -> np.ndarray:
        """Pixels in [0, 255] times scale plus offset is what the model saw: KerasHub's ImageConverter."""
        return (1 / (255 * np.asarray(self.std))).astype("float32")

    @property
    def offset(self) -> np.ndarray:
        return (-np.asarray(self.mean) / np.asarray(self.std)).astype("float32")


IN = (IMAGENET_MEAN, IMAGENET_STD)
FAMILIES = {
    family.name: family
    for family in [
        Family("dinov2", "DINOV2Backbone", "DINOV2Backbone", *IN, "cls+mean", "patch", "images"),
        Family("dinov3", "DINOV3Backbone", "DINOV3Backbone", *IN, "cls+mean", "patch", "pixel_values"),
        Family("siglip", "SigLIPBackbone", "SigLIPVisionEncoder", HALF, HALF, "map", "native", "images",
               "vision_encoder"),
        Family("clip", "CLIPBackbone", "CLIPVisionEncoder", CLIP_MEAN, CLIP_STD, "cls", "native", "images",
               "vision_encoder"),
        Family("vit", "ViTBackbone", "ViTBackbone", HALF, HALF, "cls", "native"),
        Family("swin", "SwinTransformerBackbone", "SwinTransformerBackbone", *IN, "mean", "native"),
    ]
}  # fmt: skip


@dataclass(frozen=True)
class Preset:
    """One KerasHub preset: its name is the backbone's name in the registry."""

    name: str
    family: Family
    handle: str  # Kaggle Models: owner/model/framework/variation (a version follows)
    version: int
    native_size: int
    patch: int
    pretraining: str
    architecture: dict = field(default_factory=dict)  # the image encoder's arguments, for --weights none
    prefix_tokens: int = 1  # the class token and registers before the patch tokens

    @property
    def variation(self) -> str:
        return self.handle.rsplit("/", 1)[1]

    def check_size(self, image_size: int, native: int | None = None) -> None:
        """Refuse a size the model cannot take, naming those it can (`native`: the size of the
        preset folder being loaded, where it says one)."""
        native = native or self.native_size
        if self.family.sizes == "native" and image_size != native:
            raise DogbreedsError(
                f"{self.name} takes {native} px only (its {self.family.name} position embeddings or "
                f"windows are learned for that size), got --image-size {image_size}; pass --image-size "
                f"{native}"
            )
        if self.family.sizes == "patch" and image_size % self.patch:
            sizes = ", ".join(str(self.patch * k) for k in (8, 16, 24, 32))
            raise DogbreedsError(
                f"{self.name} takes sizes that are multiples of its {self.patch} px patches ({sizes}...), got "
                f"--image-size {image_size}; pass one of those"
            )


def _vit(patch, layers, width, heads, mlp, **extra) -> dict:
    return dict(patch_size=patch, num_layers=layers, hidden_dim=width, num_heads=heads, intermediate_dim=mlp, **extra)


LVD = "LVD-142M (self-supervised)"
LVD16 = "LVD-1689M (self-supervised)"
DINO2 = dict(position_embedding_shape=(518, 518, 3))
DINO3 = dict(num_register_tokens=4, layer_scale_init_value=1e-5, use_query_bias=True, use_key_bias=False)
PRESETS: dict[str, Preset] = {}
for _name, _family, _model, _size, _patch, _pretraining, _architecture, _prefix in [
    ("dinov2_small", "dinov2", "dinov2", 224, 14, LVD, _vit(14, 12, 384, 6, 1536, **DINO2), 1),
    ("dinov2_base", "dinov2", "dinov2", 224, 14, LVD, _vit(14, 12, 768, 12, 3072, **DINO2), 1),
    ("dinov2_large", "dinov2", "dinov2", 224, 14, LVD, _vit(14, 24, 1024, 16, 4096, **DINO2), 1),
    ("dinov2_giant", "dinov2", "dinov2", 224, 14, LVD, _vit(14, 40, 1536, 24, 6144, use_swiglu_ffn=True, **DINO2), 1),
    ("dinov2_with_registers_small", "dinov2", "dinov2", 224, 14, LVD,
     _vit(14, 12, 384, 6, 1536, num_register_tokens=4, **DINO2), 5),
    ("dinov2_with_registers_base", "dinov2", "dinov2", 224, 14, LVD,
     _vit(14, 12, 768, 12, 3072, num_register_tokens=4, **DINO2), 5),
    ("dinov2_with_registers_large", "dinov2", "dinov2", 224, 14, LVD,
     _vit(14, 24, 1024, 16, 4096, num_register_tokens=4, **DINO2), 5),
    ("dinov2_with_registers_giant", "dinov2", "dinov2", 224, 14, LVD,
     _vit(14, 40, 1536, 24, 6144, use_swiglu_ffn=True, num_register_tokens=4, **DINO2), 5),
    ("dinov3_vit_small_lvd1689m", "dinov3", "dinov3", 224, 16, LVD16, _vit(16, 12, 384, 6, 1536, **DINO3), 5),
    ("dinov3_vit_base_lvd1689m", "dinov3", "dinov3", 224, 16, LVD16, _vit(16, 12, 768, 12, 3072, **DINO3), 5),
    ("dinov3_vit_large_lvd1689m", "dinov3", "dinov3", 224, 16, LVD16, _vit(16, 24, 1024, 16, 4096, **DINO3), 5),
    ("siglip_large_patch16_384", "siglip", "siglip", 384, 16, "WebLI image-text pairs",
     _vit(16, 24, 1024, 16, 4096), 0),
    ("siglip_so400m_patch14_384", "siglip", "siglip", 384, 14, "WebLI image-text pairs",
     _vit(14, 27, 1152, 16, 4304), 0),
    ("siglip2_large_patch16_384", "siglip", "siglip", 384, 16, "WebLI image-text pairs (SigLIP 2)",
     _vit(16, 24, 1024, 16, 4096), 0),
    ("siglip2_so400m_patch14_384", "siglip", "siglip", 384, 14, "WebLI image-text pairs (SigLIP 2)",
     _vit(14, 27, 1152, 16, 4304), 0),
    ("clip_vit_large_patch14_336", "clip", "clip", 336, 14, "OpenAI's 400M image-text pairs",
     _vit(14, 24, 1024, 16, 4096), 1),
    ("vit_large_patch16_384_imagenet", "vit", "vit", 384, 16, "ImageNet-21k, then 1k",
     dict(patch_size=16, num_layers=24, hidden_dim=1024, num_heads=16, mlp_dim=4096), 1),
    ("swin_large_patch4_window12_384", "swin", "swin-transformer", 384, 32, "ImageNet-22k, then 1k",
     dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48), window_size=12), 0),
]:  # fmt: skip
    PRESETS[_name] = Preset(
        _name,
        FAMILIES[_family],
        f"keras/{_model}/keras/{_name}",
        1,
        _size,
        _patch,
        _pretraining,
        _architecture,
        _prefix,
    )


def import_keras_hub():
    """keras_hub, or one line saying how to install it."""
    try:
        import keras_hub
    except ImportError:
        raise DogbreedsError(f"the KerasHub backbones need keras-hub, which is not installed; run: {INSTALL}") from None
    return keras_hub


# ----------------------------------------------------------------------------- where a preset is


def kagglehub_cache() -> Path:
    """Where kagglehub (KerasHub's downloader) keeps models: $KAGGLEHUB_CACHE, else ~/.cache/kagglehub."""
    return Path(os.environ.get("KAGGLEHUB_CACHE") or Path.home() / ".cache" / "kagglehub")


def _versions(folder: Path) -> list[Path]:
    """The version folders of one Kaggle Model variation holding a preset, newest first."""
    if not folder.is_dir():
        return []
    found = [v for v in folder.iterdir() if v.name.isdigit() and (v / "config.json").is_file()]
    return sorted(found, key=lambda v: int(v.name), reverse=True)


def _attached(preset: Preset, root: Path) -> list[Path]:
    """A Kaggle Model attached to a kernel: input/<model>/keras/<variation>/<version>/ (the
    model's folder is named as its owner chose), or any folder under input/ named as the
    variation, holding version folders."""
    return [version for folder in sorted(root.rglob(preset.variation)) for version in _versions(folder)]


def places(preset: Preset) -> list[Path]:
    """Where an already downloaded or attached preset may be, in the order looked."""
    cached = kagglehub_cache() / "models" / preset.handle
    root = kaggle_root()
    return _versions(cached) + (_attached(preset, root / "input") if root is not None else [])


def _reason(error: Exception) -> str:
    """Why a download failed, in a few words: "[Errno -2] Name or service not known"."""
    said = str(error).splitlines()[0] if str(error) else type(error).__name__
    errno = re.search(r"\[Errno [^\]]+\] [^'\")(]+", said)
    return errno.group(0).strip() if errno else said[:120]


def find_preset(preset: Preset) -> Path:
    """The preset's folder: downloaded before, attached, or downloaded now; else one line naming the handle."""
    for folder in places(preset):
        return folder
    try:
        import kagglehub

        path = Path(kagglehub.model_download(f"{preset.handle}/{preset.version}"))
        if (path / "config.json").is_file():
            return path
        reason = f"{path} holds no config.json"
    except Exception as error:  # kagglehub raises requests' and its own errors, all meaning "not here"
        reason = _reason(error)
    root = kaggle_root()
    where = f"{kagglehub_cache() / 'models'}" + (f" or under {root / 'input'}" if root is not None else "")
    raise DogbreedsError(
        f"no weights for {preset.name}: the download failed ({reason}) and no preset folder is in {where}; "
        f"attach the Kaggle Model {preset.handle} to the kernel (Add Input > Models), or run "
        f"`dogbreeds weights {preset.name} --download DIR` where there is internet and pass --weights DIR"
    )


def preset_folder(preset: Preset, weights: str) -> Path | None:
    """The folder `--weights` names (imagenet: the published weights, found; none: random weights)."""
    if weights.lower() == "none":
        return None
    if weights == "imagenet":
        return find_preset(preset)
    folder = Path(weights).expanduser()
    if not (folder / "config.json").is_file():
        raise DogbreedsError(
            f"--weights {weights}: not a KerasHub preset folder (no config.json in it); pass the folder of "
            f"{preset.handle} (config.json, model.weights.h5), imagenet, or none"
        )
    return folder


def check_preset(preset: Preset, folder: Path) -> int:
    """The folder holds this family's model, and its image converter (if it has one) does what
    the registry's preprocessing does: a preset of another model is named, not half-loaded.
    Returns the size its image encoder was saved for."""
    try:
        config = json.loads((folder / "config.json").read_text())
        loaded = config["class_name"]
        encoder = config["config"][preset.family.part]["config"] if preset.family.part else config["config"]
        size = int(encoder["image_shape"][0])
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        raise DogbreedsError(f"{folder / 'config.json'} is not a KerasHub preset's config; download it again") from None
    if loaded != preset.family.loader:
        raise DogbreedsError(
            f"--weights {folder} holds a {loaded}, not the {preset.family.loader} of {preset.name}; "
            f"pass the folder of {preset.handle}"
        )
    converter = folder / "image_converter.json"
    if converter.is_file():
        scale, offset = _converter_affine(converter)
        family = preset.family
        if not (np.allclose(scale, family.scale, rtol=1e-4) and np.allclose(offset, family.offset, atol=1e-4)):
            raise DogbreedsError(
                f"{converter} scales pixels by {np.round(scale, 5).tolist()} and shifts them by "
                f"{np.round(offset, 4).tolist()}, not as {preset.name} is registered; it is another model's preset"
            )
    return size


def _converter_affine(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The scale and offset an image_converter.json applies, as three channels each."""
    try:
        config = json.loads(path.read_text())["config"]
        scale = np.broadcast_to(np.asarray(config.get("scale") or 1.0, "float32"), (3,))
        offset = np.broadcast_to(np.asarray(config.get("offset") or 0.0, "float32"), (3,))
    except (OSError, ValueError, KeyError, TypeError):
        raise DogbreedsError(f"{path} is not a KerasHub image converter; download the preset again") from None
    return scale, offset


def digest_files(folder: Path) -> dict:
    """What a preset's vectors depend on: each file's name and size, and the text of its JSON files
    (hashing gigabytes of weights at every run would cost more than it protects)."""
    return {
        path.name: path.read_text() if path.suffix == ".json" else path.stat().st_size
        for path in sorted(folder.iterdir())
        if path.is_file()
    }


# ----------------------------------------------------------------------------- the model


@keras.saving.register_keras_serializable("dogbreeds")
class TokenPool(keras.layers.Layer):
    """A transformer's tokens as one vector: the class token, the mean of the patch tokens, or both."""

    def __init__(self, mode: str, prefix_tokens: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.mode, self.prefix_tokens = mode, prefix_tokens

    def call(self, tokens):
        cls = tokens[:, 0]
        mean = keras.ops.mean(tokens[:, self.prefix_tokens :], axis=1)
        return {"cls": cls, "mean": mean, "cls+mean": keras.ops.concatenate([cls, mean], axis=-1)}[self.mode]

    def get_config(self):
        return super().get_config() | {"mode": self.mode, "prefix_tokens": self.prefix_tokens}


def image_encoder(preset: Preset, weights: str, image_size: int):
    """The preset's image encoder: loaded from its folder, or built with random weights."""
    hub = import_keras_hub()
    family, shape = preset.family, (image_size, image_size, 3)
    folder = preset_folder(preset, weights)
    if folder is None:
        preset.check_size(image_size)
        return getattr(hub.models, family.encoder)(**preset.architecture, image_shape=shape)
    preset.check_size(image_size, check_preset(preset, folder))
    log.info(f"{preset.name} weights: {folder}")
    loader = getattr(hub.models, family.loader)
    resized = {"image_shape": shape} if family.sizes == "patch" else {}  # native-only families keep theirs
    precision = keras.mixed_precision.global_policy().name  # --precision, not the dtype the preset was saved in
    try:
        model = loader.from_preset(str(folder), dtype=precision, **resized)
    except (OSError, ValueError, KeyError, TypeError) as error:
        said = (str(error).splitlines() or [type(error).__name__])[0][:160]
        raise DogbreedsError(f"the preset in {folder} cannot be loaded ({said}); download it again") from None
    return getattr(model, family.part) if family.part else model


def hub_backbone(preset: Preset, weights: str, image_size: int) -> keras.Model:
    """Images (already preprocessed) in, one pooled vector per image out."""
    # Swin's window attention warns, at every call, that it drops a mask it is never given
    warnings.filterwarnings("ignore", "Layer 'attn' \\(of type WindowAttention\\)", UserWarning)
    encoder = image_encoder(preset, weights, image_size)
    images = keras.Input((image_size, image_size, 3), name="pixels")
    tokens = encoder({preset.family.image_input: images} if preset.family.image_input else images)
    if preset.family.pooling == "map":  # SigLIP's encoder ends in its own attention pool
        vector = tokens
    elif len(tokens.shape) == 3 and preset.family.pooling == "mean":  # Swin: a flat grid of patch tokens
        vector = keras.layers.GlobalAveragePooling1D(name="token_pool")(tokens)
    else:
        vector = TokenPool(preset.family.pooling, preset.prefix_tokens, name="token_pool")(tokens)
    return keras.Model(images, vector, name=preset.name)


BLOCK = re.compile(r"^(.*?(?:layers|transformer_block|encoder_block|blocks)_\d+)/")  # one transformer block


def layer_decay_factors(backbone: keras.Model, decay: float) -> dict[str, float]:
    """Each trainable variable's share of the fine-tuning rate under layer-wise decay: block k of
    L (in the order the model runs them) gets decay^(L+1-k), the embeddings before the first
    block decay^(L+1), what follows the last (final norm, SigLIP's pooling head) the full rate;
    a variable between blocks (Swin's patch merging) goes with the block before it."""
    paths = [variable.path for variable in backbone.trainable_variables]
    blocks = list(dict.fromkeys(match.group(1) for path in paths if (match := BLOCK.match(path))))
    depth, seen, factors = {block: k for k, block in enumerate(blocks, 1)}, 0, {}
    for path in paths:
        match = BLOCK.match(path)
        seen = depth[match.group(1)] if match else (len(blocks) + 1 if seen == len(blocks) else seen)
        factors[path] = decay ** (len(blocks) + 1 - seen)
    return factors


def download(preset: Preset, folder: Path) -> Path:
    """The preset's files in `folder`/<name>: a dataset to attach to an offline kernel."""
    try:
        import kagglehub

        target = folder / preset.name
        return Path(kagglehub.model_download(f"{preset.handle}/{preset.version}", output_dir=str(target)))
    except Exception as error:  # kagglehub raises requests' and its own errors
        raise DogbreedsError(
            f"could not download {preset.handle} ({_reason(error)}); run this where there is internet"
        ) from None


# ----------------------------------------------------------------------------- tiny presets

# A tiny random model of each family, saved as KerasHub saves a preset: what a Kaggle Model or
# `--weights DIR` holds, for the tests, benchmarks/hub_export.py and offline trials. Their sizes
# fit the families' rules (multiples of the patch; the fixed-size families take the size they
# were saved at). family: (a registry name of that family, image size, pooled width)
TINY = {
    "dinov2": ("dinov2_small", 56, 64),
    "dinov3": ("dinov3_vit_small_lvd1689m", 64, 64),
    "siglip": ("siglip_so400m_patch14_384", 56, 32),
    "clip": ("clip_vit_large_patch14_336", 56, 32),
    "vit": ("vit_large_patch16_384_imagenet", 64, 32),
    "swin": ("swin_large_patch4_window12_384", 64, 32),
}


def save_tiny_preset(family: str, folder: str | Path) -> str:
    """A random two-block model of `family` saved with `save_to_preset` into `folder`, with the
    image converter its published presets carry; returns the registry name it stands in for."""
    keras_hub = import_keras_hub()
    models, converters = keras_hub.models, keras_hub.layers
    name, size, _ = TINY[family]
    keras.utils.set_random_seed(0)
    shape, small = (size, size, 3), dict(num_layers=2, hidden_dim=32, num_heads=2, intermediate_dim=64)
    text = dict(vocabulary_size=50, embedding_dim=32, hidden_dim=32, num_layers=1, num_heads=2, intermediate_dim=64)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Layer 'attn'")
        if family == "dinov2":
            model = models.DINOV2Backbone(patch_size=14, image_shape=shape, position_embedding_shape=shape, **small)
        elif family == "dinov3":
            model = models.DINOV3Backbone(patch_size=16, image_shape=shape, **small)
        elif family == "siglip":
            vision = models.SigLIPVisionEncoder(patch_size=14, image_shape=shape, **small)
            model = models.SigLIPBackbone(vision, models.SigLIPTextEncoder(**text, max_sequence_length=8))
        elif family == "clip":
            vision = models.CLIPVisionEncoder(patch_size=14, image_shape=shape, **small)
            text_encoder = models.CLIPTextEncoder(**text, max_sequence_length=8)
            model = models.CLIPBackbone(vision, text_encoder, projection_dim=16)
        elif family == "vit":
            model = models.ViTBackbone(shape, 16, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64)
        else:
            model = models.SwinTransformerBackbone(shape, embed_dim=16, depths=(2, 2), num_heads=(2, 2), window_size=4)
    model.save_to_preset(str(folder))
    prefix = {"dinov2": "DINOV2", "dinov3": "DINOV3", "siglip": "SigLIP", "clip": "CLIP", "vit": "ViT"}
    converter = getattr(converters, prefix.get(family, "SwinTransformer") + "ImageConverter")
    scale, offset = FAMILIES[family].scale.tolist(), FAMILIES[family].offset.tolist()
    converter(image_size=(size, size), scale=scale, offset=offset).save_to_preset(str(folder))
    return name
