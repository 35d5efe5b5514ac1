"""Calibration: a temperature and a probability floor, both chosen on the validation split.

A fine-tuned network is usually over-confident, and log loss punishes confident mistakes
hard. Temperature scaling (p_T proportional to p^(1/T)) keeps every ranking, so accuracy is
untouched, and only softens (T > 1) or sharpens (T < 1) the probabilities. The floor clips
probabilities away from 0 and 1 and renormalises: one confident mistake then costs at most
-log(floor). Both are kept only where they lower the validation log loss; otherwise T = 1 and
the default floor stay, so calibrating can never make the validation score worse.

Pure numpy, so it runs (and is tested) without TensorFlow.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from scipy.optimize import minimize_scalar

from dogbreeds.errors import DogbreedsError
from dogbreeds.metrics import TINY, clip, log_loss

DEFAULT_FLOOR = 1e-6  # what submissions are clipped at without a calibration, as they have always been
FLOORS = (1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
TEMPERATURE_BOUNDS = (0.05, 20.0)


def apply_temperature(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """p^(1/T), renormalised: a softmax of log p / T, computed stably."""
    if temperature == 1.0:
        return probabilities / probabilities.sum(axis=1, keepdims=True)
    z = np.log(np.maximum(probabilities, TINY)) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_temperature(
    probabilities: np.ndarray, labels: np.ndarray, bounds: tuple[float, float] = TEMPERATURE_BOUNDS
) -> float:
    """The T in `bounds` minimising log loss (scipy's bounded scalar search on log T); 1.0 unless better.

    The loss is convex in 1/T, hence unimodal in log T, so the search finds the minimum.
    """

    def loss(log_t: float) -> float:
        return log_loss(apply_temperature(probabilities, math.exp(log_t)), labels)

    found = minimize_scalar(loss, bounds=(math.log(bounds[0]), math.log(bounds[1])), options={"xatol": 1e-4})
    return math.exp(found.x) if found.fun < loss(0.0) else 1.0


def choose_floor(probabilities: np.ndarray, labels: np.ndarray, floors=FLOORS) -> float:
    """The floor with the lowest log loss; the default unless another is strictly better."""
    n_classes = probabilities.shape[1]
    best, best_loss = DEFAULT_FLOOR, log_loss(clip(probabilities, DEFAULT_FLOOR), labels)
    for floor in floors:
        if floor >= 1.0 / n_classes:  # a floor that high would flatten every row
            continue
        value = log_loss(clip(probabilities, floor), labels)
        if value < best_loss:
            best, best_loss = floor, value
    return best


def reliability(probabilities: np.ndarray, labels: np.ndarray, bins: int = 10) -> dict:
    """Top-probability bins: mean confidence, accuracy and count of each; and the expected
    calibration error (the count-weighted gap between confidence and accuracy)."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    count = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore"):
        mean_confidence = np.bincount(which, confidence, bins) / count
        accuracy = np.bincount(which, correct, bins) / count
    gaps = np.nan_to_num(np.abs(mean_confidence - accuracy)) * count
    return {
        "edges": np.linspace(0.0, 1.0, bins + 1),
        "confidence": mean_confidence,
        "accuracy": accuracy,
        "count": count,
        "ece": float(gaps.sum() / max(1, len(labels))),
    }


@dataclass
class Calibration:
    """What `submit` and `predict` apply, with the validation figures that justified it."""

    temperature: float = 1.0
    floor: float = DEFAULT_FLOOR
    tta: bool = True  # whether the validation predictions it was fitted on used flip TTA
    images: int = 0
    log_loss_before: float = float("nan")  # default floor, T = 1
    log_loss_after: float = float("nan")  # on the same images it was fitted on
    log_loss_after_cross_validated: float = float("nan")  # fitted on one half, scored on the other

    def apply(self, probabilities: np.ndarray) -> np.ndarray:
        return clip(apply_temperature(probabilities, self.temperature), self.floor)

    def to_json(self) -> str:
        values = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in asdict(self).items()}
        return json.dumps(values, indent=2)  # strict JSON: no NaN

    @classmethod
    def load(cls, path: Path) -> "Calibration | None":
        """The calibration saved at `path`, or None if there is none."""
        if not path.is_file():
            return None
        try:
            raw = json.loads(path.read_text())
            calibration = cls(**{k: float("nan") if v is None else v for k, v in raw.items()})
            valid = (
                math.isfinite(calibration.temperature) and calibration.temperature > 0 and 0 < calibration.floor < 0.5
            )
        except (ValueError, TypeError, AttributeError) as error:
            raise DogbreedsError(
                f"{path} is not a calibration file ({error}); run `dogbreeds evaluate` again to rewrite it"
            ) from None
        if not valid:
            raise DogbreedsError(
                f"{path}: temperature {calibration.temperature} or floor {calibration.floor} is out of range; "
                "run `dogbreeds evaluate` again to rewrite it"
            )
        return calibration


def fit_calibration(probabilities: np.ndarray, labels: np.ndarray, *, tta: bool = True, seed: int = 0) -> Calibration:
    """Temperature, then floor, each kept only where it generalises; never worse than T = 1 and the default floor.

    Fitted on few images, a temperature can lower their log loss by chance alone. So each
    correction is also fitted on one half of the images and scored on the other, both ways,
    and kept only when that cross-validated figure beats going without it. The "after"
    figure is measured on all the images it was fitted on (a little optimistic); the
    cross-validated one is that of the corrections kept.
    """
    labels = np.asarray(labels)
    splittable = len(labels) >= 4  # two halves of two images at least
    before = log_loss(clip(probabilities, DEFAULT_FLOOR), labels)
    temperature = fit_temperature(probabilities, labels)
    if splittable and _cross_validated(probabilities, labels, seed, refit_temperature=True) >= before:
        temperature = 1.0
    tempered = apply_temperature(probabilities, temperature)
    floor = choose_floor(tempered, labels)
    without_floor = log_loss(clip(tempered, DEFAULT_FLOOR), labels)
    if splittable and _cross_validated(probabilities, labels, seed, temperature=temperature) >= without_floor:
        floor = DEFAULT_FLOOR
    calibration = Calibration(temperature=temperature, floor=floor, tta=tta, images=len(labels))
    after = log_loss(calibration.apply(probabilities), labels)
    if after > before:  # cannot happen by construction; kept as the promise in code
        calibration.temperature, calibration.floor, after = 1.0, DEFAULT_FLOOR, before
    calibration.log_loss_before, calibration.log_loss_after = before, after
    calibration.log_loss_after_cross_validated = (
        _cross_validated(
            probabilities,
            labels,
            seed,
            refit_temperature=calibration.temperature != 1.0,
            refit_floor=calibration.floor != DEFAULT_FLOOR,
        )
        if splittable
        else float("nan")
    )
    return calibration


def cross_validated(n: int, seed: int, fit: Callable, score: Callable) -> float:
    """A correction's figure on images it was not fitted on: fitted on one seeded half of the `n`
    images and scored (mean per image) on the other, both ways; the mean over all images.
    `fit(rows)` returns what `score(fitted, rows)` uses. Calibration and blending both ask it."""
    order = np.random.default_rng(seed).permutation(n)
    halves = order[: n // 2], order[n // 2 :]
    total = sum(score(fit(fit_on), score_on) * len(score_on) for fit_on, score_on in (halves, halves[::-1]))
    return total / n


def _cross_validated(
    probabilities: np.ndarray,
    labels: np.ndarray,
    seed: int,
    *,
    refit_temperature: bool = False,
    refit_floor: bool = True,
    temperature: float = 1.0,
) -> float:
    """Log loss under corrections fitted on the other half (`temperature` unless
    `refit_temperature`; the default floor unless `refit_floor`)."""

    def fit(rows):
        t = fit_temperature(probabilities[rows], labels[rows]) if refit_temperature else temperature
        floor = choose_floor(apply_temperature(probabilities[rows], t), labels[rows]) if refit_floor else DEFAULT_FLOOR
        return t, floor

    def score(fitted, rows):
        t, floor = fitted
        return log_loss(clip(apply_temperature(probabilities[rows], t), floor), labels[rows])

    return cross_validated(len(labels), seed, fit, score)


def usage_note(calibration: Calibration | None, *, available: bool, tta: bool, where: Path) -> str:
    """One line saying which probabilities the user gets, and how to change that."""
    if calibration is None:
        if available:
            return f"calibration in {where} not applied (--no-calibrate): probabilities clipped at {DEFAULT_FLOOR:g}"
        return (
            f"no calibration in {where}: probabilities clipped at {DEFAULT_FLOOR:g}; "
            "run `dogbreeds evaluate` to fit one"
        )
    line = (
        f"calibrated with temperature {calibration.temperature:.3f} and floor {calibration.floor:g} "
        f"(validation log loss {calibration.log_loss_before:.4f} -> {calibration.log_loss_after:.4f})"
    )
    if calibration.tta != tta:
        fitted, now = ("on" if calibration.tta else "off"), ("on" if tta else "off")
        line += f"; note: fitted with TTA {fitted}, used with TTA {now}: run `dogbreeds evaluate` with the same --tta"
    return line
