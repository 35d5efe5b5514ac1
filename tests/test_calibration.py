"""Calibration and the evaluation tables, on synthetic and hand-made numbers: no model."""

import json

import numpy as np
import pandas as pd
import pytest

from dogbreeds import calibration
from dogbreeds.calibration import DEFAULT_FLOOR, Calibration, apply_temperature, reliability
from dogbreeds.errors import DogbreedsError
from dogbreeds.evaluation import confused_pairs, example_order, per_breed_table
from dogbreeds.metrics import clip, confusion_matrix, log_loss, top_k_accuracy


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def synthetic(n=4000, classes=10, seed=0):
    """Logits and labels drawn from their softmax: softmax(logits) is perfectly calibrated."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=2.0, size=(n, classes))
    cumulative = softmax(logits).cumsum(axis=1)
    labels = np.minimum((rng.random((n, 1)) > cumulative).sum(axis=1), classes - 1)
    return logits, labels


@pytest.mark.parametrize("true_temperature", [0.5, 2.5])
def test_temperature_fit_recovers_a_known_temperature(true_temperature):
    logits, labels = synthetic()
    # A model whose logits are T times the true ones (over-confident for T > 1): p^(1/T) undoes it.
    probabilities = softmax(logits * true_temperature)
    fitted = calibration.fit_calibration(probabilities, labels)
    assert fitted.temperature == pytest.approx(true_temperature, rel=0.1)
    assert fitted.log_loss_after < fitted.log_loss_before - 0.02
    assert fitted.log_loss_after == pytest.approx(log_loss(fitted.apply(probabilities), labels))
    assert fitted.log_loss_after_cross_validated < fitted.log_loss_before


def test_calibrated_predictions_keep_t_near_one():
    logits, labels = synthetic(seed=1)
    fitted = calibration.fit_calibration(softmax(logits), labels)
    assert fitted.temperature == pytest.approx(1.0, abs=0.08)


@pytest.mark.parametrize("seed", range(6))
def test_calibration_never_raises_validation_log_loss(seed):
    rng = np.random.default_rng(seed)
    n, classes = int(rng.integers(3, 300)), int(rng.integers(2, 30))
    # Anything at all: confident, random, one-hot, with exact zeros, labels unrelated.
    probabilities = softmax(rng.normal(scale=rng.uniform(0.1, 30), size=(n, classes)))
    probabilities[rng.random(probabilities.shape) < 0.1] = 0.0
    probabilities[:, 0] += 1e-12
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    labels = rng.integers(classes, size=n)
    fitted = calibration.fit_calibration(probabilities, labels)
    before = log_loss(clip(probabilities, DEFAULT_FLOOR), labels)
    assert fitted.log_loss_before == pytest.approx(before)
    assert log_loss(fitted.apply(probabilities), labels) <= before + 1e-12
    assert 0.05 <= fitted.temperature <= 20 and fitted.floor < 1 / classes


def test_floor_rises_when_confident_mistakes_dominate():
    logits, labels = synthetic(n=1000, seed=2)
    probabilities = softmax(logits)
    wrong = np.arange(0, 1000, 25)  # 4% of the rows bet everything on a wrong class
    probabilities[wrong] = 0.0
    probabilities[wrong, (labels[wrong] + 1) % 10] = 1.0
    floor = calibration.choose_floor(probabilities, labels)
    assert floor > DEFAULT_FLOOR
    assert log_loss(clip(probabilities, floor), labels) < log_loss(clip(probabilities, DEFAULT_FLOOR), labels)


def test_temperature_keeps_the_ranking_and_rows_sum_to_one():
    probabilities = softmax(np.random.default_rng(3).normal(size=(50, 7)))
    for t in (0.3, 1.0, 4.0):
        scaled = apply_temperature(probabilities, t)
        np.testing.assert_allclose(scaled.sum(axis=1), 1.0)
        assert (np.argsort(scaled, axis=1) == np.argsort(probabilities, axis=1)).all()
    np.testing.assert_allclose(apply_temperature(probabilities, 2.0), softmax(np.log(probabilities) / 2))


def test_calibration_file_round_trips_and_bad_files_say_what_to_do(tmp_path):
    saved = Calibration(temperature=1.7, floor=1e-4, tta=False, images=3)  # NaN figures: stored as null
    path = tmp_path / "calibration.json"
    path.write_text(saved.to_json())
    assert json.loads(path.read_text())["log_loss_after"] is None
    loaded = Calibration.load(path)
    assert (loaded.temperature, loaded.floor, loaded.tta, loaded.images) == (1.7, 1e-4, False, 3)
    assert Calibration.load(tmp_path / "absent.json") is None
    for text in ("{not json", '{"temperature": -1}', "[1, 2]"):
        path.write_text(text)
        with pytest.raises(DogbreedsError, match="dogbreeds evaluate"):
            Calibration.load(path)


def test_reliability_bins_and_expected_calibration_error():
    logits, labels = synthetic(seed=4)
    calibrated = reliability(softmax(logits), labels)
    overconfident = reliability(softmax(logits * 3), labels)
    assert calibrated["count"].sum() == len(labels)
    assert calibrated["ece"] < 0.03 < overconfident["ece"]


BREEDS = ["norfolk_terrier", "norwich_terrier", "pug", "beagle"]
#                    predicted: norfolk norwich pug beagle
HAND_MADE = np.array(
    [
        [5, 3, 0, 1],  # true norfolk_terrier
        [2, 6, 0, 0],  # true norwich_terrier
        [0, 0, 9, 1],  # true pug
        [0, 0, 1, 7],
    ]
)  # true beagle


def test_most_confused_pairs_on_a_hand_made_matrix():
    pairs = confused_pairs(HAND_MADE, BREEDS)
    expected = pd.DataFrame(
        [
            ("norfolk_terrier", "norwich_terrier", 5, 3, 2),
            ("pug", "beagle", 2, 1, 1),
            ("norfolk_terrier", "beagle", 1, 1, 0),
        ],
        columns=["breed_a", "breed_b", "mistakes", "a_as_b", "b_as_a"],
    )
    pd.testing.assert_frame_equal(pairs, expected)
    flipped = HAND_MADE.copy()
    flipped[1, 0] = 4  # now norwich is more often taken for norfolk than the other way
    first = confused_pairs(flipped, BREEDS, top=1).iloc[0]
    assert (first.breed_a, first.breed_b, first.mistakes, first.a_as_b, first.b_as_a) == (
        "norwich_terrier",
        "norfolk_terrier",
        7,
        4,
        3,
    )
    assert confused_pairs(np.diag([3, 4, 5, 6]), BREEDS).empty


def test_confusion_matrix_per_breed_table_and_top_k():
    labels = np.array([0, 0, 0, 1, 1, 2])
    probabilities = np.array(
        [
            [0.7, 0.2, 0.1],
            [0.15, 0.8, 0.05],
            [0.2, 0.7, 0.1],  # norfolk: right once, twice taken for norwich
            [0.1, 0.9, 0.0],
            [0.1, 0.6, 0.3],  # norwich: right twice
            [0.5, 0.3, 0.2],  # pug: wrong, its true class last
        ]
    )
    matrix = confusion_matrix(labels, probabilities.argmax(axis=1), 3)
    np.testing.assert_array_equal(matrix, [[1, 2, 0], [0, 2, 0], [1, 0, 0]])
    table = per_breed_table(probabilities, labels, BREEDS[:3])
    assert table["breed"].tolist() == ["pug", "norfolk_terrier", "norwich_terrier"]  # worst first
    norfolk = table.set_index("breed").loc["norfolk_terrier"]
    assert (norfolk.images, norfolk.correct, norfolk.mistaken_for, norfolk.mistaken_times) == (
        3,
        1,
        "norwich_terrier",
        2,
    )
    assert norfolk.log_loss == pytest.approx(-np.log([0.7, 0.15, 0.2]).mean())
    assert top_k_accuracy(probabilities, labels, 1) == pytest.approx(3 / 6)
    assert top_k_accuracy(probabilities, labels, 2) == pytest.approx(5 / 6)
    assert top_k_accuracy(probabilities, labels, 5) == 1.0
    order = example_order(labels, probabilities, n=4, right_at_least=1)
    assert order[:3].tolist() == [1, 2, 5]  # mistakes, most confident first
    assert labels[order[3]] == probabilities[order[3]].argmax()  # then a right one


def test_a_correction_is_kept_only_where_it_holds_on_unseen_halves():
    """On few images a temperature can lower their own log loss by chance: kept only when the
    cross-validated figure (fitted on one half, scored on the other) improves too."""
    dropped = 0
    for seed in range(40):
        rng = np.random.default_rng(seed)
        labels = rng.integers(3, size=36)
        probabilities = softmax(rng.normal(scale=0.5, size=(36, 3)) + 0.6 * np.eye(3)[labels])
        fitted = calibration.fit_calibration(probabilities, labels, seed=seed)
        in_sample = calibration.fit_temperature(probabilities, labels)
        if fitted.temperature != 1.0:
            assert fitted.log_loss_after_cross_validated < fitted.log_loss_before
        elif in_sample != 1.0:
            dropped += 1
    assert dropped > 0  # a temperature that helped only the images it was fitted on was left out
