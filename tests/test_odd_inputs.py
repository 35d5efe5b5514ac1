"""Competition files and folders that are odd but not wrong, and one setting that is slow
without a word (issue 26, the smaller ones): each is handled as a user would expect, or refused
in one line."""

from __future__ import annotations

import logging
import shutil

import pandas as pd
import pytest

from dogbreeds import distribute
from dogbreeds.competition import list_test_ids

from helpers import dogbreeds


def test_hidden_files_in_test_are_not_test_images(tmp_path):
    (tmp_path / "dog1.jpg").write_bytes(b"jpeg")
    (tmp_path / "._dog1.jpg").write_bytes(b"\x00\x05\x16\x07AppleDouble")  # macOS's resource fork
    (tmp_path / ".hidden.jpg").write_bytes(b"jpeg")
    assert list_test_ids(tmp_path) == ["dog1"]


def test_a_sample_listing_the_breeds_in_another_order_gets_its_own_order(tiny_run, competition, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(competition, data)
    sample = pd.read_csv(data / "sample_submission.csv")
    reordered = ["id", *reversed(sample.columns[1:])]
    sample[reordered].to_csv(data / "sample_submission.csv", index=False)
    mine, theirs = tmp_path / "reordered.csv", tmp_path / "as-trained.csv"
    for folder, out in ((data, mine), (competition, theirs)):
        result = dogbreeds("submit", "--run", tiny_run, "--data", folder, "--out", out, "--no-tta")
        assert result.returncode == 0, result.stderr
    written, expected = pd.read_csv(mine), pd.read_csv(theirs)
    assert list(written.columns) == reordered  # the sample's order, as Kaggle reads it
    pd.testing.assert_frame_equal(written, expected[reordered])  # each breed keeps its own probabilities
    result = dogbreeds("evaluate", "--run", tiny_run, "--data", data)
    assert result.returncode == 0, result.stderr  # the labels are numbered in the run's order


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s: pd.concat([s, s.head(1)]), "the test id {first} appears twice"),
        (lambda s: s.rename(columns={s.columns[2]: s.columns[1]}), "the column {breed} appears twice"),
    ],
)
def test_a_sample_with_a_row_or_a_column_twice_is_refused(change, message, tiny_run, competition, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(competition, data)
    sample = pd.read_csv(data / "sample_submission.csv", dtype={"id": str})
    change(sample).to_csv(data / "sample_submission.csv", index=False)
    out = tmp_path / "s.csv"
    result = dogbreeds("submit", "--run", tiny_run, "--data", data, "--out", out)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert message.format(first=sample["id"].iloc[0], breed=sample.columns[1]) in result.stderr
    assert not out.exists()


def test_predict_does_not_follow_links_out_of_the_folder(tiny_run, competition, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    tests = sorted((competition / "test").glob("*.jpg"))
    shutil.copy(tests[0], folder / "mine.jpg")
    (folder / "elsewhere.jpg").symlink_to(tests[1])
    (folder / "._mine.jpg").write_bytes(b"\x00\x05\x16\x07")
    result = dogbreeds("predict", folder, "--run", tiny_run, "--json")
    assert result.returncode == 0, result.stderr
    assert "skipped 1 link(s) to files outside it" in result.stderr
    assert [line for line in result.stdout.splitlines() if line.startswith("{")][0].count("mine.jpg") == 1
    assert "elsewhere" not in result.stdout and "._mine" not in result.stdout


@pytest.mark.parametrize("has_bf16", [False, True])
def test_bfloat16_on_a_cpu_without_it_is_said(has_bf16, monkeypatch):
    monkeypatch.setattr(distribute, "cpu_has_bf16", lambda: has_bf16)
    monkeypatch.setattr(distribute, "_gpus", lambda: [])
    records = []
    heard = logging.Handler()
    heard.emit = records.append
    logger = logging.getLogger("dogbreeds")
    monkeypatch.setattr(logger, "handlers", [heard])  # the package's own logger, whatever earlier tests left on it
    monkeypatch.setattr(logger, "propagate", False)
    assert distribute.use_precision("mixed_bfloat16") == "mixed_bfloat16"
    distribute.use_precision("float32")
    said = [r.getMessage() for r in records if "bfloat16 is emulated" in r.getMessage()]
    assert len(said) == (0 if has_bf16 else 1)
