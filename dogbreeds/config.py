"""The typed configuration of a run, saved as JSON in the run folder.

Each option is declared once, as a dataclass field made by `option()`: its default, its help,
its choices and its bounds. The command line (`dogbreeds.cli`), the validation below and the
option table of docs/options.md (`option_table`) are all read from these declarations.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path

from dogbreeds import __version__
from dogbreeds.errors import DogbreedsError

RUN_FORMAT = 1  # bump when a run folder written by this version cannot be read by an older one

PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
STRATEGIES = ("auto", "default", "mirrored", "tpu")


@dataclass(frozen=True)
class Option:
    """How one field appears on the command line and what values it accepts."""

    help: str
    flag: str | None = None  # the option's name; default: --field-name (booleans get --x/--no-x)
    choices: tuple[str, ...] = ()
    at_least: float | None = None  # inclusive lower bound
    positive: bool = False
    within: tuple[float, float, str] | None = None  # (low, high, ends: "[)", "()", "(]" or "[]")
    shown_default: str | None = None  # the README's default column, where the value alone says too little
    table: str | None = None  # the README's meaning column, where it says more than --help

    def problem(self, value) -> str | None:
        """What is wrong with `value`, or None; None values mean "the default" and pass."""
        if value is None:
            return None
        if self.choices and value not in self.choices:
            return f"must be one of {', '.join(self.choices)}, got {value!r}"
        if self.at_least is not None and value < self.at_least:
            bound = "0 or more" if self.at_least == 0 else f"at least {self.at_least:g}"
            return f"must be {bound}, got {value}"
        if self.positive and not value > 0:
            return f"must be positive, got {value}"
        if self.within is not None:
            low, high, ends = self.within
            above = low <= value if ends[0] == "[" else low < value
            below = value <= high if ends[1] == "]" else value < high
            if not (above and below):
                if ends == "()":
                    return f"must be between {low:g} and {high:g}, got {value}"
                return f"must be in {ends[0]}{low:g}, {high:g}{ends[1]}, got {value}"
        return None


def option(default=dataclasses.MISSING, help: str = "", *, default_factory=dataclasses.MISSING, **how):
    """A dataclass field that is also a command-line option."""
    return field(default=default, default_factory=default_factory, metadata={"option": Option(help, **how)})


def flag_of(f: dataclasses.Field) -> str:
    spec: Option = f.metadata["option"]
    return spec.flag or "--" + f.name.replace("_", "-")


def is_flag(kind) -> bool:
    """An on/off option (--x/--no-x); `bool | None` is one whose default comes from elsewhere."""
    return kind is bool or kind == (bool | None)


def option_fields(cls) -> list[tuple[dataclasses.Field, type, tuple[str, ...]]]:
    """(field, type, path) of every option of a config class, nested dataclasses flattened."""
    hints = typing.get_type_hints(cls)
    found = []
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            found += [(inner, t, (f.name, *path)) for inner, t, path in option_fields(kind)]
        elif "option" in f.metadata:
            found.append((f, kind, (f.name,)))
    return found


def _check_options(config) -> None:
    """Each field's own bounds, as the one-line error the user sees."""
    for f, _, path in option_fields(type(config)):
        value = config
        for name in path:
            value = getattr(value, name)
        problem = f.metadata["option"].problem(value)
        if problem:
            raise DogbreedsError(f"{flag_of(f)} {problem}")


def from_options(cls, values: dict):
    """A config from the command line's values, keyed by field name (nested dataclasses flattened)."""
    values = dict(values)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            values[f.name] = kind(**{g.name: values.pop(g.name) for g in dataclasses.fields(kind) if g.name in values})
    return cls(**values)


def _require(checks: list[tuple[bool, str]]) -> None:
    """The first failed check between options, as the one-line error the user sees."""
    for ok, message in checks:
        if not ok:
            raise DogbreedsError(message)


def _default_text(f: dataclasses.Field, kind) -> str:
    spec: Option = f.metadata["option"]
    if spec.shown_default is not None:
        return spec.shown_default
    value = f.default
    if kind is bool:
        return "on" if value else "off"
    return "" if value is None else f"`{value}`"


def option_table(cls) -> str:
    """The README's table of a config's options: option, default, meaning."""
    lines = ["| option | default | meaning |", "| --- | --- | --- |"]
    for f, kind, _ in option_fields(cls):
        spec: Option = f.metadata["option"]
        name = flag_of(f)
        if is_flag(kind):
            name = f"{name}/--no-{name[2:]}"
        meaning = spec.table or spec.help
        if spec.choices:
            meaning += " (" + ", ".join(f"`{c}`" for c in spec.choices) + ")"
        lines.append(f"| `{name}` | {_default_text(f, kind)} | {meaning} |")
    return "\n".join(lines)


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


# A recipe is a set of defaults; any option given on the command line overrides its value.
RECIPES: dict[str, dict] = {
    # The seed's recipe: the warp's flips, turns, shifts and zooms, Adam, rate cuts on plateaus.
    "classic": dict(
        randaugment=0, randaugment_magnitude=0.5, random_erasing=0.0, mixup=0.0, cutmix=0.0,
        label_smoothing=0.0, schedule="plateau", warmup_epochs=0, ema=False, fine_tune_share=0.01,
    ),
    # What measured best on top of it (docs/recipes.md): harder fine-tuning, warmed up and
    # averaged, and smoothed targets; the mixing and pixel operations cost more than they gave.
    "strong": dict(
        randaugment=0, randaugment_magnitude=0.5, random_erasing=0.0, mixup=0.0, cutmix=0.0,
        label_smoothing=0.1, schedule="cosine", warmup_epochs=1, ema=True, fine_tune_share=0.1,
    ),
}  # fmt: skip


@dataclass
class TrainConfig:
    """Everything needed to repeat a competition run; defaults are the competition settings."""

    data: str | None = option(
        None,
        "Competition folder (labels.csv, train/, test/). Default: $DOGBREEDS_DATA, "
        "/kaggle/input/dog-breed-identification, ./data.",
        shown_default="see above",
    )
    method: str = option(
        "finetune",
        "finetune the backbone, or train a head on cached backbone features.",
        choices=("finetune", "features"),
    )
    backbone: str = option(
        "inception_resnet_v2",
        "Backbone name (see `dogbreeds backbones`); features: a,b,c for an ensemble.",
        table="`xception`, `inception_v3`, `resnet50`, `mobilenet_v2`, `efficientnet_b0`..`b3`, `efficientnet_v2_s`, "
        "`convnext_tiny` (`dogbreeds backbones` lists them); features: `a,b,c` for an ensemble",
    )
    weights: str = option(
        "imagenet",
        "imagenet, none, or the path of a .h5 weights file (features: one per backbone, comma-separated).",
        table="`imagenet` (downloaded once by Keras), `none`, or the path of a `.h5` / `.weights.h5` file of the "
        "backbone without its top (features: one per backbone, comma-separated)",
    )
    image_size: int | None = option(
        None,
        "Square input size in pixels. Default: 331 to fine-tune; each backbone's native size for features.",
        at_least=32,
        shown_default="331 (features: native)",
    )
    batch_size: int = option(32, "Images per training step.", at_least=1)
    epochs: int = option(5, "Epochs with the backbone frozen (head only).", at_least=0)
    fine_tune_epochs: int = option(5, "Epochs fine-tuning the backbone after that.", at_least=0)
    fine_tune_layers: int | None = option(
        None, "Unfreeze only the top N backbone layers. Default: all.", at_least=0, shown_default="all"
    )
    learning_rate: float = option(1e-3, "Adam learning rate of the frozen phase.", positive=True)
    fine_tune_learning_rate: float | None = option(
        None,
        "Learning rate of fine-tuning. Default: --learning-rate times --fine-tune-share.",
        positive=True,
        shown_default="learning rate x share",
    )
    fine_tune_share: float | None = option(
        None,
        "Fine-tuning's learning rate as a share of --learning-rate (classic: a hundredth, strong: a tenth).",
        within=(0, 1, "(]"),
        shown_default="recipe",
    )
    dropout: float = option(0.5, "Dropout before the classifier.", within=(0, 1, "[)"))
    hidden_units: int = option(0, "Width of an extra hidden Dense layer in the head (0: none).", at_least=0)
    val_split: float = option(0.2, "Share of labelled images held out, stratified by breed.", within=(0, 0.5, "()"))
    seed: int = option(42, "Seed of the split, the shuffling and the augmentation.")
    folds: int = option(
        1,
        "Train one model per stratified fold and predict every labelled image out of fold (1: one --val-split).",
        at_least=1,
    )
    fold: int | None = option(
        None,
        "With --folds K: train only fold I (1..K), e.g. one fold per Kaggle kernel, into the same --run-dir.",
        at_least=1,
        shown_default="all",
    )
    limit: int | None = option(
        None, "Use a stratified subset of N labelled images (quick trial).", at_least=2, shown_default="all"
    )
    loader: str = option("tfdata", "tfdata (fast) or legacy (ImageDataGenerator).", choices=("tfdata", "legacy"))
    precision: str = option(
        "auto",
        "auto: mixed_float16 on GPUs of compute capability 7.0+ (T4, V100, A100), mixed_bfloat16 on a TPU, "
        "else float32.",
        choices=PRECISIONS,
    )
    strategy: str = option(
        "auto", "tf.distribute strategy. auto: a TPU if there is one, all GPUs if several, else one device.",
        choices=STRATEGIES,
    )  # fmt: skip
    cache_images: str = option(
        "none",
        "Keep decoded, resized images after the first epoch: in memory, or on disk in $DOGBREEDS_CACHE.",
        choices=("none", "memory", "disk"),
    )
    patience: int = option(
        3,
        "Epochs without validation improvement before stopping a phase.",
        table="Epochs without validation improvement before a phase stops (the learning rate drops after N-1).",
    )
    max_unreadable: float = option(
        0.01, "Share of training images that may be skipped as unreadable.", within=(0, 1, "[)")
    )
    head: str = option(
        "dense",
        "features: dense (Keras) or logreg (scikit-learn, C chosen on validation).",
        choices=("dense", "logreg"),
    )
    head_epochs: int = option(60, "features, dense head: most epochs (stops early).", at_least=1)
    feature_views: int = option(
        2, "features: views per training image (plain, mirror, then augmented).", at_least=1
    )
    tta: bool = option(True, "features: validate on the average of each image and its mirror.")
    recipe: str = option(
        "strong",
        "Defaults of the options marked recipe: classic (the seed's) or strong (docs/recipes.md).",
        choices=tuple(RECIPES),
    )
    schedule: str | None = option(
        None,
        "plateau: cut the rate when validation stalls, stop early; cosine: warm up, then a cosine decay.",
        choices=("plateau", "cosine"),
        shown_default="recipe",
    )
    warmup_epochs: int | None = option(
        None, "cosine: epochs of linear warm-up at the start of fine-tuning.", at_least=0, shown_default="recipe"
    )
    ema: bool | None = option(
        None,
        "Fine-tuning validates, keeps and saves a moving average of the weights (Keras' use_ema).",
        shown_default="recipe",
    )
    ema_momentum: float = option(0.99, "--ema: the average's momentum per step.", within=(0, 1, "()"))
    cache_dir: str = option("cache", "features: where extracted features are cached.")
    augmentation: Augmentation = field(default_factory=Augmentation)
    batch_augmentation: BatchAugmentation = field(default_factory=BatchAugmentation)
    mode: str = "competition"  # what kind of run folder this config makes
    version: str = __version__
    run_format: int = RUN_FORMAT

    def __post_init__(self) -> None:
        if isinstance(self.augmentation, dict):
            self.augmentation = Augmentation(**self.augmentation)
        if isinstance(self.batch_augmentation, dict):
            self.batch_augmentation = BatchAugmentation(**self.batch_augmentation)
        if self.recipe in RECIPES:
            self._fill_from_recipe()
        if self.method == "finetune" and self.image_size is None:
            self.image_size = 331  # the competition setting
        self.validate()

    def _fill_from_recipe(self) -> None:
        """Options left at None take the recipe's value, so config.json records every value used."""
        for owner in (self, self.batch_augmentation):
            for name, value in RECIPES[self.recipe].items():
                if hasattr(owner, name) and getattr(owner, name) is None:
                    setattr(owner, name, value)

    @property
    def backbones(self) -> list[str]:
        return [name.strip() for name in self.backbone.split(",")]

    def weights_for(self, index: int) -> str:
        given = [w.strip() for w in self.weights.split(",")]
        return given[index] if len(given) > 1 else given[0]

    def validate(self) -> None:
        _check_options(self)
        n_weights = len(self.weights.split(","))
        _require(
            [
                (
                    self.method == "features" or len(self.backbones) == 1,
                    "several backbones (an ensemble) need --method features",
                ),
                (
                    n_weights in (1, len(self.backbones)),
                    f"--weights gives {n_weights} files for {len(self.backbones)} backbones",
                ),
                (
                    self.method == "features" or self.epochs + self.fine_tune_epochs >= 1,
                    "--epochs plus --fine-tune-epochs must be at least 1",
                ),
                (
                    self.fold is None or self.fold <= self.folds,
                    f"--fold must be between 1 and --folds {self.folds}, got {self.fold}",
                ),
                (
                    self.cache_images == "none" or self.loader == "tfdata",
                    "--cache-images works with --loader tfdata only; drop it or use the default loader",
                ),
                (
                    not self.batch_augmentation.enabled or self.loader == "tfdata",
                    "--loader legacy cannot smooth labels, or mix, erase or RandAugment batches (the strong "
                    "recipe smooths labels); add --recipe classic and leave those options off, or use --loader tfdata",
                ),
            ]
        )

    def with_recipe(self, recipe: str) -> "TrainConfig":
        """This config with another recipe's values in place of its current recipe's."""
        reset = {name: None for name in RECIPES[recipe] if hasattr(self, name)}
        batch = BatchAugmentation()
        return dataclasses.replace(self, recipe=recipe, batch_augmentation=batch, **reset)

    @property
    def pretrained(self) -> bool:
        return self.weights.lower() != "none"

    @property
    def fine_tune_lr(self) -> float:
        return self.fine_tune_learning_rate or self.learning_rate * self.fine_tune_share

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str, source: Path | str = "config.json") -> "TrainConfig":
        raw = json.loads(text)
        if raw.get("mode", "competition") != "competition":
            raise DogbreedsError(
                f"{source} belongs to a `dogbreeds {raw['mode']}` run, not a competition run; pick another --run"
            )
        if raw.get("run_format") != RUN_FORMAT:
            raise DogbreedsError(
                f"{source} was written by dogbreeds {raw.get('version', 'before 0.1')} in another run format; "
                f"this is dogbreeds {__version__}: train a new run, or install that version to use this one"
            )
        raw.setdefault("recipe", "classic")  # runs from before recipes were trained with this one
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise DogbreedsError(
                f"{source}: unknown settings {', '.join(unknown)} (made by a newer dogbreeds?); "
                "upgrade dogbreeds or train a new run"
            )
        return cls(**raw)


CIFAR_MODELS = ("mlp", "cnn", "resnet9", "seed-cnn", "transfer")


@dataclass
class CifarConfig:
    """`dogbreeds cifar`: one of the ten-class experiments; None means the model's own recipe."""

    model: str = "cnn"  # one of CIFAR_MODELS; the command line also takes a list, or all
    dataset: str = option("cifar10", "cifar10 or cifar100.", choices=("cifar10", "cifar100"))
    data: str | None = option(
        None,
        "cifar-10-batches-py / cifar-100-python folder, or train/<class>/ and test/<class>/ image folders. "
        "Default: download with keras.datasets.",
    )
    epochs: int | None = option(
        None,
        "Default: the model's recipe (mlp 30, seed-cnn 10, cnn 8, resnet9 30; transfer: head epochs, 60).",
        at_least=1,
    )
    batch_size: int | None = option(
        None, "Default: the model's recipe (mlp 128, seed-cnn 32, cnn 1024, resnet9 512).", at_least=1
    )
    learning_rate: float | None = option(None, "Default: the model's recipe.", positive=True)
    limit: int | None = option(None, "Use only N training images (a stratified subset).", at_least=20)
    val_split: float = option(0.1, "Share of the training images held out for validation.", within=(0, 0.5, "()"))
    seed: int = option(42, "Split, shuffling, augmentation and initial weights.")
    precision: str = option(
        "auto", "auto: float32 on a CPU; mixed_bfloat16 is faster on CPUs with AMX (Xeon 4th gen+).",
        choices=PRECISIONS,
    )  # fmt: skip
    backbone: str = option("mobilenet_v2", "transfer: the frozen backbone.")
    weights: str = option("imagenet", "transfer: imagenet, or the path of a .h5 weights file.")
    image_size: int = option(96, "transfer: the images are upscaled to this.", at_least=32)
    cache_dir: str = option("cache", "Image folders made from batches, and features.")
    mode: str = "cifar"  # tells a CIFAR run folder from a competition run
    version: str = __version__
    run_format: int = RUN_FORMAT

    def __post_init__(self) -> None:
        _require(
            [
                (
                    self.model in CIFAR_MODELS,
                    f"--model must be one of {', '.join(CIFAR_MODELS)} or all, got {self.model!r}",
                )
            ]
        )
        _check_options(self)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)
