"""`dogbreeds evaluate`: where the model goes wrong on the images it held out, and a calibration.

The images are the run's held-out ones, as its held-out predictions name them (the --val-split,
or every labelled image out of fold for a k-fold run): the images the model was selected on
but never trained on. `evaluate` computes (an `Evaluation`), `write_evaluation` draws and
writes it into the run folder: evaluation.json and evaluation.md (figures and tables),
confusion.png, examples.png (its most confident mistakes first, each under the Grad-CAM heat map
of the breed it predicted: where the network looked), reliability.png, and calibration.json,
which `submit` and `predict` then apply; the figures and pictures also go to TensorBoard
(RUN/tensorboard/evaluation) and, for a tracked run, to its MLflow run.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from dogbreeds.calibration import DEFAULT_FLOOR, Calibration, fit_calibration, reliability
from dogbreeds.config import TrainConfig
from dogbreeds.errors import DogbreedsError, log
from dogbreeds.explain import heat_maps
from dogbreeds.inference import Predictor
from dogbreeds.metrics import clip, confusion_matrix, top_k_accuracy
from dogbreeds.report import plot_confusion, plot_examples, plot_reliability
from dogbreeds.runs import Run
from dogbreeds.tracking import record_evaluation

EXAMPLES = 24
SCALARS = ("log_loss", "log_loss_calibrated", "accuracy", "top5_accuracy", "ece_before", "ece_after")  # to TensorBoard


def confused_pairs(matrix: np.ndarray, classes: list[str], top: int = 10) -> pd.DataFrame:
    """The pairs of breeds most often mistaken for each other, both directions counted.

    breed_a is the one more often taken for breed_b; a_as_b + b_as_a = mistakes.
    """
    rows = []
    n = len(classes)
    for i in range(n):
        for j in range(i + 1, n):
            total = int(matrix[i, j] + matrix[j, i])
            if total:
                a, b = (i, j) if matrix[i, j] >= matrix[j, i] else (j, i)
                rows.append((classes[a], classes[b], total, int(matrix[a, b]), int(matrix[b, a])))
    frame = pd.DataFrame(rows, columns=["breed_a", "breed_b", "mistakes", "a_as_b", "b_as_a"])
    frame = frame.sort_values(["mistakes", "a_as_b", "breed_a", "breed_b"], ascending=[False, False, True, True])
    return frame.head(top).reset_index(drop=True)


def per_breed_table(probabilities: np.ndarray, labels: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """One row per breed with validation images: accuracy, log loss, and its usual mistake."""
    predicted = probabilities.argmax(axis=1)
    matrix = confusion_matrix(labels, predicted, len(classes))
    picked = -np.log(np.maximum(probabilities[np.arange(len(labels)), labels], 1e-40))
    rows = []
    for c, breed in enumerate(classes):
        members = labels == c
        if not members.any():
            continue
        wrong = matrix[c].copy()
        wrong[c] = 0
        rows.append(
            {
                "breed": breed,
                "images": int(members.sum()),
                "correct": int(matrix[c, c]),
                "accuracy": float(matrix[c, c] / members.sum()),
                "log_loss": float(picked[members].mean()),
                "mistaken_for": classes[int(wrong.argmax())] if wrong.any() else "",
                "mistaken_times": int(wrong.max()),
            }
        )
    frame = pd.DataFrame(rows)
    return frame.sort_values(["accuracy", "log_loss", "breed"], ascending=[True, False, True]).reset_index(drop=True)


def example_order(
    labels: np.ndarray, probabilities: np.ndarray, n: int = EXAMPLES, right_at_least: int = 6, seed: int = 0
) -> np.ndarray:
    """Indices to show: mistakes first, most confident first; then right ones at random.

    A few right ones always come last (when there are any), to show what the model gets right.
    """
    predicted = probabilities.argmax(axis=1)
    confidence = probabilities.max(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    wrong = wrong[np.argsort(-confidence[wrong], kind="stable")]
    right = np.random.default_rng(seed).permutation(np.flatnonzero(predicted == labels))
    wrong = wrong[: max(n - min(right_at_least, len(right)), 0)]
    return np.concatenate([wrong, right])[:n]


@dataclass
class Evaluation:
    run: Run
    summary: dict
    per_breed: pd.DataFrame
    pairs: pd.DataFrame
    calibration: Calibration
    images: pd.DataFrame  # the held-out images: id, path, label
    classes: list[str]
    raw: np.ndarray  # their predicted probabilities, before calibration
    shown: np.ndarray  # the rows examples.png shows, in its order
    heat_maps: np.ndarray | None  # theirs, of the predicted breed (None: the backbone could not be built)
    files: list[Path] = field(default_factory=list)  # what write_evaluation wrote

    def to_json(self) -> str:
        return json.dumps(
            {
                **self.summary,
                "calibration": json.loads(self.calibration.to_json()),
                "most_confused_pairs": self.pairs.to_dict(orient="records"),
                "per_breed": self.per_breed.to_dict(orient="records"),
            },
            indent=2,
        )

    def text(self, worst: int = 15, pairs: int = 10) -> str:
        """What `dogbreeds evaluate` prints: the figures, the worst breeds, the confused pairs."""
        s, c = self.summary, self.calibration
        lines = [
            f"run {self.run.path}, {s['images']} validation images, TTA {'on' if s['tta'] else 'off'}",
            f"  log loss {s['log_loss']:.4f} (uniform guess {s['uniform_log_loss']:.4f}), "
            f"accuracy {s['accuracy']:.2%}, top-5 accuracy {s['top5_accuracy']:.2%}",
            f"  calibration: temperature {c.temperature:.3f}, floor {c.floor:g}: log loss "
            f"{c.log_loss_before:.4f} -> {c.log_loss_after:.4f} "
            f"(cross-validated on halves: {c.log_loss_after_cross_validated:.4f}), "
            f"ECE {s['ece_before']:.3f} -> {s['ece_after']:.3f}",
            "",
            f"per-breed accuracy, worst {min(worst, len(self.per_breed))} of {len(self.per_breed)} "
            f"(all in {self.run.file(Run.evaluation_report)}):",
            _text_table(self.per_breed.head(worst)),
            "",
            "most-confused pairs:",
            _text_table(self.pairs.head(pairs)) if len(self.pairs) else "  (no mistakes)",
            "",
            f"wrote {', '.join(p.name for p in self.files)} in {self.run.path}",
        ]
        return "\n".join(lines)

    def markdown(self) -> str:
        s, c = self.summary, self.calibration
        figures = [
            ("validation images", f"{s['images']}"),
            ("TTA (image and mirror)", "on" if s["tta"] else "off"),
            ("log loss", f"{s['log_loss']:.4f}"),
            ("log loss, uniform guess", f"{s['uniform_log_loss']:.4f}"),
            ("accuracy", f"{s['accuracy']:.2%}"),
            ("top-5 accuracy", f"{s['top5_accuracy']:.2%}"),
        ]
        calibration = [
            ("temperature", f"{c.temperature:.3f}"),
            ("probability floor", f"{c.floor:g}"),
            (f"log loss before (T = 1, floor {DEFAULT_FLOOR:g})", f"{c.log_loss_before:.4f}"),
            ("log loss after", f"{c.log_loss_after:.4f}"),
            (
                "log loss after, cross-validated (fit on one half, score the other)",
                f"{c.log_loss_after_cross_validated:.4f}",
            ),
            ("expected calibration error before / after", f"{s['ece_before']:.3f} / {s['ece_after']:.3f}"),
        ]
        return "\n".join(
            [
                f"# Evaluation of {self.run.name}",
                "",
                f"{s['date']}, data {s['data']}: the validation split training held out "
                f"(val_split {s['val_split']}, seed {s['seed']}).",
                "",
                pd.DataFrame(figures, columns=["", "value"]).to_markdown(index=False),
                "",
                "## Calibration",
                "",
                "Fitted on these images and saved in calibration.json; `dogbreeds submit` and "
                "`dogbreeds predict` apply it (`--no-calibrate` to not). The per-breed log loss below is calibrated.",
                "",
                pd.DataFrame(calibration, columns=["", "value"]).to_markdown(index=False),
                "",
                "![reliability](reliability.png)",
                "",
                "## Most-confused pairs",
                "",
                "`a_as_b`: images of breed_a predicted as breed_b; `b_as_a` the other way.",
                "",
                self.pairs.to_markdown(index=False) if len(self.pairs) else "No mistakes.",
                "",
                "![confusion matrix](confusion.png)",
                "",
                "## Validation images, mistakes first",
                "",
                "![examples](examples.png)",
                "",
                "## Per-breed accuracy, worst first",
                "",
                self.per_breed.to_markdown(index=False, floatfmt=".4f"),
                "",
            ]
        )


def _text_table(frame: pd.DataFrame) -> str:
    """A table as the terminal shows it: pandas' own layout, indented, figures to four places."""
    text = frame.to_string(index=False, float_format="{:.4f}".format)
    return "\n".join("  " + line for line in text.splitlines())


def evaluate(
    run: str | Path | None = None, data: str | Path | None = None, *, tta: bool = True, batch_size: int | None = None
) -> Evaluation:
    """The run's held-out images scored, per breed and per pair, and a calibration fitted on them."""
    predictor = Predictor.open(run, batch_size=batch_size, calibration=False)
    opened = predictor.run
    config = TrainConfig.load(opened.file(Run.config_file))
    competition = predictor.competition(data)
    with opened.lock():  # refused at once while another command writes the run
        held_out = predictor.held_out(competition, tta=tta)
    images = competition.labels.set_index("id").loc[held_out["id"]].reset_index()
    classes = competition.classes
    raw = held_out[classes].to_numpy(dtype=np.float64)
    labels = images["label"].to_numpy()
    calibration = fit_calibration(raw, labels, tta=tta, seed=config.seed)
    before, after = clip(raw, DEFAULT_FLOOR), calibration.apply(raw)
    predicted = before.argmax(axis=1)
    pairs = confused_pairs(confusion_matrix(labels, predicted, len(classes)), classes)
    summary = {
        "run": str(opened.path),
        "data": str(competition.root),
        "date": datetime.now().isoformat(timespec="seconds"),
        "val_split": config.val_split,
        "seed": config.seed,
        "limit": config.limit,
        "tta": tta,
        "images": len(labels),
        "classes": len(classes),
        "log_loss": calibration.log_loss_before,
        "log_loss_calibrated": calibration.log_loss_after,
        "uniform_log_loss": math.log(len(classes)),
        "accuracy": float(np.mean(predicted == labels)),
        "top5_accuracy": top_k_accuracy(before, labels, 5),
        "ece_before": reliability(before, labels)["ece"],
        "ece_after": reliability(after, labels)["ece"],
    }
    per_breed = per_breed_table(after, labels, classes)
    shown = example_order(labels, after, seed=config.seed)
    return Evaluation(
        opened, summary, per_breed, pairs, calibration, images, classes, raw, shown,
        _heat_maps(predictor, images.iloc[shown], predicted[shown]),
    )  # fmt: skip


def _heat_maps(predictor: Predictor, images: pd.DataFrame, breeds: np.ndarray) -> np.ndarray | None:
    """The examples' maps, each by the model that made its prediction (a k-fold run: the fold that
    held the image out). Without them (a features run whose backbone weights are not on this
    machine: its vectors were cached) examples.png is drawn as before, and a warning says why."""
    try:
        return heat_maps(predictor, images, breeds, held_out=True)[0]
    except DogbreedsError as error:
        log.warning(f"examples.png without heat maps: {error}")
        return None


def write_evaluation(result: Evaluation) -> Evaluation:
    """Its pictures, tables and calibration into the run folder (`result.files` names them), and
    to TensorBoard and the run's MLflow run."""
    with result.run.lock():
        return _write(result)


def _write(result: Evaluation) -> Evaluation:
    run, classes, calibration, summary = result.run, result.classes, result.calibration, result.summary
    labels = result.images["label"].to_numpy()
    before, after = clip(result.raw, DEFAULT_FLOOR), calibration.apply(result.raw)
    predicted = before.argmax(axis=1)
    pairs = result.pairs
    plot_confusion(
        confusion_matrix(labels, predicted, len(classes)),
        classes,
        run.file(Run.confusion_plot),
        title=f"Confusion matrix of {run.name}: {len(labels)} validation images, accuracy {summary['accuracy']:.1%}",
        pairs=list(zip(pairs["breed_a"].head(5), pairs["breed_b"].head(5))),
    )
    shown = result.shown
    n_wrong = int((predicted[shown] != labels[shown]).sum())
    plot_examples(
        result.images["path"].iloc[shown].tolist(),
        [classes[i] for i in labels[shown]],
        after[shown, labels[shown]],
        [classes[i] for i in predicted[shown]],
        after[shown].max(axis=1),
        run.file(Run.examples_plot),
        title=f"{run.name}, validation images: {n_wrong} of the {int((predicted != labels).sum())} mistakes "
        f"(most confident first), then {len(shown) - n_wrong} right predictions at random; calibrated probabilities",
        heat_maps=None if result.heat_maps is None else list(result.heat_maps),
    )
    plot_reliability(
        {
            f"before calibration: log loss {calibration.log_loss_before:.3f}": reliability(before, labels),
            f"after (T = {calibration.temperature:.2f}, floor {calibration.floor:g}): "
            f"log loss {calibration.log_loss_after:.3f}": reliability(after, labels),
        },
        run.file(Run.reliability_plot),
        title=f"Reliability of {run.name} on {len(labels)} validation images",
    )
    pictures = [run.file(name) for name in (Run.confusion_plot, Run.examples_plot, Run.reliability_plot)]
    result.files = list(pictures)
    for name, text in (
        (Run.evaluation_file, result.to_json()),
        (Run.evaluation_report, result.markdown()),
        (Run.calibration_file, calibration.to_json()),
    ):
        result.files.append(run.write(name, text))
    figures = {key: summary[key] for key in SCALARS} | {
        "temperature": calibration.temperature,
        "floor": calibration.floor,
    }
    record_evaluation(run, figures, pictures, result.files)
    return result
