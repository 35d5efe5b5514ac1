"""The `dogbreeds` command: parses options and calls the library.

TensorFlow is imported inside each command, so `dogbreeds --help` answers at once.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
import tempfile
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from dogbreeds.config import CACHE_IMAGES, STRATEGIES, Augmentation, CifarConfig, TrainConfig
from dogbreeds.errors import DogbreedsError, log

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # its ERROR lines on a CPU (no CUDA, no AVX-512) are not errors

app = typer.Typer(
    help="Kaggle Dog Breed Identification: `dogbreeds train`, `dogbreeds evaluate`, then `dogbreeds submit`.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# TensorFlow's C++ side prints info lines before its log level is read; nothing else hides them.
_IMPORT_NOISE = re.compile(r"^(WARNING: All log messages before absl::InitializeLog|I\d{4} \d\d:\d\d:\d\d)")


def _import_tensorflow_quietly() -> None:
    if "tensorflow" in sys.modules:
        return
    with tempfile.TemporaryFile() as captured:
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        for line in captured.read().decode(errors="replace").splitlines():
            if not _IMPORT_NOISE.match(line):
                print(line, file=sys.stderr)


LIGHT_COMMANDS = {"runs"}  # read JSON files only: answer at once, without TensorFlow


@app.callback()
def _before_any_command(ctx: typer.Context) -> None:
    if ctx.invoked_subcommand not in LIGHT_COMMANDS:
        _import_tensorflow_quietly()


class LoaderName(str, Enum):
    tfdata = "tfdata"
    legacy = "legacy"


class Method(str, Enum):
    finetune = "finetune"
    features = "features"


class Head(str, Enum):
    dense = "dense"
    logreg = "logreg"


class Precision(str, Enum):
    auto = "auto"
    float32 = "float32"
    mixed_float16 = "mixed_float16"
    mixed_bfloat16 = "mixed_bfloat16"


Strategy = Enum("Strategy", {name: name for name in STRATEGIES}, type=str)
CacheImages = Enum("CacheImages", {name: name for name in CACHE_IMAGES}, type=str)


DataOption = typer.Option(
    None,
    "--data",
    help="Competition folder (labels.csv, train/, test/). Default: $DOGBREEDS_DATA, "
    "/kaggle/input/dog-breed-identification, ./data.",
)
DEFAULTS = TrainConfig()  # the competition settings; options show and use these
RunOption = typer.Option(None, "--run", help="Run folder or name under runs/. Default: the newest run.")
RunDataOption = typer.Option(None, "--data", help="Competition folder. Default: the run's.")
TTAOption = typer.Option(True, "--tta/--no-tta", help="Average each image with its mirror.")
BatchSizeOption = typer.Option(None, "--batch-size", help="Images per prediction step. Default: the run's.")
CalibrateOption = typer.Option(
    True,
    "--calibrate/--no-calibrate",
    help="Apply the run's calibration.json (temperature and floor from `dogbreeds evaluate`), if it has one.",
)
StrategyOption = typer.Option(
    "auto",
    help="tf.distribute strategy. auto: a TPU if there is one, all GPUs if several, else one device.",
)


@app.command()
def train(
    data: Optional[Path] = DataOption,
    method: Method = typer.Option(
        Method.finetune, help="finetune the backbone, or train a head on cached backbone features."
    ),
    backbone: str = typer.Option(
        DEFAULTS.backbone, help="Backbone name (see `dogbreeds backbones`); features: a,b,c for an ensemble."
    ),
    weights: str = typer.Option(DEFAULTS.weights, help="imagenet, none, or the path of a .h5 weights file."),
    image_size: Optional[int] = typer.Option(
        None, help="Square input size in pixels. Default: 331 to fine-tune; each backbone's native size for features."
    ),
    batch_size: int = typer.Option(DEFAULTS.batch_size, help="Images per training step."),
    epochs: int = typer.Option(DEFAULTS.epochs, help="Epochs with the backbone frozen (head only)."),
    fine_tune_epochs: int = typer.Option(DEFAULTS.fine_tune_epochs, help="Epochs fine-tuning the backbone after that."),
    fine_tune_layers: Optional[int] = typer.Option(None, help="Unfreeze only the top N backbone layers. Default: all."),
    learning_rate: float = typer.Option(DEFAULTS.learning_rate, help="Adam learning rate of the frozen phase."),
    fine_tune_learning_rate: Optional[float] = typer.Option(
        None, help="Learning rate of fine-tuning. Default: a hundredth of --learning-rate."
    ),
    dropout: float = typer.Option(DEFAULTS.dropout, help="Dropout before the classifier."),
    hidden_units: int = typer.Option(
        DEFAULTS.hidden_units, help="Width of an extra hidden Dense layer in the head (0: none)."
    ),
    val_split: float = typer.Option(DEFAULTS.val_split, help="Share of labelled images held out, stratified by breed."),
    seed: int = typer.Option(DEFAULTS.seed, help="Seed of the split, the shuffling and the augmentation."),
    limit: Optional[int] = typer.Option(None, help="Use a stratified subset of N labelled images (quick trial)."),
    loader: LoaderName = typer.Option(LoaderName.tfdata, help="tfdata (fast) or legacy (ImageDataGenerator)."),
    precision: Precision = typer.Option(
        Precision.auto, help="auto: mixed_float16 on a GPU, mixed_bfloat16 on a TPU, float32 on a CPU."
    ),
    strategy: Strategy = StrategyOption,
    cache_images: CacheImages = typer.Option(
        "none", help="Keep decoded, resized images after the first epoch: in memory, or on disk in $DOGBREEDS_CACHE."
    ),
    flip: bool = typer.Option(DEFAULTS.augmentation.flip, "--flip/--no-flip", help="Random horizontal mirror."),
    rotation: float = typer.Option(DEFAULTS.augmentation.rotation, help="Random rotation range, degrees."),
    shift: float = typer.Option(DEFAULTS.augmentation.shift, help="Random shift range, fraction of the size."),
    zoom: float = typer.Option(DEFAULTS.augmentation.zoom, help="Random zoom range: scale in [1-zoom, 1+zoom]."),
    patience: int = typer.Option(
        DEFAULTS.patience, help="Epochs without validation improvement before stopping a phase."
    ),
    max_unreadable: float = typer.Option(
        DEFAULTS.max_unreadable, help="Share of unreadable training images to skip before refusing to start."
    ),
    head: Head = typer.Option(
        Head.dense, help="features: dense (Keras) or logreg (scikit-learn, C chosen on validation)."
    ),
    head_epochs: int = typer.Option(DEFAULTS.head_epochs, help="features, dense head: most epochs (stops early)."),
    feature_views: int = typer.Option(
        DEFAULTS.feature_views, help="features: views per training image (plain, mirror, then augmented)."
    ),
    tta: bool = typer.Option(
        DEFAULTS.tta, "--tta/--no-tta", help="features: validate on the average of each image and its mirror."
    ),
    cache_dir: Path = typer.Option(Path(DEFAULTS.cache_dir), help="features: where extracted features are cached."),
    run_dir: Optional[Path] = typer.Option(None, help="Where the run goes. Default: runs/<backbone>-<timestamp>."),
    resume: Optional[str] = typer.Option(
        None,
        "--resume",
        help="Continue this stopped run from its last completed epoch (its own settings; other options are ignored).",
    ),
):
    """Fine-tune a pretrained backbone on labels.csv + train/ and save the run."""
    from dogbreeds.training import resume as resume_run
    from dogbreeds.training import train as train_run

    if resume is not None:
        _report_training(resume_run(resume))
        return

    config = TrainConfig(
        data=str(data) if data else None,
        method=method.value,
        backbone=backbone,
        weights=weights,
        image_size=image_size,
        batch_size=batch_size,
        epochs=epochs,
        fine_tune_epochs=fine_tune_epochs,
        fine_tune_layers=fine_tune_layers,
        learning_rate=learning_rate,
        fine_tune_learning_rate=fine_tune_learning_rate,
        dropout=dropout,
        hidden_units=hidden_units,
        val_split=val_split,
        seed=seed,
        limit=limit,
        loader=loader.value,
        precision=precision.value,
        strategy=strategy.value,
        cache_images=cache_images.value,
        patience=patience,
        max_unreadable=max_unreadable,
        head=head.value,
        head_epochs=head_epochs,
        feature_views=feature_views,
        tta=tta,
        cache_dir=str(cache_dir),
        augmentation=Augmentation(flip=flip, rotation=rotation, shift=shift, zoom=zoom),
    )
    _report_training(train_run(config, run_dir=str(run_dir) if run_dir else None))


def _report_training(result) -> None:
    m = result.metrics
    if m.get("method") == "features":
        how = f"{m['head']} head on {m['features']} features, trained in {m['head_seconds']:.2f} s"
    else:
        how = f"best epoch {m['best_epoch']} of {m['epochs']}"
    typer.echo(
        f"run {result.run.path}: validation log loss {m['val_log_loss']:.4f} "
        f"(uniform guess {m['uniform_log_loss']:.4f}), accuracy {m['val_accuracy']:.2%}, {how}"
    )


@app.command()
def submit(
    run: Optional[str] = RunOption,
    data: Optional[Path] = RunDataOption,
    out: Optional[Path] = typer.Option(None, "--out", help="CSV to write. Default: submissions/<run name>.csv."),
    tta: bool = TTAOption,
    force: bool = typer.Option(False, "--force", help="Overwrite an existing --out file."),
    batch_size: Optional[int] = BatchSizeOption,
    calibrate: bool = CalibrateOption,
    strategy: Strategy = StrategyOption,
):
    """Predict every test image and write a submission CSV in the sample_submission format."""
    from dogbreeds.submission import submit as write_submission

    result = write_submission(
        run, data, out, tta=tta, force=force, batch_size=batch_size, calibrate=calibrate, strategy=strategy.value
    )
    top = ", ".join(f"{breed} ({n})" for breed, n in result.top_breeds)
    typer.echo(result.calibration_note)
    typer.echo(
        f"wrote {result.path}: {result.rows} rows, mean top probability {result.mean_max_probability:.3f}; "
        f"most predicted: {top}"
    )


@app.command()
def evaluate(
    run: Optional[str] = RunOption,
    data: Optional[Path] = RunDataOption,
    tta: bool = TTAOption,
    batch_size: Optional[int] = BatchSizeOption,
):
    """Score the run on its validation split, fit its calibration, and write tables and pictures."""
    from dogbreeds.evaluation import evaluate as evaluate_run

    typer.echo(evaluate_run(run, data, tta=tta, batch_size=batch_size).text())


@app.command()
def predict(
    images: list[Path] = typer.Argument(..., help="JPEG or PNG files, or folders of them (searched with sub-folders)."),
    run: Optional[str] = RunOption,
    top: int = typer.Option(5, "--top", help="How many breeds to show per image."),
    as_json: bool = typer.Option(
        False, "--json", help="One JSON object per line: path, predictions [{breed, probability}]."
    ),
    tta: bool = TTAOption,
    calibrate: bool = CalibrateOption,
    batch_size: Optional[int] = BatchSizeOption,
):
    """The most likely breeds of each photo, with probabilities."""
    from dogbreeds.prediction import predict_images

    result = predict_images(images, run, top=top, tta=tta, calibrate=calibrate, batch_size=batch_size)
    typer.echo(result.calibration_note, err=as_json)  # stdout stays pure JSON lines
    for prediction in result.predictions:
        typer.echo(prediction.to_json() if as_json else prediction.text())


@app.command()
def runs(
    folder: Path = typer.Option(Path("runs"), "--dir", help="Folder holding the runs."),
):
    """List the runs, newest first, with their settings and validation scores."""
    from dogbreeds.runs import format_runs, list_runs

    rows = list_runs(folder)
    typer.echo(format_runs(rows) if rows else f"no runs in {folder}/: train one with `dogbreeds train`")


@app.command()
def score(
    submission_csv: Path = typer.Argument(..., help="A submission CSV."),
    solution: Path = typer.Option(..., "--solution", help="Answer key CSV with id,breed."),
):
    """Score a submission against a local answer key, as Kaggle would (log loss)."""
    from dogbreeds.submission import score as score_submission

    for path in (submission_csv, solution):
        if not path.is_file():
            raise DogbreedsError(f"{path} not found")
    result = score_submission(submission_csv, solution)
    typer.echo(f"log loss {result['log_loss']:.4f}, accuracy {result['accuracy']:.2%}")


@app.command()
def bench(
    data: Optional[Path] = typer.Option(
        None, "--data", help="Competition folder to read. Default: generated 500x375 JPEGs (a photo's decoding cost)."
    ),
    image_size: int = typer.Option(DEFAULTS.image_size, help="Square input size in pixels."),
    backbone: str = typer.Option(DEFAULTS.backbone, help="Backbone of the forward and fine-tuning figures."),
    weights: str = typer.Option("none", help="none, imagenet or a .h5 file: speed does not depend on them."),
    batch_size: int = typer.Option(DEFAULTS.batch_size, help="Images per batch."),
    images: int = typer.Option(512, help="Training images the loaders read."),
    model_images: int = typer.Option(128, help="Images the model sees in the forward, submit and fine-tuning figures."),
    tta: bool = TTAOption,
    precision: Precision = typer.Option(Precision.auto, help="As for train: auto picks by device."),
    json_path: Optional[str] = typer.Option(
        None, "--json", help="Also write the figures as JSON to this file ('-': standard output, and no table)."
    ),
):
    """Images/s of the legacy and default loaders, decoding, the forward pass and submit, side by side."""
    from dogbreeds.bench import bench as run_bench
    from dogbreeds.bench import write_json

    result = run_bench(
        data,
        image_size=image_size,
        backbone=backbone,
        weights=weights,
        batch_size=batch_size,
        images=images,
        model_images=model_images,
        tta=tta,
        precision=precision.value,
    )
    if json_path != "-":
        typer.echo(result.text())
    if json_path:
        write_json(result, json_path)


CIFAR = CifarConfig()


@app.command()
def cifar(
    model: str = typer.Option("cnn", help="mlp, seed-cnn (the write-ups' networks), cnn (ours), transfer, or all."),
    dataset: str = typer.Option(CIFAR.dataset, help="cifar10 or cifar100."),
    data: Optional[Path] = typer.Option(
        None,
        "--data",
        help="cifar-10-batches-py / cifar-100-python folder, or train/<class>/ and test/<class>/ image folders. "
        "Default: download with keras.datasets.",
    ),
    epochs: Optional[int] = typer.Option(
        None, help="Default: the model's recipe (mlp 30, seed-cnn 10, cnn 30; transfer: head epochs, 60)."
    ),
    batch_size: Optional[int] = typer.Option(None, help="Default: the model's recipe (mlp 128, seed-cnn 32, cnn 512)."),
    learning_rate: Optional[float] = typer.Option(None, help="Default: the model's recipe."),
    limit: Optional[int] = typer.Option(None, help="Use only N training images (a stratified subset)."),
    val_split: float = typer.Option(CIFAR.val_split, help="Share of the training images held out for validation."),
    precision: Precision = typer.Option(
        Precision.auto, help="auto: float32 on a CPU; mixed_bfloat16 is faster on CPUs with AMX (Xeon 4th gen+)."
    ),
    backbone: str = typer.Option(CIFAR.backbone, help="transfer: the frozen backbone."),
    weights: str = typer.Option(CIFAR.weights, help="transfer: imagenet, or the path of a .h5 weights file."),
    image_size: int = typer.Option(CIFAR.image_size, help="transfer: the images are upscaled to this."),
    seed: int = typer.Option(CIFAR.seed, help="Split, shuffling, augmentation and initial weights."),
    cache_dir: Path = typer.Option(Path(CIFAR.cache_dir), help="Image folders made from batches, and features."),
    run_dir: Optional[Path] = typer.Option(None, help="Default: runs/<dataset>-<model>-<date>."),
):
    """CIFAR-10/100 experiments on the same engine: a perceptron, CNNs, transfer learning; `all` ends with a table."""
    from dogbreeds.cifar import parse_models, run_cifar

    models = parse_models(model)
    config = CifarConfig(
        model=models[0],
        dataset=dataset,
        data=str(data) if data else None,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        limit=limit,
        val_split=val_split,
        precision=precision.value,
        backbone=backbone,
        weights=weights,
        image_size=image_size,
        seed=seed,
        cache_dir=str(cache_dir),
    )
    folder, table = run_cifar(config, models, str(run_dir) if run_dir else None)
    for row in table.itertuples(index=False):
        typer.echo(
            f"{row.model}: test accuracy {row.test_accuracy:.2%}, test log loss {row.test_log_loss:.4f} "
            f"({row.epochs} epochs, {row.seconds_per_epoch:g} s each)"
        )
    typer.echo(f"results: {folder / 'results.md'}, curves: {folder / 'accuracy.png'}")


@app.command()
def backbones():
    """List the registered backbones with their native input size."""
    from dogbreeds.models import BACKBONES

    for spec in BACKBONES.values():
        typer.echo(f"{spec.name:22s} native size {spec.native_size}")


@app.command()
def demo(
    folder: Path = typer.Option(Path("demo"), "--dir", help="Where the generated competition and run go."),
    backbone: str = typer.Option("tiny_cnn", help="Backbone to train from scratch (no download)."),
    image_size: int = typer.Option(64, help="Image size."),
    epochs: int = typer.Option(2, help="Frozen-phase epochs."),
    fine_tune_epochs: int = typer.Option(8, help="Fine-tuning epochs."),
):
    """Build a small generated competition, then train and submit on it, offline, in minutes."""
    from dogbreeds.demo import make_competition
    from dogbreeds.submission import score as score_submission
    from dogbreeds.submission import submit as write_submission
    from dogbreeds.training import train as train_run

    data = make_competition(folder / "data")
    typer.echo(f"1/3 generated a competition in {data} (labels.csv, train/, test/, sample_submission.csv)")
    config = TrainConfig(
        data=str(data),
        backbone=backbone,
        weights="none",
        image_size=image_size,
        batch_size=16,
        epochs=epochs,
        fine_tune_epochs=fine_tune_epochs,
        learning_rate=3e-3,
        fine_tune_learning_rate=2e-3,
    )
    result = train_run(config, run_dir=str(folder / "run"))
    m = result.metrics
    typer.echo(
        f"2/3 trained {result.run.path}: validation log loss {m['val_log_loss']:.4f}, accuracy {m['val_accuracy']:.2%}"
    )
    written = write_submission(result.run.path, data, folder / "submission.csv", force=True)
    scored = score_submission(written.path, data / "solution.csv")
    typer.echo(
        f"3/3 wrote {written.path}: test log loss {scored['log_loss']:.4f} (uniform guess "
        f"{m['uniform_log_loss']:.4f}), accuracy {scored['accuracy']:.2%}"
    )
    typer.echo("next: put the Kaggle files in ./data and run `dogbreeds train`, then `dogbreeds submit`")


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # SIGTERM (a stopped Kaggle session, `kill`) ends like Ctrl-C


def _show_messages() -> None:
    """The library's log: progress lines on stdout, warnings as `warning: ...` on stderr."""
    info = logging.StreamHandler(sys.stdout)
    info.addFilter(lambda record: record.levelno < logging.WARNING)
    warning = logging.StreamHandler(sys.stderr)
    warning.setLevel(logging.WARNING)
    warning.setFormatter(logging.Formatter("warning: %(message)s"))
    log.handlers[:] = [info, warning]
    log.setLevel(logging.INFO)
    log.propagate = False


def main() -> None:
    """Entry point: a DogbreedsError becomes one line on stderr and its exit status."""
    debug = "--debug" in sys.argv
    if debug:
        sys.argv.remove("--debug")
    signal.signal(signal.SIGTERM, _interrupt)
    _show_messages()
    try:
        app()
    except DogbreedsError as error:
        if debug:
            raise
        typer.echo(f"error: {error}", err=True)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
