"""A run folder or feature cache damaged on disk (cut short, edited, another run's file) is named
in one line with what is wrong and how to go on, never met as a traceback; a damaged cache entry
is extracted again; a run's paths are recorded so that it is found from anywhere (issue 26,
classes 11, 12 and 14)."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dogbreeds.errors import DogbreedsError
from dogbreeds.runs import Run

from helpers import TINY, dogbreeds


@pytest.fixture(scope="module")
def run(tiny_run):
    return tiny_run


def edit_json(name: str, change):
    def edit(run: Path):
        value = json.loads((run / name).read_text())
        change(value)
        (run / name).write_text(json.dumps(value))

    return edit


def cut(name: str, keep: int):
    return lambda run: (run / name).write_bytes((run / name).read_bytes()[:keep])


def text(name: str, content: str):
    return lambda run: (run / name).write_text(content)


def unknown_model_class(run: Path):
    """model.keras naming a class Keras does not know: the archive whole, its config not."""
    source, rewritten = run / "model.keras", run / "rewritten.zip"
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(rewritten, "w") as new:
        for item in old.infolist():
            content = old.read(item.filename)
            if item.filename == "config.json":
                content = content.replace(b'"class_name": "Functional"', b'"class_name": "NoSuchModel"', 1)
            new.writestr(item, content)
    rewritten.replace(source)


SUBMIT, EVALUATE, RESUME = "submit", "evaluate", "resume"

DAMAGES = {
    "config.json garbage": (text("config.json", "garbage{"), "config.json", "not JSON", [SUBMIT, EVALUATE, RESUME]),
    "config.json cut short": (cut("config.json", 100), "config.json", "not JSON", [SUBMIT]),
    "config.json a list": (text("config.json", "[]"), "config.json", "a JSON list", [SUBMIT]),
    "config.json wrong-typed field": (
        edit_json("config.json", lambda c: c.update(image_size="big")),
        "config.json",
        'image_size is "big", expected int | None',
        [SUBMIT],
    ),
    "config.json null where settings belong": (
        edit_json("config.json", lambda c: c.update(augmentation=None)),
        "config.json",
        "augmentation is null",
        [SUBMIT],
    ),
    "config.json a value the command line refuses": (
        edit_json("config.json", lambda c: c.update(dropout=3.0)),
        "config.json",
        "--dropout must be in [0, 1)",
        [EVALUATE],
    ),
    "classes.json garbage": (text("classes.json", "garb"), "classes.json", "not JSON", [SUBMIT]),
    "classes.json one breed": (text("classes.json", '["pug"]'), "classes.json", "two or more", [SUBMIT]),
    "progress.json garbage": (text("progress.json", "xx"), "progress.json", "not JSON", [RESUME]),
    "progress.json extra key": (
        edit_json("progress.json", lambda p: p.update(x=1)),
        "progress.json",
        "unknown entries x",
        [RESUME],
    ),
    "last.keras cut short": (cut("last.keras", 500), "last.keras", "not a Keras model file", [RESUME]),
    "history.csv garbage": (text("history.csv", '\x00garbage\n"unterminated'), "history.csv", "CSV", [RESUME]),
    "val_predictions.csv empty": (text("val_predictions.csv", ""), "val_predictions.csv", "CSV", [EVALUATE]),
    "val_predictions.csv cut short": (
        cut("val_predictions.csv", 120),
        "val_predictions.csv",
        "cut short",
        [EVALUATE],
    ),
    "model.keras empty": (text("model.keras", ""), "model.keras", "not a Keras model file", [SUBMIT]),
    "model.keras naming an unknown class": (unknown_model_class, "model.keras", "Keras cannot load it", [SUBMIT]),
}


@pytest.mark.parametrize("case", DAMAGES)
def test_a_damaged_run_file_is_named_in_one_line(case, run, competition, tmp_path):
    damage, name, why, commands = DAMAGES[case]
    damaged = tmp_path / "run"
    shutil.copytree(run, damaged)
    damage(damaged)
    for command in commands:
        args = {
            SUBMIT: ("submit", "--run", damaged, "--data", competition, "--out", tmp_path / "s.csv"),
            EVALUATE: ("evaluate", "--run", damaged, "--data", competition),
            RESUME: ("train", "--resume", damaged),
        }[command]
        result = dogbreeds(*args)
        assert result.returncode == 2, (command, result.stderr)
        assert "Traceback" not in result.stderr
        lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and f"{damaged / name} is damaged" in lines[0] and why in lines[0], result.stderr
        assert "train the run again" in lines[0]
        assert not (tmp_path / "s.csv").exists()


def test_a_model_of_another_image_size_is_named(run, competition, tmp_path):
    other = tmp_path / "other"
    result = dogbreeds(
        "train", "--data", competition, *TINY[:-4], "--image-size", 32, "--epochs", 1, "--fine-tune-epochs", 0,
        "--run-dir", other,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    damaged = tmp_path / "run"
    shutil.copytree(run, damaged)
    shutil.copy(other / "model.keras", damaged / "model.keras")
    result = dogbreeds("submit", "--run", damaged, "--data", competition, "--out", tmp_path / "s.csv")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "takes 32x32 px images where config.json says 48 px: another run's model" in result.stderr


def write_predictions(path: Path, ids, classes, rows):
    pd.DataFrame(rows, columns=classes).assign(id=ids)[["id", *classes]].to_csv(path, index=False)


def test_an_oof_file_cut_to_fewer_images_than_the_folds_held_out_is_refused(tmp_path):
    """A file cut short at a line's end reads as a whole table of fewer images: counted against the folds."""
    classes = ["beagle", "pug"]
    root = Run(tmp_path / "kfold")
    for i, ids in ((1, ["a", "b"]), (2, ["c", "d"])):
        root.fold(i).path.mkdir(parents=True)
        root.fold(i).file(Run.classes_file).write_text(json.dumps(classes))
        write_predictions(root.fold(i).file(Run.val_predictions_file), ids, classes, [[0.5, 0.5]] * 2)
    root.file(Run.config_file).write_text(json.dumps({"folds": 2}))
    root.file(Run.classes_file).write_text(json.dumps(classes))
    write_predictions(root.file(Run.oof_file), ["a", "b", "c", "d"], classes, [[0.5, 0.5]] * 4)
    assert list(root.held_out()["id"]) == ["a", "b", "c", "d"]
    write_predictions(root.file(Run.oof_file), ["a", "b", "c"], classes, [[0.5, 0.5]] * 3)
    with pytest.raises(DogbreedsError, match="oof.csv is damaged .it holds 3 images where its folds held out 4"):
        root.held_out()
    write_predictions(root.file(Run.oof_file), ["a", "b", "c", "d"], classes, [[0.5, 0.5]] * 3 + [[0.5, 0.0]])
    with pytest.raises(DogbreedsError, match="do not add up to 1"):
        root.held_out()


@pytest.fixture(scope="module")
def features_run(competition, tmp_path_factory):
    base = tmp_path_factory.mktemp("features")
    result = dogbreeds(
        "train", "--data", competition, *TINY, "--method", "features", "--head-epochs", 3,
        "--cache-dir", base / "cache", "--run-dir", base / "run",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return base / "run"


def test_a_damaged_feature_cache_entry_is_extracted_again(features_run, competition, tmp_path):
    out = tmp_path / "first.csv"
    assert dogbreeds("submit", "--run", features_run, "--data", competition, "--out", out).returncode == 0
    cache = Path(json.loads((features_run / "config.json").read_text())["cache_dir"])
    tests = [e for e in sorted(cache.glob("*/meta.json")) if "/test/" in json.loads(e.read_text())["first"]]
    cut_short, objects = (e.parent / "features.npy" for e in tests)  # the plain and mirror views of test/
    cut_short.write_bytes(cut_short.read_bytes()[:200])
    np.save(objects, np.array([object()] * 3, dtype=object), allow_pickle=True)
    again = tmp_path / "again.csv"
    result = dogbreeds("submit", "--run", features_run, "--data", competition, "--out", again)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("is damaged") == 2 and "extracting it again" in result.stderr
    pd.testing.assert_frame_equal(pd.read_csv(out), pd.read_csv(again), atol=1e-5)  # the same vectors again
    assert np.load(cut_short).dtype == np.float32 and np.load(objects).dtype == np.float32


def test_a_recorded_cache_folder_that_cannot_exist_here_falls_back_to_the_default(
    features_run, competition, tmp_path
):
    moved = tmp_path / "run"
    shutil.copytree(features_run, moved)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    edit_json("config.json", lambda c: c.update(cache_dir=str(blocker / "cache")))(moved)
    result = dogbreeds("submit", "--run", moved, "--data", competition, "--out", tmp_path / "s.csv", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"the run's feature cache {blocker / 'cache'} cannot be made here" in result.stderr
    assert list((tmp_path / "cache").glob("*/features.npy"))  # the default place, under the current directory
    result = dogbreeds(
        "train", "--data", competition, *TINY, "--method", "features", "--cache-dir", blocker / "cache",
        "--run-dir", tmp_path / "new",
    )  # fmt: skip
    assert result.returncode == 2 and f"the feature cache {blocker / 'cache'} cannot be made" in result.stderr


def test_a_run_trained_with_relative_paths_is_found_from_anywhere(competition, tmp_path):
    """config.json records absolute paths: submit from another directory, --resume --data after a move."""
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copytree(competition, work / "data")
    result = dogbreeds(
        "train", "--data", "data", *TINY, "--epochs", 1, "--fine-tune-epochs", 1, "--run-dir", "run", cwd=work
    )
    assert result.returncode == 0, result.stderr
    config = json.loads((work / "run" / "config.json").read_text())
    assert config["data"] == str(work / "data") and Path(config["cache_dir"]).is_absolute()
    result = dogbreeds("submit", "--run", work / "run", "--out", "s.csv", "--no-tta", cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    assert len(pd.read_csv(elsewhere / "s.csv")) == len(pd.read_csv(competition / "sample_submission.csv"))

    (work / "data").rename(work / "moved")  # the competition folder moved: --resume --data says where
    other = tmp_path / "other"
    shutil.copytree(work / "moved", other)
    labels = pd.read_csv(other / "labels.csv")
    labels.iloc[:-1].to_csv(other / "labels.csv", index=False)
    result = dogbreeds("train", "--resume", work / "run", "--data", other)
    assert result.returncode == 2 and "is not the labels.csv run" in result.stderr
    result = dogbreeds("train", "--resume", work / "run", "--data", work / "moved")
    assert result.returncode == 0, result.stderr
    assert json.loads((work / "run" / "config.json").read_text())["data"] == str(work / "moved")
