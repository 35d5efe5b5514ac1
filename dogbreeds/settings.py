"""The small settings each stage below the jobs needs, cut from a run's configuration.

A run's whole configuration (`config.TrainConfig`) is what the jobs and commands see; each stage
under them takes only its part, frozen: the competition a `Split`, the loaders a `Loading`, the
feature cache a `Features`, the heads a `HeadSettings`, a trained run's `Predictor` a
`PredictSettings`, and the processes that train together a `Cluster`. `TrainConfig` makes each
of them (`config.split`, `config.loading`, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dogbreeds.options import option

PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
STRATEGIES = ("auto", "default", "mirrored", "tpu")


@dataclass
class Augmentation:
    """Training-time augmentation; the ranges mean what ImageDataGenerator's do."""

    flip: bool = option(True, "Random horizontal mirror.")
    rotation: float = option(15.0, "Random rotation range, degrees: uniform in [-rotation, rotation].")
    shift: float = option(0.1, "Random shift range, a fraction of the size.", within=(0, 1, "[)"))
    zoom: float = option(
        0.15, "Random zoom range: scale in [1-zoom, 1+zoom]; above 1 shows more of the image.", within=(0, 1, "[)")
    )

    @classmethod
    def none(cls) -> "Augmentation":
        return cls(flip=False, rotation=0.0, shift=0.0, zoom=0.0)

    @property
    def enabled(self) -> bool:
        return self.flip or bool(self.rotation or self.shift or self.zoom)


@dataclass
class BatchAugmentation:
    """What a whole training batch goes through after the warp: RandAugment's photometric
    operations and random erasing on its pixels, then label smoothing, MixUp and CutMix on its
    targets. None means the value of --recipe."""

    randaugment: int | None = option(
        None, "RandAugment: photometric operations per batch (0: off).", at_least=0, shown_default="recipe"
    )
    randaugment_magnitude: float | None = option(
        None, "RandAugment strength, 0 to 1 (Keras' factor).", within=(0, 1, "(]"), shown_default="recipe"
    )
    random_erasing: float | None = option(
        None, "Probability that an image gets a rectangle of noise (0: off).", within=(0, 1, "[]"),
        shown_default="recipe",
    )  # fmt: skip
    mixup: float | None = option(None, "MixUp alpha (0: off).", at_least=0, shown_default="recipe")
    cutmix: float | None = option(
        None, "CutMix alpha (0: off); with --mixup, each batch gets one of the two.", at_least=0,
        shown_default="recipe",
    )  # fmt: skip
    label_smoothing: float | None = option(
        None, "Share of each target spread over all classes (0: off).", within=(0, 1, "[)"), shown_default="recipe"
    )

    @property
    def soft_targets(self) -> bool:
        """The targets become distributions over the classes, not class indices."""
        return bool(self.label_smoothing or self.mixup or self.cutmix)

    @property
    def enabled(self) -> bool:
        return self.soft_targets or bool(self.randaugment or self.random_erasing)


@dataclass(frozen=True)
class Split:
    """Which labelled images a run uses (--limit, unreadable ones skipped up to --max-unreadable)
    and how it holds some out: one stratified --val-split, or fold `fold` of `folds`."""

    val_split: float = 0.2
    seed: int = 42
    limit: int | None = None
    folds: int = 1
    fold: int | None = None  # with folds > 1: this fold (None: the k-fold run as a whole)
    max_unreadable: float = 0.01


@dataclass(frozen=True)
class Loading:
    """How image files become a model's batches (`inference.make_loader` builds the loader)."""

    backbone: str  # its preprocessing
    image_size: int
    batch_size: int  # per replica
    loader: str = "tfdata"
    seed: int = 42
    augmentation: Augmentation = field(default_factory=Augmentation)
    batch_augmentation: BatchAugmentation = field(default_factory=BatchAugmentation)
    cache_images: str = "none"


@dataclass(frozen=True)
class Features:
    """What the feature cache extracts for a features run: each backbone's vectors (an ensemble
    side by side), `training_views` rows per training image, and the evaluation views averaged
    (`tta`: each image and its mirror)."""

    backbones: tuple[str, ...]
    weights: tuple[str, ...]  # one per backbone
    image_size: int | None  # None: each backbone's own size
    augmentation: Augmentation = field(default_factory=Augmentation)
    seed: int = 42
    training_views: int = 2
    tta: bool = True
    cache_dir: str = "cache"
    batch_size: int = 32

    def evaluation_views(self, tta: bool | None = None) -> list[int]:
        """The views averaged for an image that is predicted, not trained on: plain (and mirror)."""
        return [0, 1] if (self.tta if tta is None else tta) else [0]


@dataclass(frozen=True)
class HeadSettings:
    """A head on cached vectors (`heads.fit_head`)."""

    head: str = "dense"  # dense or logreg
    dropout: float = 0.5
    learning_rate: float = 1e-3
    patience: int = 3
    epochs: int = 60
    seed: int = 42


@dataclass(frozen=True)
class PredictSettings:
    """What a trained run's `Predictor` needs to feed its model: the method's inputs, the
    competition it was trained on, and whether its held-out predictions averaged mirrors."""

    method: str  # finetune or features
    data: str | None
    loading: Loading
    features: Features | None  # a features run's vectors
    tta: bool = True  # its val_predictions.csv / oof.csv averaged each image with its mirror


@dataclass
class Cluster:
    """Several processes training one model (JAX only), one per machine: given on the command
    line each time (a resumed run may restart on other machines), or by the machine itself (a
    Cloud TPU pod's VMs set what jax.distributed reads)."""

    coordinator: str | None = option(
        None, "JAX, several processes: process 0's HOST:PORT, where the others join it.", shown_default="none"
    )
    processes: int | None = option(
        None, "JAX: how many processes train this model, one per machine (with --coordinator).", at_least=1,
        shown_default="1, or what a TPU pod says",
    )  # fmt: skip
    process_id: int | None = option(
        None, "JAX, several processes: this one's number, 0 to N-1; process 0 writes the run and prints.",
        at_least=0, shown_default="none",
    )  # fmt: skip

    @property
    def given(self) -> bool:
        return self.processes is not None and self.processes > 1
