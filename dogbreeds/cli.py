"""The `dogbreeds` command: options in, the library called, each result's own text out.

The options of `train` and `cifar` are not written here: they are read from the fields of
`TrainConfig` and `CifarConfig` (`dogbreeds.config.option`). TensorFlow is imported inside the
commands that need it, so `--help`, `runs` and `score` answer at once.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import os
import re
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Literal, Optional

import typer
from typer.core import TyperGroup

from dogbreeds.config import (
    PRECISIONS,
    STRATEGIES,
    CifarConfig,
    TrainConfig,
    flag_of,
    from_options,
    is_flag,
    option_fields,
)
from dogbreeds.errors import DogbreedsError, log

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # its ERROR lines on a CPU (no CUDA, no AVX-512) are not errors

LIGHT_COMMANDS = {"runs", "score"}  # JSON and CSV files only: answer at once, without TensorFlow
DEBUG = "dogbreeds.debug"  # the context's meta key of --debug
STARTED = "dogbreeds.started"  # when the command started: --time-budget counts from there

# TensorFlow's C++ side prints info lines before its log level is read; nothing else hides them.
_IMPORT_NOISE = re.compile(r"^(WARNING: All log messages before absl::InitializeLog|I\d{4} \d\d:\d\d:\d\d)")


class _Commands(TyperGroup):
    """Every command's DogbreedsError becomes one line on stderr and its exit status."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except DogbreedsError as error:
            if ctx.meta.get(DEBUG):
                raise
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(error.exit_code) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None


app = typer.Typer(
    cls=_Commands,
    help="Kaggle Dog Breed Identification: `dogbreeds train`, `dogbreeds evaluate`, then `dogbreeds submit`.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


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


@app.callback()
def _before_any_command(
    ctx: typer.Context,
    debug: bool = typer.Option(False, "--debug", help="Show an error's traceback instead of one line."),
) -> None:
    ctx.meta[DEBUG], ctx.meta[STARTED] = debug, time.monotonic()
    _show_messages()
    if ctx.invoked_subcommand not in LIGHT_COMMANDS:
        _import_tensorflow_quietly()


def with_config_options(config_class):
    """The command also takes every option declared in `config_class`, passed on as **options."""

    def decorate(function):
        own = [p for p in inspect.signature(function).parameters.values() if p.kind != p.VAR_KEYWORD]
        declared = []
        for f, kind, _ in option_fields(config_class):
            spec = f.metadata["option"]
            name = flag_of(f)
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            if spec.choices:
                kind = Literal[spec.choices]
            decls = [f"{name}/--no-{name[2:]}"] if is_flag(kind) else [name]
            parameter = typer.Option(default, *decls, help=spec.help)
            keyword = inspect.Parameter.KEYWORD_ONLY
            declared.append(inspect.Parameter(f.name, keyword, default=parameter, annotation=kind))
        parameters = declared + [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own]
        function.__signature__ = inspect.Signature(parameters)
        function.__annotations__ = {p.name: p.annotation for p in parameters}
        return function

    return decorate


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
    "auto", help="tf.distribute strategy. auto: a TPU if there is one, all GPUs if several, else one device."
)


@app.command()
@with_config_options(TrainConfig)
def train(
    run_dir: Optional[Path] = typer.Option(None, help="Where the run goes. Default: runs/<backbone>-<timestamp>."),
    resume: Optional[str] = typer.Option(
        None,
        "--resume",
        help="Continue this stopped run from its last completed epoch (its own settings; other options but "
        "--time-budget are ignored).",
    ),
    time_budget: Optional[str] = typer.Option(
        None,
        "--time-budget",
        help="Stop before an epoch that would end after this much time (8h30m, 45m, 90s); resumable. Default: none.",
    ),
    ctx: typer.Context = None,
    **options,
):
    """Fine-tune a pretrained backbone on labels.csv + train/ and save the run."""
    from dogbreeds import training

    seconds = training.Budget.parse(time_budget) if time_budget else None
    budget = training.Budget(seconds, started=ctx.meta.get(STARTED))
    if resume is not None:
        typer.echo(training.resume(resume, budget).text())
        return
    config = from_options(TrainConfig, options)
    typer.echo(training.train(config, run_dir=str(run_dir) if run_dir else None, budget=budget).text())


@app.command()
def submit(
    run: Optional[str] = RunOption,
    data: Optional[Path] = RunDataOption,
    out: Optional[Path] = typer.Option(None, "--out", help="CSV to write. Default: submissions/<run name>.csv."),
    tta: bool = TTAOption,
    force: bool = typer.Option(False, "--force", help="Overwrite an existing --out file."),
    batch_size: Optional[int] = BatchSizeOption,
    calibrate: bool = CalibrateOption,
    strategy: Literal[STRATEGIES] = StrategyOption,
):
    """Predict every test image and write a submission CSV in the sample_submission format."""
    from dogbreeds.submission import submit as write_submission

    result = write_submission(
        run, data, out, tta=tta, force=force, batch_size=batch_size, calibrate=calibrate, strategy=strategy
    )
    typer.echo(result.text())


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
    typer.echo(result.text(as_json))


@app.command()
def export(
    run: Optional[str] = RunOption,
    format: str = typer.Option(..., "--format", help="savedmodel, tflite or keras."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder to write. Default: RUN/export-FORMAT."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out folder."),
):
    """The run as one model: uint8 images at its size in, probabilities out, classes.json beside it."""
    from dogbreeds.exporting import export as export_run

    typer.echo(export_run(run, format, out, force=force).text())


@app.command()
def blend(
    runs: list[str] = typer.Argument(..., help="Two or more run folders (or names under runs/)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Competition folder. Default: the first run's."),
    out: Optional[Path] = typer.Option(None, "--out", help="CSV to write. Default: submissions/blend-<time>.csv."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing --out file."),
    batch_size: Optional[int] = BatchSizeOption,
):
    """Average runs with weights fitted on their held-out images, calibrate, and write the submission."""
    from dogbreeds.blending import blend as blend_runs

    typer.echo(blend_runs(runs, data, out, force=force, batch_size=batch_size).text())


@app.command()
def runs(
    folder: Optional[Path] = typer.Option(
        None, "--dir", help="Folder holding the runs. Default: runs/ (on a Kaggle kernel, /kaggle/working/runs)."
    ),
):
    """List the runs, newest first, with their settings and validation scores."""
    from dogbreeds.listing import list_runs

    typer.echo(list_runs(folder).text())


@app.command()
def score(
    submission_csv: Path = typer.Argument(..., help="A submission CSV."),
    solution: Path = typer.Option(..., "--solution", help="Answer key CSV with id,breed."),
):
    """Score a submission against a local answer key, as Kaggle would (log loss)."""
    from dogbreeds.scoring import score as score_submission

    typer.echo(score_submission(submission_csv, solution).text())


@app.command()
def bench(
    data: Optional[Path] = typer.Option(
        None, "--data", help="Competition folder to read. Default: generated 500x375 JPEGs (a photo's decoding cost)."
    ),
    image_size: int = typer.Option(331, help="Square input size in pixels."),
    backbone: str = typer.Option("inception_resnet_v2", help="Backbone of the forward and fine-tuning figures."),
    weights: str = typer.Option("none", help="none, imagenet or a .h5 file: speed does not depend on them."),
    batch_size: int = typer.Option(32, help="Images per batch."),
    images: int = typer.Option(512, help="Training images the loaders read."),
    model_images: int = typer.Option(128, help="Images the model sees in the forward, submit and fine-tuning figures."),
    tta: bool = TTAOption,
    precision: Literal[PRECISIONS] = typer.Option("auto", help="As for train: auto picks by device."),
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
        precision=precision,
    )
    if json_path != "-":
        typer.echo(result.text())
    if json_path:
        write_json(result, json_path)


@app.command()
@with_config_options(CifarConfig)
def cifar(
    model: str = typer.Option(
        "cnn", help="mlp, seed-cnn (the write-ups' networks), cnn (airbench94's recipe), resnet9, transfer, or all."
    ),
    run_dir: Optional[Path] = typer.Option(None, help="Default: runs/<dataset>-<model>-<date>."),
    **options,
):
    """CIFAR-10/100 experiments on the same engine: a perceptron, CNNs, transfer learning; `all` ends with a table."""
    from dogbreeds.cifar import parse_models, run_cifar

    models = parse_models(model)
    config = from_options(CifarConfig, {**options, "model": models[0]})
    typer.echo(run_cifar(config, models, str(run_dir) if run_dir else None).text())


@app.command()
def backbones():
    """List the registered backbones: parameters, native input size, what their weights saw."""
    from dogbreeds.models import BACKBONES

    typer.echo(f"{'backbone':22s} {'parameters':>12s} {'native':>7s}  pretrained on")
    for spec in BACKBONES.values():
        typer.echo(f"{spec.name:22s} {spec.parameters / 1e6:11.1f}M {spec.native_size:5d}px  {spec.pretraining}")


@app.command()
def weights(
    names: list[str] = typer.Argument(..., help="Backbones (see `dogbreeds backbones`)."),
    image_size: Optional[int] = typer.Option(None, help="Input size (MobileNetV2: a file per size). Default: native."),
    download: Optional[Path] = typer.Option(
        None, "--download", help="Download each file without the top into this folder, to attach as a Kaggle dataset."
    ),
):
    """The ImageNet weights files `--weights imagenet` looks for offline, with their URLs."""
    from dogbreeds.models import download_imagenet, get_backbone

    for name in names:
        spec = get_backbone(name)
        size = image_size or spec.native_size
        urls = spec.imagenet_urls(size)
        typer.echo(f"{name} at {size} px:" + ("" if urls else " no ImageNet weights"))
        for url, which in zip(urls, ("without the top (what is loaded)", "with the top (also found)")):
            typer.echo(f"  {url.rsplit('/', 1)[-1]}  {which}\n    {url}")
        if download is not None:
            typer.echo(f"  downloaded {download_imagenet(name, size, download)}")


@app.command()
def demo(
    folder: Path = typer.Option(Path("demo"), "--dir", help="Where the generated competition and run go."),
    backbone: str = typer.Option("tiny_cnn", help="Backbone to train from scratch (no download)."),
    image_size: int = typer.Option(64, help="Image size."),
    epochs: int = typer.Option(2, help="Frozen-phase epochs."),
    fine_tune_epochs: int = typer.Option(8, help="Fine-tuning epochs."),
):
    """Build a small generated competition, then train and submit on it, offline, in minutes."""
    from dogbreeds.demo import DemoSettings, run_demo

    run_demo(folder, DemoSettings(backbone, image_size, epochs, fine_tune_epochs), say=typer.echo)


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # SIGTERM (a stopped Kaggle session, `kill`) ends like Ctrl-C


def main() -> None:
    """Entry point of the console script and of `python -m dogbreeds`."""
    signal.signal(signal.SIGTERM, _interrupt)
    app()
