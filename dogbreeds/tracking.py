"""Run tracking: TensorBoard logs in every run folder, and an MLflow run for `--track mlflow`.

TensorBoard. Keras' own callback writes RUN/tensorboard/train and RUN/tensorboard/validation
after every epoch: the loss, accuracy and learning rate that history.csv holds, and nothing
costly (no graph, histograms or profiling). `evaluate` writes RUN/tensorboard/evaluation: its
figures, and the confusion matrix, examples and reliability pictures it draws. A fold of a
k-fold run is a run of its own (RUN/fold-I/tensorboard/...), so its logs travel with its folder
when folds trained apart are put together. Each command adds event files beside the earlier
ones, so a resumed run goes on where its logs stopped; `tensorboard --logdir runs` compares runs.

MLflow (`pip install "dogbreeds[mlflow]"`). `train` makes an MLflow run in the store that
MLFLOW_TRACKING_URI names (else MLflow's default), in the experiment MLFLOW_EXPERIMENT_NAME
(else `dogbreeds`), and records it in RUN/tracking.json: the settings as parameters, every row
of history.csv as it is written, then metrics.json's figures (`final/...`) and the run's files.
`--resume` goes on logging to that run, a k-fold run's folds are its child runs, and `evaluate`
and `blend` add their figures and files to it. Tracking never stops a command: a store that
stops answering is said once, and the run folder, which holds everything, goes on.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from numbers import Real
from pathlib import Path
from urllib.parse import urlparse

import keras

from dogbreeds.errors import DogbreedsError, Interrupted, log
from dogbreeds.files import replace_folder, temporary_sibling
from dogbreeds.runs import Run

INSTALL = 'pip install "dogbreeds[mlflow]"'
EXPERIMENT = "dogbreeds"  # MLflow's experiment when MLFLOW_EXPERIMENT_NAME (or _ID) does not name one
NOT_LOGGED = {Run.last_file, Run.progress_file, Run.lock_file, Run.tracking_file}  # --resume's state, not results
EVALUATION = "evaluation"


@functools.cache
def _tensorboard_installed() -> bool:
    """TensorFlow writes summaries through the tensorboard package, which it no longer depends on
    (2.20 on); without it a run trains all the same, said once."""
    if importlib.util.find_spec("tensorboard") is not None:
        return True
    log.warning("no TensorBoard logs: the tensorboard package is not installed (pip install tensorboard)")
    return False


class EpochBoard(keras.callbacks.TensorBoard):
    """Keras' TensorBoard callback at its lowest cost: the epoch's scalars and the learning rate,
    flushed after every epoch, so an epoch the run folder holds is on disk for TensorBoard too
    (Keras' writers otherwise flush every two minutes and when training ends).

    Its batch hooks serve batch summaries, the graph and profiling, all off here; yet they run
    summary ops on every step's logs (written nowhere). Keras' own no-op hooks take their place.
    """

    on_train_batch_begin = keras.callbacks.Callback.on_train_batch_begin
    on_train_batch_end = keras.callbacks.Callback.on_train_batch_end
    on_test_batch_begin = keras.callbacks.Callback.on_test_batch_begin

    def __init__(self, folder: Path):
        super().__init__(str(folder), histogram_freq=0, write_graph=False, update_freq="epoch", profile_batch=0)

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        for writer in self._writers.values():  # Keras' own writers, made when first written
            writer.flush()


def board(run: Run) -> keras.callbacks.Callback:
    """The callback writing a run's epochs to RUN/tensorboard/train and /validation (one doing
    nothing without tensorboard)."""
    return EpochBoard(run.file(Run.board_dir)) if _tensorboard_installed() else keras.callbacks.Callback()


def write_evaluation_board(run: Run, figures: dict[str, float], pictures: list[Path]) -> Path | None:
    """`evaluate`'s figures and pictures as RUN/tensorboard/evaluation, in place of the last
    evaluation's (as its PNG files are): written whole beside it, then swapped in."""
    if not _tensorboard_installed():
        return None
    import tensorflow as tf

    place = run.file(Run.board_dir) / EVALUATION
    place.parent.mkdir(exist_ok=True)
    fresh = temporary_sibling(place)
    try:
        writer = tf.summary.create_file_writer(str(fresh))
        with writer.as_default():
            for name, value in figures.items():
                tf.summary.scalar(f"{EVALUATION}/{name}", value, step=0)
            for picture in pictures:
                pixels = tf.io.decode_png(picture.read_bytes())
                tf.summary.image(f"{EVALUATION}/{picture.stem}", pixels[tf.newaxis], step=0)
        writer.close()
        replace_folder(fresh, place)
    except BaseException:
        shutil.rmtree(fresh, ignore_errors=True)
        raise
    return place


# -- MLflow ------------------------------------------------------------------------------


def _mlflow():
    """MLflow's client class, imported only for a tracked run; else the line saying how to install it."""
    try:
        import mlflow  # noqa: F401  (first: a missing or blocked package fails here)
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise DogbreedsError(f"--track mlflow needs MLflow, which is not installed here: {INSTALL}") from None
    return MlflowClient


def _store_problem(uri: str, error: Exception) -> DogbreedsError:
    said = re.split(r"(?<=\.)\s", str(error).strip(), maxsplit=1)[0] or type(error).__name__  # its first sentence
    database = urlparse(uri).scheme in ("sqlite", "postgresql", "mysql", "mssql")
    if database and importlib.util.find_spec("sqlalchemy") is None:
        said = "mlflow-skinny has no database store (the full `pip install mlflow` has)"
    return DogbreedsError(
        f"--track mlflow: MLflow cannot open its tracking store {uri} ({said}); set MLFLOW_TRACKING_URI to a "
        "tracking server (http://HOST:5000) or to file:./mlruns with MLFLOW_ALLOW_FILE_STORE=true (docs/tracking.md)"
    )


def _absolute(uri: str) -> str:
    """A local store's URI made absolute: `evaluate` and `blend` log to it from any directory."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file") and not parsed.netloc:
        return Path(parsed.path or uri).resolve().as_uri()
    return uri


def _client(uri: str | None = None):
    """An MLflow client of the store `uri` (default: MLFLOW_TRACKING_URI, else MLflow's own
    default) and that store's absolute URI; the store is opened here, so a wrong one is one line."""
    MlflowClient = _mlflow()
    import mlflow

    uri = uri or _absolute(mlflow.get_tracking_uri())
    try:
        return MlflowClient(tracking_uri=uri), uri
    except Exception as error:  # MLflow raises its own, a driver's or an OSError for a store it cannot open
        raise _store_problem(uri, error) from None


def _experiment(client, uri: str) -> str:
    """The experiment the environment names (MLFLOW_EXPERIMENT_ID or _NAME), else `dogbreeds`, made if new."""
    if os.environ.get("MLFLOW_EXPERIMENT_ID"):
        return os.environ["MLFLOW_EXPERIMENT_ID"]
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT
    try:
        found = client.get_experiment_by_name(name)
        return found.experiment_id if found is not None else client.create_experiment(name)
    except Exception as error:
        raise _store_problem(uri, error) from None


# MLflow retries a failed request 7 times, each wait twice the last: a server that is not there
# takes four minutes to say so. At the start, one retry; during a run, MLflow's own patience.
QUICK = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}


@contextmanager
def _quickly():
    """MLflow's requests retried once, unless the environment says otherwise."""
    added = [name for name in QUICK if name not in os.environ]
    os.environ.update({name: QUICK[name] for name in added})
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


def check_tracking(track: str) -> None:
    """`--track`, before a run folder is made: MLflow installed and its store answering, or the one line."""
    if track == "mlflow":
        client, uri = _client()
        with _quickly():
            _experiment(client, uri)


def parameters(config: dict, prefix: str = "") -> dict[str, str]:
    """A run's config.json as MLflow parameters: nested settings as `augmentation.flip`, values as JSON
    writes them (strings as they are)."""
    found = {}
    for key, value in config.items():
        if isinstance(value, dict):
            found |= parameters(value, f"{prefix}{key}.")
        else:
            found[f"{prefix}{key}"] = value if isinstance(value, str) else json.dumps(value)
    return found


def _figures(values: dict, prefix: str = "", step: int = 0) -> list:
    """The numbers among `values` (yes/no as 1/0) as MLflow metrics at `step`; text and lists stay in the files."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [
        Metric(f"{prefix}{key}", float(value), now, step)
        for key, value in values.items()
        if isinstance(value, Real) and value == value  # NaN is not a figure MLflow keeps
    ]


@dataclass
class Tracker:
    """The MLflow run a run folder logs to. Every call is guarded: a store that fails is said once
    in a warning, and nothing more is sent; the command goes on."""

    client: object
    run_id: str
    working: bool = True

    def _send(self, what: str, call, *args, **kwargs) -> None:
        if not self.working:
            return
        try:
            call(*args, **kwargs)
        except Exception as error:  # a server down, a full disk, MLflow's own refusal: tracking never stops a run
            self.working = False
            said = (str(error).splitlines() or [type(error).__name__])[0][:200]
            log.warning(f"MLflow run {self.run_id}: {what} failed ({said}); no more is logged there this command")

    def _batch(self, what: str, metrics=(), params=()) -> None:
        metrics, params = list(metrics), list(params)
        for start in range(0, max(len(metrics), len(params)), 100):  # MLflow's limit on params per batch
            chunk = {"metrics": metrics[start : start + 100], "params": params[start : start + 100]}
            self._send(what, self.client.log_batch, self.run_id, **chunk)

    def log_parameters(self, config: dict) -> None:
        from mlflow.entities import Param

        self._batch("the settings", params=[Param(k, v) for k, v in parameters(config).items()])

    def log_epochs(self, rows: list[dict]) -> None:
        """Rows of history.csv: each number but the epoch, at the epoch as step."""
        found = [m for row in rows for m in _figures({k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"])]
        self._batch("the epoch", metrics=found)

    def log_figures(self, values: dict, prefix: str) -> None:
        self._batch("the figures", metrics=_figures(values, prefix))

    def log_files(self, paths: list[Path], artifact_path: str | None = None) -> None:
        """Files and folders (a folder keeps its name) as artifacts, under `artifact_path` if given."""
        for path in paths:
            if path.is_dir():
                inside = "/".join(filter(None, [artifact_path, path.name]))
                self._send(f"the folder {path.name}", self.client.log_artifacts, self.run_id, str(path), inside)
            else:
                self._send(f"the file {path.name}", self.client.log_artifact, self.run_id, str(path), artifact_path)

    def log_run_files(self, run: Run) -> None:
        """The run's results: its files (a k-fold run's folds are their own MLflow runs) and its TensorBoard logs,
        without what only --resume needs."""
        files = [p for p in sorted(run.path.iterdir()) if p.is_file() and not p.name.startswith(".")]
        board_dir = run.file(Run.board_dir)
        self.log_files([p for p in files if p.name not in NOT_LOGGED] + ([board_dir] if board_dir.is_dir() else []))

    def end(self, status: str) -> None:
        self._send("ending the run", self.client.set_terminated, self.run_id, status)


def _recorded(run: Run) -> dict | None:
    """What tracking.json says of the run's MLflow run, or None when it has none."""
    if not run.file(Run.tracking_file).is_file():
        return None
    recorded = run.read_json(Run.tracking_file).get("mlflow")
    if not isinstance(recorded, dict) or not all(isinstance(recorded.get(k), str) for k in ("uri", "run_id")):
        raise DogbreedsError(
            f"{run.file(Run.tracking_file)} is damaged (no MLflow store and run id); remove it to track a new "
            "MLflow run"
        )
    return recorded


def start(run: Run, track: str, parent: Tracker | None = None) -> Tracker | None:
    """The MLflow run of a run folder `train` writes: the one its tracking.json records (a resumed
    run), or a new one (a child of `parent`: a fold), its settings logged as parameters and its id
    recorded. None when the run is not tracked."""
    if track != "mlflow":
        return None
    recorded = _recorded(run)
    if recorded is not None:
        client, _ = _client(recorded["uri"])
        tracker = Tracker(client, recorded["run_id"])
        tracker._send("reopening the run", client.update_run, tracker.run_id, "RUNNING")
        return tracker
    client, uri = _client()
    tags = {"dogbreeds.run": str(run.path.resolve()), "mlflow.source.name": "dogbreeds train"}
    name = run.name
    if parent is not None:
        tags["mlflow.parentRunId"] = parent.run_id
        name = f"{run.path.parent.name}/{run.name}"
    experiment = _experiment(client, uri)
    try:
        made = client.create_run(experiment, tags=tags, run_name=name)
    except Exception as error:
        raise _store_problem(uri, error) from None
    tracker = Tracker(client, made.info.run_id)
    record = {"uri": uri, "experiment_id": experiment, "run_id": tracker.run_id}
    run.write(Run.tracking_file, json.dumps({"mlflow": record}, indent=1))
    tracker.log_parameters(run.read_json(Run.config_file))
    return tracker


@contextmanager
def tracked(run: Run, track: str, parent: Tracker | None = None):
    """The run's MLflow run while `train` trains it (None when untracked). When training ends it
    gets metrics.json's figures and the run's files, and ends FINISHED; or KILLED (Ctrl-C, SIGTERM)
    or FAILED with the command."""
    tracker = start(run, track, parent)
    if tracker is None:
        yield None
        return
    try:
        yield tracker
    except (KeyboardInterrupt, Interrupted):
        tracker.end("KILLED")
        raise
    except BaseException:
        tracker.end("FAILED")
        raise
    tracker.log_figures(run.metrics(), "final/")
    tracker.log_run_files(run)
    tracker.end("FINISHED")


def of(run: Run) -> Tracker | None:
    """The MLflow run a trained run logs to, for `evaluate` and `blend`: None when it is not
    tracked, or (said) when MLflow or its store is not there; their own files are written all the same."""
    recorded = _recorded(run)
    if recorded is None:
        return None
    try:
        client, _ = _client(recorded["uri"])
    except DogbreedsError as error:
        log.warning(f"run {run.path} is tracked in MLflow run {recorded['run_id']}, not logged there: {error}")
        return None
    return Tracker(client, recorded["run_id"])


def record_evaluation(run: Run, figures: dict[str, float], pictures: list[Path], files: list[Path]) -> None:
    """`evaluate`'s results beyond its report: RUN/tensorboard/evaluation, and in the run's MLflow
    run (if tracked) its figures as `evaluation/...` and its files."""
    write_evaluation_board(run, figures, pictures)
    tracker = of(run)
    if tracker is not None:
        tracker.log_figures(figures, f"{EVALUATION}/")
        tracker.log_files(files, EVALUATION)


def record_blend(runs: list[Run], weights: list[float], figures: dict[str, float], record: Path) -> None:
    """A blend's figures (`blend/...`, with the run's weight in it) and its record, in the MLflow run
    of each tracked run it mixed: a run's page shows the blends it went into."""
    shares: dict[str, float] = {}
    trackers: dict[str, Tracker] = {}
    for run, weight in zip(runs, weights):
        tracker = of(run)
        if tracker is not None:  # a run given twice is one MLflow run, its weights added
            trackers.setdefault(tracker.run_id, tracker)
            shares[tracker.run_id] = shares.get(tracker.run_id, 0.0) + weight
    for run_id, tracker in trackers.items():
        tracker.log_figures(figures | {"weight": shares[run_id]}, "blend/")
        tracker.log_files([record], "blends")
