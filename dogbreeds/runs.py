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

RUNS_DIR = Path("runs")
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

    @property
    def name(self) -> str:
        return self.path.name

    def file(self, name: str) -> Path:
        return self.path / name

    @classmethod
    def create(cls, config: TrainConfig, classes: list[str], run_dir: str | Path | None = None) -> "Run":
        if run_dir is None:
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
            run_dir = RUNS_DIR / f"{config.backbone}-{stamp}"
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
        if not path.is_dir() and (RUNS_DIR / run).is_dir():
            path = RUNS_DIR / run
        if not path.is_dir():
            raise DogbreedsError(f"run {run} not found: pass a run folder or a name under {RUNS_DIR}/")
        opened = cls(path)
        for needed in (cls.config_file, cls.classes_file) + ((cls.model_file,) if need_model else ()):
            if not opened.file(needed).is_file():
                raise DogbreedsError(
                    f"run {path} has no {needed}: its training did not finish; train again or pick another run"
                )
        return opened

    @classmethod
    def latest(cls) -> "Run":
        candidates = sorted(
            (p for p in RUNS_DIR.glob("*") if (p / cls.model_file).is_file()),
            key=lambda p: (p / cls.model_file).stat().st_mtime,
        )
        if not candidates:
            raise DogbreedsError(f"no trained run in {RUNS_DIR}/: run `dogbreeds train` first, or pass --run")
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

    def save_metrics(self, metrics: dict) -> None:
        self.write(self.metrics_file, json.dumps(metrics, indent=2))

    def metrics(self) -> dict:
        path = self.file(self.metrics_file)
        return json.loads(path.read_text()) if path.is_file() else {}
