import re

import keras
import numpy as np
import pandas as pd
import pytest

from dogbreeds.calibration import DEFAULT_FLOOR
from dogbreeds.errors import DogbreedsError
from dogbreeds.inference import with_flip_tta
from dogbreeds.metrics import clip
from dogbreeds.scoring import score
from dogbreeds.submission import check_submission


def test_clip_keeps_rows_distributions_away_from_zero_and_one():
    p = clip(np.array([[1.0, 0.0, 0.0], [0.2, 0.3, 0.5]]), DEFAULT_FLOOR)
    assert (p > 0).all() and (p < 1).all()
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    np.testing.assert_allclose(p[1], [0.2, 0.3, 0.5], atol=1e-5)


def test_flip_tta_averages_the_image_and_its_mirror():
    inputs = keras.Input((4, 4, 3))
    # A model that only looks at the left column, so a mirror changes its answer.
    left = keras.layers.Lambda(lambda x: x[:, :, 0, :])(inputs)
    outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(left))
    model = keras.Model(inputs, outputs)
    x = np.random.default_rng(0).normal(size=(3, 4, 4, 3)).astype("float32")
    expected = (model.predict(x, verbose=0) + model.predict(x[:, :, ::-1], verbose=0)) / 2
    np.testing.assert_allclose(with_flip_tta(model).predict(x, verbose=0), expected, atol=1e-6)


def good_frame():
    frame = pd.DataFrame([[0.2, 0.8], [0.5, 0.5]], columns=["pug", "akita"])
    frame.insert(0, "id", ["a", "b"])
    return frame


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda f: f.rename(columns={"pug": "corgi"}), "header"),
        (lambda f: f.iloc[::-1], "rows"),
        (lambda f: f.assign(pug=[np.nan, 0.5]), "non-finite probability for test id a"),
        (lambda f: f.assign(pug=[0.0, 0.5], akita=[1.0, 0.5]), "not probability distributions"),
    ],
)
def test_check_submission_catches_what_kaggle_would_reject(change, message):
    check_submission(good_frame(), ["a", "b"], ["pug", "akita"])
    with pytest.raises(DogbreedsError, match=message):
        check_submission(change(good_frame()), ["a", "b"], ["pug", "akita"])


def test_score_is_kaggle_log_loss(tmp_path):
    good_frame().to_csv(tmp_path / "s.csv", index=False)
    pd.DataFrame({"id": ["b", "a"], "breed": ["pug", "akita"]}).to_csv(tmp_path / "truth.csv", index=False)
    result = score(tmp_path / "s.csv", tmp_path / "truth.csv")
    assert result.log_loss == pytest.approx(-(np.log(0.8) + np.log(0.5)) / 2)
    assert result.accuracy == pytest.approx(1.0)  # the tie at b goes to the first column
    assert result.text() == f"log loss {result.log_loss:.4f}, accuracy 100.00%"


def test_score_clips_a_certain_mistake_as_kaggle_does(tmp_path):
    pd.DataFrame({"id": ["a"], "akita": [0.0], "pug": [1.0]}).to_csv(tmp_path / "s.csv", index=False)
    pd.DataFrame({"id": ["a"], "breed": ["akita"]}).to_csv(tmp_path / "truth.csv", index=False)
    assert score(tmp_path / "s.csv", tmp_path / "truth.csv").log_loss == pytest.approx(-np.log(1e-15), rel=1e-6)


SUBMISSION = "id,akita,pug\na,0.5,0.5\nb,0.2,0.8\n"


@pytest.mark.parametrize(
    "submission, solution, message",
    [
        (SUBMISSION, "breed\nakita\n", "the header must start with id,breed (found breed)"),
        (SUBMISSION, "ID,breed\na,akita\n", "the header must start with id,breed (found ID,breed)"),
        (SUBMISSION, "id,dog\na,akita\n", "the header must start with id,breed (found id,dog)"),
        (SUBMISSION, "", "is not a readable CSV"),
        (SUBMISSION, "id,breed\n", "has no rows"),
        (SUBMISSION, "id,breed\na,akita\na,pug\n", "id a appears more than once"),
        ("id,akita,pug\na,0.5,lots\nb,0.2,0.8\n", "id,breed\na,akita\n", "'lots' for id a, breed pug is not a number"),
        ("id,akita,pug\na,0.5,0.5\na,0.2,0.8\n", "id,breed\na,akita\n", "id a appears more than once"),
        ("name,akita\na,1\n", "id,breed\na,akita\n", "the header must start with id (found name,akita)"),
    ],
)
def test_score_says_what_is_wrong_with_either_file_in_one_line(submission, solution, message, tmp_path):
    (tmp_path / "s.csv").write_text(submission)
    (tmp_path / "key.csv").write_text(solution)
    with pytest.raises(DogbreedsError, match=re.escape(message)):
        score(tmp_path / "s.csv", tmp_path / "key.csv")
