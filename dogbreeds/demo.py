"""`dogbreeds demo`: the whole workflow on a generated competition, offline, in under a minute.

It generates a small competition of coloured shapes, trains a small network on it from
scratch, writes the submission and scores it against the known answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dogbreeds.config import TrainConfig
from dogbreeds.scoring import score
from dogbreeds.submission import submit
from dogbreeds.synthetic import make_competition
from dogbreeds.training import train

NEXT_STEP = "next: put the Kaggle files in ./data and run `dogbreeds train`, then `dogbreeds submit`"


@dataclass
class DemoSettings:
    backbone: str = "tiny_cnn"
    image_size: int | None = None  # the backbone's size
    epochs: int = 2
    fine_tune_epochs: int = 8


def run_demo(folder: Path, settings: DemoSettings, say=print) -> None:
    """The three steps, each announced with `say` as it ends."""
    data = make_competition(folder / "data")
    say(f"1/3 generated a competition in {data} (labels.csv, train/, test/, sample_submission.csv)")
    config = TrainConfig(
        data=str(data),
        backbone=settings.backbone,
        weights="none",
        image_size=settings.image_size,
        batch_size=16,
        epochs=settings.epochs,
        fine_tune_epochs=settings.fine_tune_epochs,
        learning_rate=3e-3,
        fine_tune_learning_rate=2e-3,
        recipe="classic",  # a network trained from scratch in seconds: no averaging, no smoothing
    )
    trained = train(config, run_dir=str(folder / "run"))
    m = trained.metrics
    say(
        f"2/3 trained {trained.run.path}: validation log loss {m['val_log_loss']:.4f}, "
        f"accuracy {m['val_accuracy']:.2%}"
    )
    written = submit(trained.run.path, data, folder / "submission.csv", force=True)
    scored = score(written.path, data / "solution.csv")
    say(
        f"3/3 wrote {written.path}: test log loss {scored.log_loss:.4f} (uniform guess "
        f"{m['uniform_log_loss']:.4f}), accuracy {scored.accuracy:.2%}"
    )
    say(NEXT_STEP)
