"""Kaggle mode on a stand-in root: paths found by themselves, from any working directory."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from conftest import TINY, dogbreeds

QUICK = (*TINY, "--epochs", 1, "--fine-tune-epochs", 0)


@pytest.fixture
def kernel(tmp_path, competition):
    """/kaggle stand-in: working/, and the competition attached under a dataset's own name."""
    root = tmp_path / "kaggle"
    (root / "working").mkdir(parents=True)
    shutil.copytree(competition, root / "input" / "my-dog-data")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    return root, elsewhere, {"DOGBREEDS_KAGGLE_ROOT": str(root), "DOGBREEDS_DATA": ""}


def test_train_and_submit_without_paths_write_into_working(kernel):
    root, elsewhere, env = kernel
    result = dogbreeds("train", *QUICK, cwd=elsewhere, env=env)
    assert result.returncode == 0, result.stderr
    runs = list((root / "working" / "runs").iterdir())
    assert len(runs) == 1 and (runs[0] / "model.keras").is_file()
    result = dogbreeds("submit", cwd=elsewhere, env=env)
    assert result.returncode == 0, result.stderr
    kept = root / "working" / "submissions" / f"{runs[0].name}.csv"
    assert kept.read_text() == (root / "working" / "submission.csv").read_text()
    assert str(root / "working" / "submission.csv") in result.stdout
    assert not list(elsewhere.iterdir())  # nothing written where the kernel happened to be
    assert runs[0].name in dogbreeds("runs", cwd=elsewhere, env=env).stdout

    second = dogbreeds("train", *QUICK, "--seed", 7, "--run-dir", root / "working" / "runs" / "other", env=env)
    assert second.returncode == 0, second.stderr
    assert dogbreeds("submit", "--run", "other", cwd=elsewhere, env=env).returncode == 0
    replaced = pd.read_csv(root / "working" / "submission.csv")
    pd.testing.assert_frame_equal(replaced, pd.read_csv(root / "working" / "submissions" / "other.csv"))
    assert kept.is_file()  # the first run's copy stays


def test_the_feature_cache_goes_to_working(kernel):
    root, elsewhere, env = kernel
    result = dogbreeds("train", "--method", "features", *TINY, cwd=elsewhere, env=env)
    assert result.returncode == 0, result.stderr
    assert list((root / "working" / "cache").glob("*/features.npy"))


def test_two_attached_competitions_are_one_line(kernel, competition):
    root, elsewhere, env = kernel
    shutil.copytree(competition, root / "input" / "competitions" / "another")
    result = dogbreeds("train", *QUICK, cwd=elsewhere, env=env)
    assert result.returncode == 2 and "two competitions are attached" in result.stderr
    assert "another" in result.stderr and "my-dog-data" in result.stderr and "--data" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
