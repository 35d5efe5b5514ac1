"""A run is a folder: config, classes, model, epoch log, plot and metrics.

Everything a later command needs (submit, evaluate, predict, blend, export) is read from here,
so a run can be copied to another machine, or out of a Kaggle kernel, and used as it is. A
k-fold run is a folder of folds (`fold-1` ... `fold-K`, each a run); the run folder is the one
place that knows it: its `members` are the models that predict, its `held_out` the predictions
of the labelled images it did not train on.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from dogbreeds.errors import DogbreedsError, damaged, log
from dogbreeds.files import probability_table, sweep, table_csv, temporary_sibling, write_atomic
from dogbreeds.places import runs_dir


@dataclass(frozen=True)
class Run:
    path: Path

    config_file = "config.json"
    classes_file = "classes.json"
    model_file = "model.keras"  # the best model by validation loss
    last_file = "last.keras"  # model and optimizer after the last completed epoch, for --resume
    progress_file = "progress.json"
    skipped_file = "skipped_images.csv"
    log_file = "history.csv"
    plot_file = "history.png"
    metrics_file = "metrics.json"
    calibration_file = "calibration.json"
    evaluation_file = "evaluation.json"
    evaluation_report = "evaluation.md"
    confusion_plot = "confusion.png"
    examples_plot = "examples.png"
    reliability_plot = "reliability.png"
    val_predictions_file = "val_predictions.csv"  # raw probabilities of the held-out images, flip TTA on
    test_predictions_file = "test_predictions.csv"  # raw test probabilities from `submit`, flip TTA on
    oof_file = "oof.csv"  # a k-fold run: every labelled image, predicted by the fold that held it out
    fold_file = "fold.json"  # a fold's place: folds, fold, seed and labels it was split from
    lock_file = "dogbreeds.lock"  # held by the command writing the run (train, --resume, evaluate, export)
    board_dir = "tensorboard"  # TensorBoard's event files: train/ and validation/ (epochs), evaluation/ (evaluate's)
    tracking_file = "tracking.json"  # --track mlflow: the MLflow run it logs to, written by train

    @property
    def name(self) -> str:
        return self.path.name

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def folds(self) -> int:
        """K for a k-fold run (its folds are sub-runs `fold-1` ... `fold-K`); 1 for a single run or a fold."""
        try:
            config = json.loads(self.file(self.config_file).read_text())
            return 1 if config.get("fold") is not None else int(config.get("folds", 1))
        except (OSError, ValueError, TypeError, AttributeError):
            return 1

    def fold(self, i: int) -> "Run":
        return Run(self.path / f"fold-{i}")

    @property
    def members(self) -> list["Run"]:
        """The runs whose models predict for this one: its folds, or itself."""
        return [self.fold(i) for i in range(1, self.folds + 1)] if self.folds > 1 else [self]

    @property
    def held_out_file(self) -> str:
        """Its predictions of the labelled images it did not train on: every one, out of fold, or the --val-split."""
        return self.oof_file if self.folds > 1 else self.val_predictions_file

    def held_out(self):
        """Those predictions (id, then the classes), as saved; a run too old to have them is told to train again."""
        import pandas as pd

        if not self.file(self.held_out_file).is_file():
            raise DogbreedsError(
                f"run {self.path} has no {self.held_out_file} (trained by an older dogbreeds, which did not keep it); "
                "train it again"
            )
        table = self.predictions(self.held_out_file)
        if self.folds > 1:  # out of fold: each image its fold held out, once
            held = pd.concat([fold.predictions(self.val_predictions_file)["id"] for fold in self.members])
            if sorted(held) != sorted(table["id"]):
                raise damaged(
                    self.file(self.oof_file), f"it holds {len(table)} images where its folds held out {len(held)}"
                )
        return table

    @property
    def trained_file(self) -> str:
        """What a finished run has: its best model, or (k-fold) its out-of-fold predictions."""
        return self.oof_file if self.folds > 1 else self.model_file

    @classmethod
    def create(
        cls, config_json: str, classes: list[str], run_dir: str | Path | None = None, *, name: str = "run", again=False
    ):
        """A new run folder holding its configuration and classes (default: runs/<name>-<time>).
        `again`: the same run started over, its model replaced (one stopped before it saved an
        epoch to resume from)."""
        if run_dir is None:
            run_dir = runs_dir() / f"{name}-{datetime.now():%Y%m%d-%H%M%S}"
        run = cls(Path(run_dir))
        above = next((p for p in [run.path, *run.path.parents] if p.exists()), None)
        if above is not None and not above.is_dir():
            raise DogbreedsError(f"--run-dir {run.path}: {above} is a file, not a folder; choose another --run-dir")
        if run.file(cls.model_file).exists() and not again:
            raise DogbreedsError(f"{run.path} already holds a trained model; choose another --run-dir")
        recorded = run.file(cls.config_file)
        if recorded.is_file() and recorded.read_text() != config_json:  # the same command again may go on
            raise DogbreedsError(
                f"{run.path} holds another run (its config.json has other settings); choose another --run-dir, "
                f"or continue that run with `dogbreeds train --resume {run.path}`"
            )
        run.path.mkdir(parents=True, exist_ok=True)
        write_atomic(run.file(cls.config_file), config_json)
        write_atomic(run.file(cls.classes_file), json.dumps(classes, indent=1))
        return run

    @classmethod
    def open(cls, run: str | Path | None = None, need_model: bool = True) -> "Run":
        """A run by folder, by name under runs/, or (None) the newest run with a model."""
        if run is None:
            return cls.latest()
        path = Path(run)
        if not path.is_dir() and (runs_dir() / run).is_dir():
            path = runs_dir() / run
        if not path.is_dir():
            raise DogbreedsError(f"run {run} not found: pass a run folder or a name under {runs_dir()}/")
        opened = cls(path)
        for needed in (cls.config_file, cls.classes_file) + ((opened.trained_file,) if need_model else ()):
            if not opened.file(needed).is_file():
                if needed == cls.oof_file:
                    raise DogbreedsError(
                        f"run {path} has no {needed}: not all of its {opened.folds} folds are trained; train the "
                        f"missing ones (--fold I), put them in {path} and run `dogbreeds train --resume {path}`"
                    )
                raise DogbreedsError(
                    f"run {path} has no {needed}: its training did not finish; train again or pick another run"
                )
        return opened

    @classmethod
    def latest(cls) -> "Run":
        finished = [p / cls(p).trained_file for p in runs_dir().glob("*") if (p / cls(p).trained_file).is_file()]
        candidates = [f.parent for f in sorted(finished, key=lambda f: f.stat().st_mtime)]
        if not candidates:
            raise DogbreedsError(f"no trained run in {runs_dir()}/: run `dogbreeds train` first, or pass --run")
        return cls(candidates[-1])

    def read_json(self, name: str, kind: type = dict):
        """A JSON file of the run, checked to hold a `kind` (dict or list): a damaged one is named."""
        path = self.file(name)
        try:
            value = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as error:
            raise damaged(path, f"not JSON: {error}") from None
        if not isinstance(value, kind):
            raise damaged(path, f"a JSON {type(value).__name__} where a {kind.__name__} belongs")
        return value

    def classes(self) -> list[str]:
        classes = self.read_json(self.classes_file, list)
        if len(classes) < 2 or len(set(classes)) != len(classes) or not all(isinstance(c, str) for c in classes):
            raise damaged(self.file(self.classes_file), "not a list of two or more different breed names")
        return classes

    def load_model(self, name: str = model_file, image_size: int | None = None):
        """A model of the run (the best by default), in Keras safe mode: a model file cannot run
        arbitrary code. `image_size`: the size config.json says it takes, checked, so that a
        model file of another run is named rather than failing mid-prediction.

        Keras is imported here so that listing runs stays instant.
        """
        import zipfile

        import keras

        path = self.file(name)
        if not zipfile.is_zipfile(path):  # Keras says "File not found" of an empty or cut-short file
            raise damaged(path, "not a Keras model file: empty, cut short or overwritten")
        with zipfile.ZipFile(path) as archive:
            holds_hub = "config.json" in archive.namelist() and b'"keras_hub' in archive.read("config.json")
        if holds_hub:  # a KerasHub backbone's classes are known to Keras once keras_hub is imported
            from dogbreeds.hub import import_keras_hub

            import_keras_hub()
        try:
            # Only last.keras goes on training (its optimizer, one of training's classes, is known
            # there); a model that predicts needs none.
            model = keras.models.load_model(path, safe_mode=True, compile=name == self.last_file)
        # Keras raises any of these for a file whose archive is whole but whose contents are not
        # a model it can build (a layer or class it does not know, weights that do not fit).
        except (OSError, ValueError, TypeError, KeyError, AttributeError, EOFError, zipfile.BadZipFile) as error:
            said = (str(error).splitlines() or [type(error).__name__])[0][:160]
            if "safe_mode" in str(error):  # Keras' own refusal of code in a model file
                raise DogbreedsError(
                    f"{path} cannot be loaded: it holds Python code (a Lambda layer), which dogbreeds does not run; "
                    "use a model trained by dogbreeds"
                ) from None
            raise damaged(path, f"Keras cannot load it: {said}") from None
        if image_size is not None and tuple(model.input_shape[1:3]) != (image_size, image_size):
            size = "x".join(map(str, model.input_shape[1:3]))
            said = f"it takes {size} px images where {self.config_file} says {image_size} px: another run's model"
            raise damaged(path, said)
        return model

    @contextmanager
    def lock(self):
        """This command's hold on the run folder, so that no other command writes it at the same
        time: a second one is refused in one line. The operating system drops the lock of a
        process that ends in any way (a kill too), so none is left stuck."""
        import fcntl  # POSIX: Linux (Kaggle, Colab) and macOS

        try:
            handle = open(self.file(self.lock_file), "a")
        except OSError as error:
            raise DogbreedsError(
                f"run {self.path} cannot be written here ({error.strerror}); copy it to a writable folder first"
            ) from None
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise DogbreedsError(
                    f"run {self.path} is in use by another dogbreeds command; wait for it to end, or use another run"
                ) from None
            sweep(self.path)  # what a killed command left
            yield self

    def calibration(self):
        """The calibration `dogbreeds evaluate` fitted, or None before it ran."""
        from dogbreeds.calibration import Calibration

        return Calibration.load(self.file(self.calibration_file))

    def write(self, name: str, data: str | bytes) -> Path:
        """A file of the run, written atomically."""
        write_atomic(self.file(name), data)
        return self.file(name)

    def save_model(self, model, name: str = model_file) -> None:
        """A Keras model saved under a temporary name, then renamed into place (the temporary
        removed if the save fails: a full disk)."""
        path = self.file(name)
        tmp = temporary_sibling(path)
        try:
            model.save(tmp)
            tmp.replace(path)
        except BaseException as error:
            tmp.unlink(missing_ok=True)
            if isinstance(error, OSError):  # a full disk: name the file meant, not its temporary
                error.filename = str(path)
            raise

    def save_predictions(self, name: str, ids, classes: list[str], probabilities) -> Path:
        """Probabilities as a table with the sample_submission header: id, then the classes in order."""
        return self.write(name, table_csv(probability_table(ids, classes, probabilities)))

    def keep_predictions(self, name: str, ids, classes: list[str], probabilities) -> None:
        """`save_predictions` for what is only kept to save work later (`test_predictions.csv`): a run
        that cannot be written (attached read-only, as a Kaggle dataset) goes on without it, said."""
        try:
            sweep(self.path, of=[name])
            self.save_predictions(name, ids, classes, probabilities)
        except OSError as error:
            log.warning(f"{self.path} cannot be written ({error.strerror}): {name} not kept, so blend predicts again")

    def predictions(self, name: str):
        """A table saved by `save_predictions`, checked: the run's classes, one row per id, numbers."""
        import numpy as np
        import pandas as pd

        path = self.file(name)
        frame = _read_table(path, dtype={"id": str})
        classes = self.classes()
        if list(frame.columns) != ["id", *classes]:
            raise damaged(path, "its columns are not id and the run's classes")
        values = frame[classes]
        if frame.empty or frame["id"].isna().any() or frame["id"].duplicated().any():
            raise damaged(path, "no rows, a missing id, or an id twice")
        if not all(map(pd.api.types.is_numeric_dtype, values.dtypes)) or not np.isfinite(values.to_numpy()).all():
            raise damaged(path, "a probability that is missing or not a number: the file was cut short?")
        if not np.allclose(values.to_numpy().sum(axis=1), 1.0, atol=1e-3):
            raise damaged(path, "a row whose probabilities do not add up to 1: the file was cut short?")
        return frame

    def save_metrics(self, metrics: dict) -> None:
        self.write(self.metrics_file, json.dumps(metrics, indent=2))

    def metrics(self) -> dict:
        return self.read_json(self.metrics_file) if self.file(self.metrics_file).is_file() else {}

    def history(self, epochs: int | None = None):
        """The epoch log (history.csv), its first `epochs` rows when given."""
        path = self.file(self.log_file)
        frame = _read_table(path)
        if not {"epoch", "seconds"} <= set(frame.columns) or len(frame) < (epochs or 0):
            raise damaged(path, "not an epoch log, or fewer epochs than progress.json says were saved")
        return frame.head(epochs) if epochs is not None else frame


def _read_table(path: Path, **options):
    """A CSV the package wrote, or the line naming it damaged."""
    import pandas as pd

    try:
        return pd.read_csv(path, **options)
    except (ValueError, UnicodeDecodeError, pd.errors.EmptyDataError, pd.errors.ParserError) as error:
        raise damaged(path, f"not a readable CSV: {str(error).splitlines()[0]}") from None
