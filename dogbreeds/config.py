"""The typed configuration of a training run, saved as JSON in the run folder."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from dogbreeds import __version__
from dogbreeds.errors import DogbreedsError

RUN_FORMAT = 1  # bump when a run folder written by this version cannot be read by an older one


def _require(checks: list[tuple[bool, str]]) -> None:
    """The first failed check, as the one-line error the user sees."""
    for ok, message in checks:
        if not ok:
            raise DogbreedsError(message)


@dataclass
class Augmentation:
    """Training-time augmentation; the ranges mean what ImageDataGenerator's do."""

    flip: bool = True  # random horizontal mirror
    rotation: float = 15.0  # degrees, uniform in [-rotation, rotation]
    shift: float = 0.1  # fraction of width/height, uniform in [-shift, shift]
    zoom: float = 0.15  # scale uniform in [1 - zoom, 1 + zoom]; > 1 crops in

    @classmethod
    def none(cls) -> "Augmentation":
        return cls(flip=False, rotation=0.0, shift=0.0, zoom=0.0)

    @property
    def enabled(self) -> bool:
        return self.flip or bool(self.rotation or self.shift or self.zoom)


@dataclass
class TrainConfig:
    """Everything needed to repeat a run; defaults are the competition settings."""

    data: str | None = None
    method: str = "finetune"  # or "features": a head on cached backbone features
    backbone: str = "inception_resnet_v2"  # features: a comma-separated ensemble is allowed
    weights: str = "imagenet"  # features: one per backbone, comma-separated, or one for all
    image_size: int | None = None  # None: 331 to fine-tune; each backbone's native size for features
    batch_size: int = 32
    epochs: int = 5
    fine_tune_epochs: int = 5
    fine_tune_layers: int | None = None  # None: the whole backbone
    learning_rate: float = 1e-3
    fine_tune_learning_rate: float | None = None  # None: learning_rate / 100 (measured: / 10 wrecks MobileNetV2)
    dropout: float = 0.5
    hidden_units: int = 0  # 0: no hidden Dense layer in the head
    val_split: float = 0.2
    seed: int = 42
    limit: int | None = None
    loader: str = "tfdata"
    precision: str = "auto"
    strategy: str = "auto"  # tf.distribute: auto, default, mirrored, tpu
    cache_images: str = "none"  # keep decoded images after the first epoch: none, memory, disk
    patience: int = 3
    max_unreadable: float = 0.01  # share of training images that may be skipped as unreadable
    head: str = "dense"  # features: "dense" (Keras) or "logreg" (scikit-learn)
    head_epochs: int = 60  # features, dense head: an upper bound; early stopping ends sooner
    feature_views: int = 2  # features: views per training image (plain, mirror, then augmented)
    tta: bool = True  # features: validation and test features average the plain and mirrored views
    cache_dir: str = "cache"
    augmentation: Augmentation = field(default_factory=Augmentation)
    version: str = __version__
    run_format: int = RUN_FORMAT

    def __post_init__(self) -> None:
        if isinstance(self.augmentation, dict):
            self.augmentation = Augmentation(**self.augmentation)
        if self.method == "finetune" and self.image_size is None:
            self.image_size = 331  # the competition setting
        self.validate()

    @property
    def backbones(self) -> list[str]:
        return [name.strip() for name in self.backbone.split(",")]

    def weights_for(self, index: int) -> str:
        given = [w.strip() for w in self.weights.split(",")]
        return given[index] if len(given) > 1 else given[0]

    def validate(self) -> None:
        n_weights = len(self.weights.split(","))
        checks = [
            (self.method in METHODS, f"--method must be one of {', '.join(METHODS)}, got {self.method!r}"),
            (self.head in HEADS, f"--head must be one of {', '.join(HEADS)}, got {self.head!r}"),
            (
                self.method == "features" or len(self.backbones) == 1,
                "several backbones (an ensemble) need --method features",
            ),
            (
                n_weights in (1, len(self.backbones)),
                f"--weights gives {n_weights} files for {len(self.backbones)} backbones",
            ),
            (
                self.image_size is None or self.image_size >= 32,
                f"--image-size must be at least 32, got {self.image_size}",
            ),
            (self.feature_views >= 1, f"--feature-views must be at least 1, got {self.feature_views}"),
            (self.head_epochs >= 1, f"--head-epochs must be at least 1, got {self.head_epochs}"),
            (self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}"),
            (self.epochs >= 0, f"--epochs must be 0 or more, got {self.epochs}"),
            (self.fine_tune_epochs >= 0, f"--fine-tune-epochs must be 0 or more, got {self.fine_tune_epochs}"),
            (
                self.method == "features" or self.epochs + self.fine_tune_epochs >= 1,
                "--epochs plus --fine-tune-epochs must be at least 1",
            ),
            (
                self.fine_tune_layers is None or self.fine_tune_layers >= 0,
                f"--fine-tune-layers must be 0 or more, got {self.fine_tune_layers}",
            ),
            (self.learning_rate > 0, f"--learning-rate must be positive, got {self.learning_rate}"),
            (0 <= self.dropout < 1, f"--dropout must be in [0, 1), got {self.dropout}"),
            (0 < self.val_split < 0.5, f"--val-split must be between 0 and 0.5, got {self.val_split}"),
            (self.limit is None or self.limit >= 2, f"--limit must be at least 2, got {self.limit}"),
            (
                self.precision in PRECISIONS,
                f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}",
            ),
            (self.strategy in STRATEGIES, f"--strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}"),
            (
                self.cache_images in CACHE_IMAGES,
                f"--cache-images must be one of {', '.join(CACHE_IMAGES)}, got {self.cache_images!r}",
            ),
            (
                self.cache_images == "none" or self.loader == "tfdata",
                "--cache-images works with --loader tfdata only; drop it or use the default loader",
            ),
            (0 <= self.max_unreadable < 1, f"--max-unreadable must be in [0, 1), got {self.max_unreadable}"),
            (
                0 <= self.augmentation.shift < 1 and 0 <= self.augmentation.zoom < 1,
                "--shift and --zoom must be in [0, 1)",
            ),
        ]
        _require(checks)

    @property
    def pretrained(self) -> bool:
        return self.weights.lower() != "none"

    @property
    def fine_tune_lr(self) -> float:
        return self.fine_tune_learning_rate or self.learning_rate / 100

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str, source: Path | str = "config.json") -> "TrainConfig":
        raw = json.loads(text)
        if raw.get("run_format") != RUN_FORMAT:
            raise DogbreedsError(
                f"{source} was written by dogbreeds {raw.get('version', 'before 0.1')} in another run format; "
                f"this is dogbreeds {__version__}: train a new run, or install that version to use this one"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise DogbreedsError(
                f"{source}: unknown settings {', '.join(unknown)} (made by a newer dogbreeds?); "
                "upgrade dogbreeds or train a new run"
            )
        return cls(**raw)


PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
METHODS = ("finetune", "features")
HEADS = ("dense", "logreg")
STRATEGIES = ("auto", "default", "mirrored", "tpu")
CACHE_IMAGES = ("none", "memory", "disk")


CIFAR_MODELS = ("mlp", "cnn", "seed-cnn", "transfer")
CIFAR_DATASETS = ("cifar10", "cifar100")


@dataclass
class CifarConfig:
    """`dogbreeds cifar`: one of the ten-class experiments; None means the model's own recipe."""

    model: str = "cnn"  # mlp, cnn, seed-cnn, transfer (or "all" on the command line)
    dataset: str = "cifar10"
    data: str | None = None  # python batches folder or train/<class>/, test/<class>/ images; None: keras.datasets
    epochs: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    limit: int | None = None  # training images, a stratified subset (the test set stays whole)
    val_split: float = 0.1
    seed: int = 42
    precision: str = "auto"
    backbone: str = "mobilenet_v2"  # transfer
    weights: str = "imagenet"  # transfer
    image_size: int = 96  # transfer: the 32x32 images are upscaled to this
    cache_dir: str = "cache"
    mode: str = "cifar"  # tells a CIFAR run folder from a competition run
    version: str = __version__
    run_format: int = RUN_FORMAT

    def __post_init__(self) -> None:
        checks = [
            (
                self.model in CIFAR_MODELS,
                f"--model must be one of {', '.join(CIFAR_MODELS)} or all, got {self.model!r}",
            ),
            (
                self.dataset in CIFAR_DATASETS,
                f"--dataset must be one of {', '.join(CIFAR_DATASETS)}, got {self.dataset!r}",
            ),
            (self.epochs is None or self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}"),
            (
                self.batch_size is None or self.batch_size >= 1,
                f"--batch-size must be at least 1, got {self.batch_size}",
            ),
            (
                self.learning_rate is None or self.learning_rate > 0,
                f"--learning-rate must be positive, got {self.learning_rate}",
            ),
            (self.limit is None or self.limit >= 20, f"--limit must be at least 20, got {self.limit}"),
            (0 < self.val_split < 0.5, f"--val-split must be between 0 and 0.5, got {self.val_split}"),
            (
                self.precision in PRECISIONS,
                f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}",
            ),
            (self.image_size >= 32, f"--image-size must be at least 32, got {self.image_size}"),
        ]
        _require(checks)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)
