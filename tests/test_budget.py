"""--time-budget: training stops before an epoch it has no time for, and the run resumes."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from dogbreeds.errors import DogbreedsError
from dogbreeds.loop import Budget

from helpers import TINY, dogbreeds, predicting_model


@pytest.mark.parametrize("text, seconds", [("8h30m", 30600), ("45m", 2700), ("90s", 90), ("1h", 3600), ("2m5s", 125)])
def test_durations_read_as_a_user_writes_them(text, seconds):
    assert Budget.parse(text) == seconds


@pytest.mark.parametrize("text", ["", "8x", "1.5h", "m", "30"])
def test_other_durations_are_refused_with_the_form_to_use(text):
    with pytest.raises(DogbreedsError, match="8h30m, 45m or 90s"):
        Budget.parse(text)


def test_a_budget_shorter_than_an_epoch_leaves_one_epoch_and_a_run_to_resume(competition, tmp_path):
    run = tmp_path / "run"
    result = dogbreeds("train", "--data", competition, *TINY, "--epochs", 2, "--fine-tune-epochs", 3,
                       "--time-budget", "1s", "--run-dir", run)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"stopped by --time-budget: continue with dogbreeds train --resume {run}" in result.stdout
    assert len(pd.read_csv(run / "history.csv")) == 1  # the first epoch always runs; no time for a second
    predicting_model(run / "model.keras")  # the first epoch's model is saved whole
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["stopped_by_time_budget"] is True and metrics["epochs"] == 1

    result = dogbreeds("train", "--resume", run)
    assert result.returncode == 0, result.stderr
    history = pd.read_csv(run / "history.csv")
    assert history["epoch"].tolist() == list(range(5)) and (history["phase"] == "frozen").sum() == 2
    assert json.loads((run / "metrics.json").read_text())["stopped_by_time_budget"] is False


def test_one_budget_covers_every_fold(competition, tmp_path):
    run = tmp_path / "folds"
    result = dogbreeds("train", "--data", competition, *TINY, "--epochs", 1, "--fine-tune-epochs", 2, "--folds", 2,
                       "--time-budget", "1s", "--run-dir", run)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "no fold is trained to its end yet" in result.stdout
    assert not (run / "fold-2").exists() and not (run / "oof.csv").exists()
    result = dogbreeds("train", "--resume", run)
    assert result.returncode == 0, result.stderr
    assert len(pd.read_csv(run / "oof.csv")) == 48
