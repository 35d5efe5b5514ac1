"""The typed configuration of a run, saved as JSON in the run folder.

Each option is declared once, as a dataclass field made by `options.option()`: its default, its
help, its choices and its bounds. The command line (`dogbreeds.cli`), the validation below and
the option table of docs/options.md are all read from these declarations. A validated config is
never changed: `dataclasses.replace` makes another. The stages below the jobs never see it
whole: each takes its own small settings (`split`, `loading`, `features`, `head_settings`,
`predict_settings`).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from dogbreeds import __version__
from dogbreeds.errors import DogbreedsError, damaged
from dogbreeds.options import check_options, option, require, type_problem
from dogbreeds.places import COMPETITION
from dogbreeds.settings import (
    PRECISIONS,
    STRATEGIES,
    Augmentation,
    BatchAugmentation,
    Cluster,
    Features,
    HeadSettings,
    Loading,
    PredictSettings,
    Split,
)

RUN_FORMAT = 1  # bump when a run folder written by this version cannot be read by an older one


IMAGE_SIZE_HELP = (
    "Square input size in pixels. Default: the backbone's size in `dogbreeds backbones` (its native size; "
    "inception_resnet_v2 331, the competition's setting)."
)
TTA_HELP = "Average each image with its mirror."
STRATEGY_HELP = (
    "Devices that train or predict together. auto: a TPU if there is one, all GPUs if several, else one device; "
    "mirrored: all devices (CPUs too), data-parallel; under JAX, several processes always are."
)

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
        IMAGE_SIZE_HELP,
        at_least=32,
        shown_default="the backbone's",
    )
    batch_size: int = option(32, "Images per training step.", at_least=1)
    accumulate: int = option(
        1,
        "finetune: average the gradients of N batches before each update, for the effective batch of N x "
        "--batch-size in the memory of one (1: update every batch).",
        at_least=1,
    )
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
    seed: int = option(42, "Seed of the split, the shuffling and the augmentation.", at_least=0)
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
        "auto", STRATEGY_HELP,
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
        at_least=0,
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
    feature_views: int = option(2, "features: views per training image (plain, mirror, then augmented).", at_least=1)
    tta: bool = option(
        True,
        TTA_HELP,
        table="Average each image with its mirror in the held-out predictions (val_predictions.csv, oof.csv) and "
        "the validation figures they give; `submit`, `evaluate` and `predict` take the same flag",
    )
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
    layer_decay: float = option(
        1.0,
        "KerasHub transformers: while fine-tuning, block k of L learns at layer_decay^(L+1-k) of the rate, the "
        "embeddings least (1: one rate for all).",
        within=(0, 1, "(]"),
    )
    cache_dir: str = option("cache", "features: where extracted features are cached.")
    track: str = option(
        "none",
        "Also log the run to MLflow: settings, epochs, figures and files, in the store MLFLOW_TRACKING_URI names "
        '(pip install "dogbreeds[mlflow]"). TensorBoard logs are always written, in RUN/tensorboard.',
        choices=("none", "mlflow"),
    )
    augmentation: Augmentation = field(default_factory=Augmentation)
    batch_augmentation: BatchAugmentation = field(default_factory=BatchAugmentation)
    cluster: Cluster = field(default_factory=Cluster)  # how this run was started; --resume takes it anew
    mode: str = "competition"  # what kind of run folder this config makes
    version: str = __version__
    run_format: int = RUN_FORMAT

    def __post_init__(self) -> None:
        if isinstance(self.augmentation, dict):
            self.augmentation = Augmentation(**self.augmentation)
        if isinstance(self.batch_augmentation, dict):
            self.batch_augmentation = BatchAugmentation(**self.batch_augmentation)
        if isinstance(self.cluster, dict):
            self.cluster = Cluster(**self.cluster)
        if self.recipe in RECIPES:
            self._fill_from_recipe()
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
        check_options(self)
        n_weights = len(self.weights.split(","))
        last_process = (self.cluster.processes or 1) - 1
        require(
            [
                (
                    self.method == "features" or len(self.backbones) == 1,
                    "several backbones (an ensemble) need --method features",
                ),
                (
                    self.method == "finetune" or self.accumulate == 1,
                    "--accumulate applies to --method finetune (a features head's batches of vectors fit any memory)",
                ),
                (
                    not self.cluster.given or self.cluster.coordinator,
                    f"--processes {self.cluster.processes} needs --coordinator HOST:PORT (process 0's address)",
                ),
                (
                    not self.cluster.given or self.cluster.process_id is not None,
                    f"--processes {self.cluster.processes} needs --process-id (0 to {last_process})",
                ),
                (
                    not self.cluster.given or (self.cluster.process_id or 0) < self.cluster.processes,
                    f"--process-id must be 0 to {last_process}, got {self.cluster.process_id}",
                ),
                (
                    not self.cluster.given or (self.method, self.folds, self.loader) == ("finetune", 1, "tfdata"),
                    "several --processes train one fine-tuned model with the tfdata loader: drop --folds and "
                    "--loader legacy, or use --method finetune (a features head trains in seconds on one machine)",
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

    @property
    def split(self) -> Split:
        return Split(self.val_split, self.seed, self.limit, self.folds, self.fold, self.max_unreadable)

    @property
    def loading(self) -> Loading:
        return Loading(
            backbone=self.backbone,
            image_size=self.image_size,
            batch_size=self.batch_size,
            loader=self.loader,
            seed=self.seed,
            augmentation=self.augmentation,
            batch_augmentation=self.batch_augmentation,
            cache_images=self.cache_images,
        )

    @property
    def features(self) -> Features:
        return Features(
            backbones=tuple(self.backbones),
            weights=tuple(self.weights_for(i) for i in range(len(self.backbones))),
            image_size=self.image_size,
            augmentation=self.augmentation,
            seed=self.seed,
            training_views=self.feature_views,
            tta=self.tta,
            cache_dir=self.cache_dir,
            batch_size=self.batch_size,
        )

    @property
    def head_settings(self) -> HeadSettings:
        return HeadSettings(self.head, self.dropout, self.learning_rate, self.patience, self.head_epochs, self.seed)

    @property
    def predict_settings(self) -> PredictSettings:
        features = self.features if self.method == "features" else None
        return PredictSettings(self.method, self.data, self.loading, features, self.tta)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def load(cls, path: Path) -> "TrainConfig":
        """A run's config.json."""
        return cls.from_json(path.read_text(), path)

    @classmethod
    def from_json(cls, text: str, source: Path | str = "config.json") -> "TrainConfig":
        try:
            raw = json.loads(text)
        except ValueError as error:
            raise damaged(source, f"not JSON: {error}") from None
        if not isinstance(raw, dict):
            raise damaged(source, f"a JSON {type(raw).__name__}, not a table of settings")
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
        wrong = type_problem(cls, raw)
        if wrong:
            raise damaged(source, wrong)
        try:
            return cls(**raw)
        except DogbreedsError as error:  # a value the command line would refuse: hand-edited or damaged
            raise damaged(source, str(error)) from None


@dataclass(frozen=True)
class PredictOptions:
    """The options of the commands that use trained runs (submit, evaluate, predict, explain, blend,
    export, and bench's output) and send what they wrote (kaggle-submit), declared once: each command
    takes the ones it needs, with one name, one meaning and one help everywhere."""

    run: str | None = option(None, "Run folder or name under runs/. Default: the newest run.")
    data: str | None = option(None, "Competition folder. Default: the run's.")
    out: str | None = option(
        None,
        "Where to write. Default: submissions/<run name>.csv (blend: submissions/blend-<time>.csv; "
        "export: RUN/export-FORMAT; explain: the folder explain/).",
    )
    force: bool = option(False, "Replace what --out names.")
    tta: bool = option(True, TTA_HELP)
    calibrate: bool = option(
        True, "Apply the run's calibration.json (temperature and floor from `dogbreeds evaluate`), if it has one."
    )
    batch_size: int | None = option(None, "Images per prediction step. Default: the run's.", at_least=1)
    strategy: str = option("auto", STRATEGY_HELP, choices=STRATEGIES)
    top: int = option(5, "How many breeds to show per image.", at_least=1)
    json: bool = option(False, "Print JSON instead of text (predict: one object per line; bench: the figures).")
    kaggle: str | None = option(
        None,
        "Then send the CSV to Kaggle with this message and print its public score (the kaggle extra: "
        "docs/kaggle_submit.md).",
        shown_default="not sent",
    )
    competition: str = option(COMPETITION, "The Kaggle competition to send to: the name in its address.")
    wait: float = option(600.0, "Seconds to wait for Kaggle's public score after sending (0: do not wait).", at_least=0)
    poll: float = option(10.0, "Seconds between two looks at the submission's status while waiting.", positive=True)

    def __post_init__(self) -> None:
        check_options(self)


def read_predict_settings(path: Path) -> PredictSettings:
    """What a trained run's model needs to predict, read from its config.json: the stages below
    the jobs take these small settings, never the whole configuration."""
    return TrainConfig.load(path).predict_settings
