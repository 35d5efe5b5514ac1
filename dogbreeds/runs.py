"""A run is a folder: config, classes, model, epoch log, plot and metrics.

Everything a later command needs (submit, evaluate, predict) is read from here, so a run
can be copied to another machine, or out of a Kaggle kernel, and used as it is.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from dogbreeds.config import TrainConfig
from dogbreeds.errors import DogbreedsError
from dogbreeds.places import runs_dir

_UMASK = os.umask(0)
os.umask(_UMASK)


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write to a temporary file beside `path`, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "wb" if isinstance(data, bytes) else "w"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; a plain file is what the user expects
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def temporary_sibling(path: Path) -> Path:
    """A fresh name beside `path` for writers that need a file name (Keras, matplotlib)."""
    return path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")


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
    def trained_file(self) -> str:
        """What a finished run has: its best model, or (k-fold) its out-of-fold predictions."""
        return self.oof_file if self.folds > 1 else self.model_file

    @classmethod
    def create(cls, config: TrainConfig, classes: list[str], run_dir: str | Path | None = None) -> "Run":
        if run_dir is None:
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
            run_dir = runs_dir() / f"{config.backbone}-{stamp}"
        run = cls(Path(run_dir))
        if run.file(cls.model_file).exists():
            raise DogbreedsError(f"{run.path} already holds a trained model; choose another --run-dir")
        run.path.mkdir(parents=True, exist_ok=True)
        write_atomic(run.file(cls.config_file), config.to_json())
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

    def config(self) -> TrainConfig:
        return TrainConfig.from_json(self.file(self.config_file).read_text(), self.file(self.config_file))

    def classes(self) -> list[str]:
        return json.loads(self.file(self.classes_file).read_text())

    def load_model(self):
        """The best model, in Keras safe mode: a model file cannot run arbitrary code.

        Keras is imported here so that listing runs stays instant.
        """
        import keras

        try:
            return keras.models.load_model(self.file(self.model_file), safe_mode=True)
        except (OSError, ValueError) as error:
            raise DogbreedsError(
                f"{self.file(self.model_file)} cannot be loaded ({str(error).splitlines()[0][:160]}); "
                "train the run again"
            ) from None

    def calibration(self):
        """The calibration `dogbreeds evaluate` fitted, or None before it ran."""
        from dogbreeds.calibration import Calibration

        return Calibration.load(self.file(self.calibration_file))

    def write(self, name: str, data: str | bytes) -> Path:
        """A file of the run, written atomically."""
        write_atomic(self.file(name), data)
        return self.file(name)

    def save_model(self, model, name: str = model_file) -> None:
        """A Keras model saved under a temporary name, then renamed into place."""
        path = self.file(name)
        tmp = temporary_sibling(path)
        model.save(tmp)
        tmp.replace(path)

    def save_predictions(self, name: str, ids, classes: list[str], probabilities) -> Path:
        """Probabilities as a table with the sample_submission header: id, then the classes in order."""
        import pandas as pd

        frame = pd.DataFrame(probabilities, columns=classes)
        frame.insert(0, "id", list(ids))
        return self.write(name, frame.to_csv(index=False, float_format="%.8g"))

    def predictions(self, name: str):
        """A table saved by `save_predictions`, its columns checked against the run's classes."""
        import pandas as pd

        path = self.file(name)
        frame = pd.read_csv(path, dtype={"id": str})
        if list(frame.columns) != ["id", *self.classes()]:
            raise DogbreedsError(f"{path}: its columns are not id and the run's classes; train the run again")
        return frame

    def save_metrics(self, metrics: dict) -> None:
        self.write(self.metrics_file, json.dumps(metrics, indent=2))

    def metrics(self) -> dict:
        path = self.file(self.metrics_file)
        return json.loads(path.read_text()) if path.is_file() else {}
