"""A run folder is changed only by a command of its own, one at a time, and `--force` replaces only
what the same command wrote before: the data-loss cases of issue 26, as a user meets them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dogbreeds import runs as run_folders
from dogbreeds.pipeline import TFDataLoader
from dogbreeds.runs import Run
from dogbreeds.settings import Augmentation

from helpers import TINY, dogbreeds

HOLD_THE_LOCK = """
import sys, time
from dogbreeds.runs import Run
with Run(__import__("pathlib").Path(sys.argv[1])).lock():
    print("locked", flush=True)
    time.sleep(120)
"""


@pytest.fixture(scope="module")
def run(tiny_run):
    return tiny_run


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_submit_force_replaces_an_earlier_submission_and_nothing_else(run, competition, tmp_path):
    submit = ("submit", "--run", run, "--data", competition, "--no-tta")
    out = tmp_path / "s.csv"
    assert dogbreeds(*submit, "--out", out).returncode == 0
    assert dogbreeds(*submit, "--out", out, "--force").returncode == 0  # its own file: replaced
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    result = dogbreeds(*submit, "--out", notes, "--force")
    assert result.returncode == 2 and "is not a submission" in result.stderr and notes.read_text() == "mine"
    before = files_of(run)
    result = dogbreeds(*submit, "--out", run / "config.json", "--force")
    assert result.returncode == 2 and files_of(run) == before
    result = dogbreeds(*submit, "--out", tmp_path, "--force")
    assert result.returncode == 2 and "is a folder; pass a file path" in result.stderr
    result = dogbreeds(*submit, "--out", notes / "s.csv")
    assert result.returncode == 2 and "is a file, not a folder" in result.stderr


def test_export_force_replaces_an_earlier_export_never_the_run(run, tmp_path):
    before = files_of(run)
    result = dogbreeds("export", "--run", run, "--format", "keras", "--out", run, "--force")
    assert result.returncode == 2 and "is not an earlier export" in result.stderr
    assert files_of(run) == before  # config, history, metrics: all still there
    out = tmp_path / "exported"
    assert dogbreeds("export", "--run", run, "--format", "keras", "--out", out).returncode == 0
    assert (out / "export.json").is_file() and (out / "model.keras").is_file()
    assert dogbreeds("export", "--run", run, "--format", "keras", "--out", out, "--force").returncode == 0


def test_blend_never_writes_over_a_file_it_did_not_write(run, competition, tmp_path):
    blend = ("blend", run, run, "--data", competition)
    result = dogbreeds(*blend, "--out", tmp_path / "b.json")
    assert result.returncode == 2 and "give a .csv" in result.stderr and not list(tmp_path.iterdir())
    record = tmp_path / "mine.json"
    record.write_text("precious")
    for force in ((), ("--force",)):
        result = dogbreeds(*blend, "--out", tmp_path / "mine.csv", *force)
        assert result.returncode == 2 and record.read_text() == "precious", result.stderr
    assert not (tmp_path / "mine.csv").exists()


def test_train_refuses_a_folder_that_holds_another_run(run, competition, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text((run / "config.json").read_text().replace('"seed": 42', '"seed": 7'))
    short = ("--epochs", 1, "--fine-tune-epochs", 0)
    result = dogbreeds("train", "--data", competition, *TINY, *short, "--run-dir", other)
    assert result.returncode == 2 and "holds another run" in result.stderr
    assert '"seed": 7' in (other / "config.json").read_text() and not (other / "model.keras").exists()
    (tmp_path / "a-file").write_text("")
    result = dogbreeds("train", "--data", competition, *TINY, "--run-dir", tmp_path / "a-file" / "run")
    assert result.returncode == 2 and "is a file, not a folder" in result.stderr


def test_a_run_in_use_is_refused_and_a_killed_command_leaves_it_free(run, tmp_path):
    with Run(run).lock():
        result = dogbreeds("evaluate", "--run", run)
        assert result.returncode == 2 and "in use by another dogbreeds command" in result.stderr
    holder = subprocess.Popen([sys.executable, "-c", HOLD_THE_LOCK, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = dogbreeds("export", "--run", run, "--format", "keras")  # into RUN/export-keras
        assert result.returncode == 2 and "in use" in result.stderr and not (run / "export-keras").exists()
    finally:
        holder.kill()
        holder.wait()
    with Run(run).lock():  # free again: the lock went with the killed process
        pass


def test_a_read_only_run_still_submits(run, competition, tmp_path, monkeypatch):
    writable = run_folders.write_atomic

    def read_only(path, data):  # a run attached to a Kaggle kernel as a dataset
        if Path(path).resolve().is_relative_to(run.resolve()):
            raise PermissionError(13, "Read-only file system", str(path))
        return writable(path, data)

    monkeypatch.setattr(run_folders, "write_atomic", read_only)
    out = tmp_path / "s.csv"
    result = dogbreeds("submit", "--run", run, "--data", competition, "--out", out)
    assert result.returncode == 0, result.stderr
    assert "test_predictions.csv not kept" in result.stderr
    assert len(pd.read_csv(out)) == len(pd.read_csv(competition / "sample_submission.csv"))


def test_the_decoded_image_cache_reads_changed_files_anew(tmp_path, monkeypatch):
    monkeypatch.setenv("DOGBREEDS_CACHE", str(tmp_path / "cache"))
    paths = [tmp_path / f"{i}.png" for i in range(4)]

    def paint(colour, stamp):
        for path in paths:
            Image.new("RGB", (8, 8), colour).save(path)
            os.utime(path, (stamp, stamp))

    def decoded():
        loader = TFDataLoader(8, 4, preprocess=lambda x: x, augmentation=Augmentation.none(), cache="disk")
        frame = pd.DataFrame({"path": list(map(str, paths)), "label": np.zeros(4, int)})
        return np.concatenate([x for x, _ in loader.evaluation(frame).as_numpy_iterator()])

    paint((200, 0, 0), 1_000_000)
    assert np.allclose(decoded()[..., 0], 200)
    paint((0, 0, 200), 2_000_000)  # every image replaced
    assert np.allclose(decoded()[..., 2], 200)  # the new pixels, not the cached ones


def test_evaluate_on_other_data_scores_the_images_the_run_held_out(run, competition, tmp_path):
    more = tmp_path / "more"
    shutil.copytree(competition, more)
    labels = pd.read_csv(more / "labels.csv", dtype=str)
    extra = labels.head(12).assign(id=[f"extra{i}" for i in range(12)])  # new images: the split would move
    for old, new in zip(labels.head(12)["id"], extra["id"]):
        shutil.copy(more / "train" / f"{old}.jpg", more / "train" / f"{new}.jpg")
    pd.concat([labels, extra]).to_csv(more / "labels.csv", index=False)
    result = dogbreeds("evaluate", "--run", run, "--data", more)
    assert result.returncode == 0, result.stderr
    held_out = pd.read_csv(run / "val_predictions.csv", dtype={"id": str})
    report = json.loads((run / "evaluation.json").read_text())
    assert report["images"] == len(held_out) and not held_out["id"].str.startswith("extra").any()

