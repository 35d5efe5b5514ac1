"""`dogbreeds runs`: every run folder, newest first, with its settings and validation scores
(a k-fold run's are out of fold: every labelled image, predicted by the fold that held it out).

It reads the JSON files as they are (no config class, no TensorFlow), so it answers at once
and lists runs of every kind and version alike.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd

from dogbreeds.places import runs_dir
from dogbreeds.runs import Run

COLUMNS = ["run", "backbone", "method", "size", "date", "val log loss", "val accuracy", "calibrated log loss"]


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _figure(value, form: str) -> str:
    return format(value, form) if isinstance(value, (int, float)) else "-"


@dataclass
class RunRow:
    name: str
    model: str
    method: str
    image_size: str
    date: datetime
    finished: bool
    val_log_loss: float | None
    val_accuracy: float | None
    calibrated_log_loss: float | None

    @classmethod
    def read(cls, path: Path) -> "RunRow":
        config = _read_json(path / Run.config_file)
        metrics = _read_json(path / Run.metrics_file)
        model = path / Run(path).trained_file  # a k-fold run is finished when its oof.csv is there
        method = str(config.get("method", config.get("mode", "finetune")))
        folds = config.get("folds", 1)
        return cls(
            name=path.name,
            model=str(config.get("model", config.get("backbone", "?"))),  # a CIFAR run names its model
            method=f"{method}, {folds} folds" if isinstance(folds, int) and folds > 1 else method,
            image_size=str(config.get("image_size", "?")),
            date=datetime.fromtimestamp((model if model.is_file() else path / Run.config_file).stat().st_mtime),
            finished=model.is_file(),
            val_log_loss=metrics.get("val_log_loss"),
            val_accuracy=metrics.get("val_accuracy"),
            calibrated_log_loss=_read_json(path / Run.evaluation_file).get("log_loss_calibrated"),
        )

    def cells(self) -> list[str]:
        return [
            self.name,
            self.model,
            self.method,
            self.image_size,
            self.date.strftime("%Y-%m-%d %H:%M") if self.finished else "unfinished",
            _figure(self.val_log_loss, ".4f"),
            _figure(self.val_accuracy, ".2%"),
            _figure(self.calibrated_log_loss, ".4f"),
        ]


@dataclass
class RunList:
    folder: Path
    rows: list[RunRow]

    def text(self) -> str:
        """The table `dogbreeds runs` prints, or how to make a first run."""
        if not self.rows:
            return f"no runs in {self.folder}/: train one with `dogbreeds train`"
        return pd.DataFrame([row.cells() for row in self.rows], columns=COLUMNS).to_string(index=False)


def list_runs(folder: Path | None = None) -> RunList:
    """Every run under `folder` (default: runs/, or a kernel's) with a config.json, newest first."""
    folder = runs_dir() if folder is None else folder
    paths = [p for p in Path(folder).glob("*") if p.is_dir() and (p / Run.config_file).is_file()]
    rows = sorted((RunRow.read(p) for p in paths), key=lambda row: row.date, reverse=True)
    return RunList(Path(folder), rows)
