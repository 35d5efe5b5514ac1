"""The `dogbreeds` command: options in, the library called, each result's own text out.

The options are not written here: they are read from the fields of `TrainConfig` (train),
`PredictOptions` (the commands that use trained runs: one name, meaning and help per flag
everywhere) and `CifarConfig` (`dogbreeds.options.option`). TensorFlow is imported inside the
commands that need it, so `--help`, `runs` and `score` answer at once.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Literal, Optional

import typer
from typer.core import TyperGroup

from dogbreeds.cifar.config import CifarConfig, model_names
from dogbreeds.config import IMAGE_SIZE_HELP, PredictOptions, TrainConfig
from dogbreeds.errors import DogbreedsError, from_environment, log, native_stderr
from dogbreeds.options import flag_of, from_options, is_flag, option_fields
from dogbreeds.settings import PRECISIONS

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # its ERROR lines on a CPU (no CUDA, no AVX-512) are not errors

LIGHT_COMMANDS = {"runs", "score", "kaggle-submit"}  # files and Kaggle: answer at once, without TensorFlow
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
        except OSError as error:
            found = from_environment(error)
            if found is None or ctx.meta.get(DEBUG):
                raise
            typer.echo(f"error: {found}", err=True)
            raise typer.Exit(found.exit_code) from None


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
    with native_stderr() as lines:
        import tensorflow  # noqa: F401
    for line in lines:
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


def _keep_stdout_for_json() -> None:
    """--json: progress lines (which weights were loaded, ...) go to stderr, so stdout parses."""
    for handler in log.handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stdout:
            handler.setStream(sys.stderr)


@app.callback()
def _before_any_command(
    ctx: typer.Context,
    debug: bool = typer.Option(False, "--debug", help="Show an error's traceback instead of one line."),
) -> None:
    ctx.meta[DEBUG], ctx.meta[STARTED] = debug, time.monotonic()
    _show_messages()
    if ctx.invoked_subcommand not in LIGHT_COMMANDS:
        _import_tensorflow_quietly()


def with_config_options(config_class, *only: str):
    """The command also takes the options declared in `config_class` (all, or those named in
    `only`, in that order), passed on as **options."""

    def decorate(function):
        own = [p for p in inspect.signature(function).parameters.values() if p.kind != p.VAR_KEYWORD]
        declared = []
        fields = {f.name: (f, kind) for f, kind, _ in option_fields(config_class)}
        for f, kind in [fields[name] for name in only] if only else fields.values():
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


@app.command()
@with_config_options(TrainConfig)
def train(
    run_dir: Optional[Path] = typer.Option(None, help="Where the run goes. Default: runs/<backbone>-<timestamp>."),
    resume: Optional[str] = typer.Option(
        None,
        "--resume",
        help="Continue this stopped run from its last completed epoch (its own settings; other options but "
        "--time-budget and --data, where its competition folder is now, are ignored).",
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
    config = from_options(TrainConfig, options)
    if resume is not None:
        typer.echo(training.resume(resume, budget, data=options.get("data"), cluster=config.cluster).text())
        return
    typer.echo(training.train(config, run_dir=str(run_dir) if run_dir else None, budget=budget).text())


def _send_to_kaggle(csv: Path, message: str, o: PredictOptions) -> None:
    """A written submission sent to Kaggle, then its public score: `submit --kaggle`, `kaggle-submit`."""
    from dogbreeds import kaggle_api

    sent = kaggle_api.send(csv, message, o.competition)
    typer.echo(sent.text())
    if o.wait > 0:
        typer.echo(kaggle_api.wait_for_score(sent, o.wait, o.poll).text())


@app.command()
@with_config_options(
    PredictOptions, "run", "data", "out", "force", "tta", "calibrate", "batch_size", "strategy", "kaggle",
    "competition", "wait", "poll",
)  # fmt: skip
def submit(**options):
    """Predict every test image and write a submission CSV in the sample_submission format."""
    from dogbreeds.submission import submit as write_submission

    o = PredictOptions(**options)
    result = write_submission(
        o.run, o.data, o.out, tta=o.tta, force=o.force, batch_size=o.batch_size, calibrate=o.calibrate,
        strategy=o.strategy,
    )  # fmt: skip
    typer.echo(result.text())
    if o.kaggle is not None:  # the CSV is written whatever happens next
        _send_to_kaggle(result.also or result.path, o.kaggle, o)


@app.command()
@with_config_options(PredictOptions, "competition", "wait", "poll")
def kaggle_submit(
    csv: Path = typer.Argument(..., help="A submission CSV (submit's or blend's)."),
    message: str = typer.Option(..., "--message", "-m", help="The submission's description on Kaggle."),
    **options,
):
    """Send a submission CSV to the Kaggle competition, then print its public score (the kaggle extra)."""
    _send_to_kaggle(csv, message, PredictOptions(**options))


@app.command()
@with_config_options(PredictOptions, "run", "data", "tta", "batch_size")
def evaluate(**options):
    """Score the run on the images it held out, fit its calibration, and write tables and pictures."""
    from dogbreeds.evaluation import evaluate as evaluate_run
    from dogbreeds.evaluation import write_evaluation

    o = PredictOptions(**options)
    typer.echo(write_evaluation(evaluate_run(o.run, o.data, tta=o.tta, batch_size=o.batch_size)).text())


@app.command()
@with_config_options(PredictOptions, "run", "top", "json", "tta", "calibrate", "batch_size")
def predict(
    images: list[Path] = typer.Argument(..., help="JPEG or PNG files, or folders of them (searched with sub-folders)."),
    **options,
):
    """The most likely breeds of each photo, with probabilities."""
    from dogbreeds.prediction import predict_images

    o = PredictOptions(**options)
    if o.json:
        _keep_stdout_for_json()
    result = predict_images(images, o.run, top=o.top, tta=o.tta, calibrate=o.calibrate, batch_size=o.batch_size)
    typer.echo(result.calibration_note, err=o.json)  # stdout stays pure JSON lines
    typer.echo(result.text(o.json))


@app.command()
@with_config_options(PredictOptions, "run", "out", "force", "top", "tta", "calibrate")
def explain(
    images: list[Path] = typer.Argument(..., help="JPEG or PNG files, or folders of them (searched with sub-folders)."),
    breed: Optional[str] = typer.Option(
        None, "--breed", help="Map this breed instead of the predicted one (the run's classes.json names them)."
    ),
    **options,
):
    """Where the network looks: each photo beside its Grad-CAM heat map of the predicted breed,
    the top breeds above, in OUT/<photo name>-gradcam.png."""
    from dogbreeds.explain import explain_images

    o = PredictOptions(**options)
    result = explain_images(
        images, o.run, breed=breed, out=o.out, force=o.force, top=o.top, tta=o.tta, calibrate=o.calibrate
    )
    typer.echo(result.text())


@app.command()
@with_config_options(PredictOptions, "run", "out", "force")
def export(
    format: str = typer.Option(..., "--format", help="savedmodel, tflite or keras."),
    **options,
):
    """The run as one model: uint8 images at its size in, probabilities out, classes.json beside it."""
    from dogbreeds.exporting import export as export_run

    o = PredictOptions(**options)
    typer.echo(export_run(o.run, format, o.out, force=o.force).text())


@app.command()
@with_config_options(PredictOptions, "data", "out", "force", "batch_size")
def blend(
    runs: list[str] = typer.Argument(..., help="Two or more run folders (or names under runs/)."),
    **options,
):
    """Average runs with weights fitted on their held-out images, calibrate, and write the submission."""
    from dogbreeds.blending import blend as blend_runs

    o = PredictOptions(**options)
    typer.echo(blend_runs(runs, o.data, o.out, force=o.force, batch_size=o.batch_size).text())


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
@with_config_options(PredictOptions, "tta", "json")
def bench(
    data: Optional[Path] = typer.Option(
        None, "--data", help="Competition folder to read. Default: generated 500x375 JPEGs (a photo's decoding cost)."
    ),
    image_size: Optional[int] = typer.Option(None, help=IMAGE_SIZE_HELP),
    backbone: str = typer.Option("inception_resnet_v2", help="Backbone of the forward and fine-tuning figures."),
    weights: str = typer.Option("none", help="none, imagenet or a .h5 file: speed does not depend on them."),
    batch_size: int = typer.Option(32, help="Images per batch."),
    images: int = typer.Option(512, help="Training images the loaders read."),
    model_images: int = typer.Option(128, help="Images the model sees in the forward, submit and fine-tuning figures."),
    precision: Literal[PRECISIONS] = typer.Option("auto", help="As for train: auto picks by device."),
    accumulate: int = typer.Option(
        1, help="Also time fine-tuning at batches of --batch-size / N, N an update, with both rows' peak memory."
    ),
    **options,
):
    """Images/s of the legacy and default loaders, decoding, the forward pass and submit, side by side."""
    from dogbreeds.bench import bench as run_bench

    o = PredictOptions(**options)
    if o.json:
        _keep_stdout_for_json()
    result = run_bench(
        data,
        image_size=image_size,
        backbone=backbone,
        weights=weights,
        batch_size=batch_size,
        images=images,
        model_images=model_images,
        tta=o.tta,
        precision=precision,
        accumulate=accumulate,
    )
    typer.echo(json.dumps(result.to_dict(), indent=2) if o.json else result.text())


@app.command()
@with_config_options(CifarConfig)
def cifar(
    model: str = typer.Option(
        "airbench",
        help="mlp, seed-cnn (the write-ups' networks), airbench (airbench94's recipe; also: cnn), resnet9, transfer, "
        "a comma-separated list, or all.",
    ),
    run_dir: Optional[Path] = typer.Option(None, help="Default: runs/<dataset>-<model>-<date>."),
    **options,
):
    """CIFAR-10/100 experiments on the same engine: a perceptron, CNNs, transfer learning; `all` ends with a table."""
    from dogbreeds.cifar.experiment import run_cifar

    models = model_names(model)
    config = from_options(CifarConfig, {**options, "model": models[0]})
    typer.echo(run_cifar(config, models, str(run_dir) if run_dir else None).text())


@app.command()
def backbones():
    """List the registered backbones: parameters, native and default input size, what their weights saw,
    and how their output becomes one vector (GAP of a CNN's map; a transformer's tokens pooled)."""
    from dogbreeds.models import BACKBONES

    typer.echo(f"{'backbone':32s} {'parameters':>10s} {'native':>7s} {'size':>7s}  {'pooling':8s}  pretrained on")
    for spec in BACKBONES.values():
        typer.echo(
            f"{spec.name:32s} {spec.parameters / 1e6:9.1f}M {spec.native_size:5d}px {spec.size:5d}px  "
            f"{spec.pooling:8s}  {spec.pretraining}"
        )


@app.command()
def weights(
    names: list[str] = typer.Argument(..., help="Backbones (see `dogbreeds backbones`)."),
    image_size: Optional[int] = typer.Option(None, help="Input size (MobileNetV2: a file per size). Default: native."),
    download: Optional[Path] = typer.Option(
        None, "--download", help="Download each backbone's weights into this folder, to attach as a Kaggle dataset."
    ),
):
    """Where `--weights imagenet` finds each backbone's weights offline: keras.applications' files
    with their URLs, or the Kaggle Model of a KerasHub preset and the folders it looks in."""
    from dogbreeds import hub
    from dogbreeds.models import download_imagenet, get_backbone
    from dogbreeds.places import kaggle_root

    for name in names:
        spec = get_backbone(name)
        if spec.preset:
            preset = spec.preset
            found = hub.places(preset)
            typer.echo(
                f"{name}: the KerasHub preset of Kaggle Model {preset.handle} (attach it: Add Input > Models)\n"
                f"  https://www.kaggle.com/models/{preset.handle}\n"
                f"  looked in {hub.kagglehub_cache() / 'models' / preset.handle}"
                + (f" and under {kaggle_root() / 'input'}" if kaggle_root() else "")
                + (f": found {found[0]}" if found else ": not there")
            )
            if download is not None:
                typer.echo(f"  downloaded {hub.download(preset, download)}")
            continue
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
    image_size: Optional[int] = typer.Option(None, help=IMAGE_SIZE_HELP),
    epochs: int = typer.Option(2, help="Frozen-phase epochs."),
    fine_tune_epochs: int = typer.Option(8, help="Fine-tuning epochs."),
):
    """Build a small generated competition, then train and submit on it, offline, in minutes."""
    from dogbreeds.demo import DemoSettings, run_demo

    run_demo(folder, DemoSettings(backbone, image_size, epochs, fine_tune_epochs), say=typer.echo)


GRACE_SECONDS = 10.0  # after SIGTERM, the most a command takes to end (a `docker stop` waits 10 s, then kills)


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # SIGTERM (a stopped Kaggle session, `kill`) ends like Ctrl-C


def end_on_termination(grace: float = GRACE_SECONDS) -> None:
    """SIGTERM ends a command like Ctrl-C, within `grace` seconds even where Python does not get
    control back (one long TensorFlow call, as the first steps of a compiled network): a thread
    woken by the signal itself ends the process then. Every file is written whole or not at all,
    and the next command sweeps what a save cut short left, so ending anywhere is safe."""
    signal.signal(signal.SIGTERM, _interrupt)
    woken, wake = os.pipe()
    os.set_blocking(wake, False)
    signal.set_wakeup_fd(wake)  # the signal's number is written here as it arrives, not when Python runs

    def watch() -> None:
        while os.read(woken, 1)[0] != signal.SIGTERM:
            pass
        time.sleep(grace)
        os.write(2, b"interrupted (SIGTERM); what was saved is whole: run the command again, or train --resume\n")
        os._exit(130)

    threading.Thread(target=watch, name="dogbreeds-sigterm", daemon=True).start()


def main() -> None:
    """Entry point of the console script and of `python -m dogbreeds`."""
    end_on_termination()
    app()
