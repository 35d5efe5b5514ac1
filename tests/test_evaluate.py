"""evaluate, calibrated submit, predict and runs, as a user runs them: through the console script."""

import json
import os
import re
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dogbreeds.calibration import DEFAULT_FLOOR, Calibration, apply_temperature
from dogbreeds.competition import Competition, split_frame
from dogbreeds.config import TrainConfig
from dogbreeds.inference import Predictor
from dogbreeds.metrics import clip, log_loss

from helpers import console_script, dogbreeds, train_tiny

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def evaluated(competition, tmp_path_factory):
    """A tiny_cnn run, trained briefly, then evaluated by name from a folder holding runs/."""
    home = tmp_path_factory.mktemp("home")
    run = home / "runs" / "tiny"
    train_tiny(competition, run, epochs=1, fine_tune_epochs=3)
    result = dogbreeds("evaluate", "--run", "tiny", cwd=home)
    assert result.returncode == 0, result.stderr
    return home, run, result


def test_evaluate_writes_figures_tables_pictures_and_a_calibration(evaluated, competition):
    home, run, result = evaluated
    report = json.loads((run / "evaluation.json").read_text())
    # The very images training held out, recomputed from the run's config.
    config = TrainConfig.from_json((run / "config.json").read_text())
    _, val = split_frame(
        Competition.load(competition).labels, val_split=config.val_split, seed=config.seed, limit=config.limit
    )
    assert report["images"] == len(val) == sum(row["images"] for row in report["per_breed"])
    assert {row["breed"] for row in report["per_breed"]} == set(val["breed"])
    for key in ("log_loss", "log_loss_calibrated", "accuracy", "top5_accuracy"):
        assert np.isfinite(report[key]), key
    # The figures are the model's own on those images: predicted again here, and scored.
    raw = Predictor.open(run, calibration=False).predict(val, tta=report["tta"])
    truth = val["label"].to_numpy()
    assert report["log_loss"] == pytest.approx(log_loss(clip(raw, DEFAULT_FLOOR), truth), rel=1e-4)
    assert report["accuracy"] == pytest.approx(np.mean(raw.argmax(axis=1) == truth))
    mistakes = sum(row["images"] - row["correct"] for row in report["per_breed"])
    assert sum(pair["mistakes"] for pair in report["most_confused_pairs"]) == mistakes  # 3 classes: 3 pairs, all listed
    assert round(report["accuracy"] * len(val)) == len(val) - mistakes

    saved = Calibration.load(run / "calibration.json")
    assert saved.temperature > 0 and saved.images == len(val) and saved.tta
    assert saved.log_loss_after == pytest.approx(report["log_loss_calibrated"])
    assert report["log_loss_calibrated"] == pytest.approx(log_loss(saved.apply(raw), truth), rel=1e-4)

    markdown = (run / "evaluation.md").read_text()
    for heading in ("# Evaluation of tiny", "## Calibration", "## Most-confused pairs", "## Per-breed accuracy"):
        assert heading in markdown
    for breed in ("sheltie", "beagle", "pug"):
        assert re.search(rf"^\| {breed} +\|", markdown, re.MULTILINE), breed  # a row of the per-breed table
    for name in ("confusion.png", "examples.png", "reliability.png"):
        data = (run / name).read_bytes()
        assert data[:8] == PNG_MAGIC, name
        with Image.open(run / name) as image:
            image.verify()
        with Image.open(run / name) as image:
            assert image.width >= 500 and image.height >= 400, name
            assert len(set(image.convert("L").getdata())) > 20, f"{name} looks blank"
        assert f"]({name})" in markdown
    assert not [p for p in run.iterdir() if p.name.startswith(".")]  # no temporary file left
    assert f"log loss {report['log_loss']:.4f}" in result.stdout and "most-confused pairs" in result.stdout


@pytest.fixture
def hot_run(evaluated, tmp_path):
    """A copy of the run with a strong calibration (T = 4, floor 1e-3), so its effect shows."""
    _, run, _ = evaluated
    copy = tmp_path / "hot"
    shutil.copytree(run, copy)
    (copy / "calibration.json").write_text(Calibration(temperature=4.0, floor=1e-3, images=1).to_json())
    return copy


def test_submit_applies_the_calibration_and_the_csv_stays_valid(hot_run, competition, tmp_path):
    from dogbreeds.submission import submit

    result = dogbreeds("submit", "--run", hot_run, "--data", competition, "--out", tmp_path / "hot.csv")
    assert result.returncode == 0, result.stderr
    assert "calibrated with temperature 4.000 and floor 0.001" in result.stdout
    calibrated = pd.read_csv(tmp_path / "hot.csv")
    sample = pd.read_csv(competition / "sample_submission.csv")
    assert list(calibrated.columns) == list(sample.columns) and calibrated["id"].tolist() == sample["id"].tolist()
    p = calibrated.iloc[:, 1:].to_numpy()
    assert np.isfinite(p).all() and (p >= 1e-3 * 0.99).all() and (p < 1).all()
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)

    plain = submit(hot_run, competition, tmp_path / "plain.csv", calibrate=False)
    assert plain.calibration is None and "not applied" in plain.calibration_note
    raw = pd.read_csv(plain.path).iloc[:, 1:].to_numpy()
    np.testing.assert_allclose(p, clip(apply_temperature(raw, 4.0), 1e-3), atol=1e-5)
    assert np.abs(p - raw).max() > 0.01  # the calibration did something
    assert (p.argmax(axis=1) == raw.argmax(axis=1)).all()  # and changed no ranking

    (hot_run / "calibration.json").unlink()
    before = submit(hot_run, competition, tmp_path / "none.csv")
    assert "no calibration" in before.calibration_note and "dogbreeds evaluate" in before.calibration_note
    np.testing.assert_allclose(pd.read_csv(before.path).iloc[:, 1:].to_numpy(), raw, atol=1e-7)


def make_photos(folder):
    """A large RGBA PNG, a small grayscale JPEG, and a folder with one more photo and a note."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    wide = folder / "wide.png"
    Image.fromarray(rng.integers(0, 255, (300, 1000, 4), dtype=np.uint8), "RGBA").save(wide)
    gray = folder / "gray.jpg"
    Image.fromarray(rng.integers(0, 255, (25, 17), dtype=np.uint8), "L").save(gray)
    album = folder / "album"
    (album / "inner").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(album / "inner" / "b.JPEG")
    Image.fromarray(rng.integers(0, 255, (40, 90, 3), dtype=np.uint8)).save(album / "a.png")
    (album / "notes.txt").write_text("not a photo")
    return [wide, gray, album], [wide, gray, album / "a.png", album / "inner" / "b.JPEG"]


def test_predict_json_lines(evaluated, tmp_path):
    home, run, _ = evaluated
    given, expected = make_photos(tmp_path / "photos")
    result = dogbreeds("predict", *given, "--run", run, "--top", 2, "--json")
    assert result.returncode == 0, result.stderr
    assert "calibrated with temperature" in result.stderr  # the run was evaluated
    lines = result.stdout.strip().splitlines()
    assert len(lines) == len(expected)
    classes = json.loads((run / "classes.json").read_text())
    for line, path in zip(lines, expected):
        row = json.loads(line)
        assert list(row) == ["path", "predictions"] and row["path"] == str(path)
        assert len(row["predictions"]) == 2
        assert all(list(p) == ["breed", "probability"] for p in row["predictions"])
        breeds = [p["breed"] for p in row["predictions"]]
        probabilities = [p["probability"] for p in row["predictions"]]
        assert len(set(breeds)) == 2 and set(breeds) <= set(classes)
        assert 1 >= probabilities[0] >= probabilities[1] > 0 and sum(probabilities) <= 1 + 1e-6


def test_predict_applies_the_calibration(hot_run, tmp_path):
    from dogbreeds.prediction import predict_images

    _, paths = make_photos(tmp_path / "photos")
    hot = predict_images(paths, hot_run, top=10)  # more than there are classes: all of them
    plain = predict_images(paths, hot_run, top=10, calibrate=False)
    assert "temperature 4.000" in hot.calibration_note and "not applied" in plain.calibration_note
    for h, p in zip(hot.predictions, plain.predictions):
        assert len(h.top) == 3 and [b for b, _ in h.top] == [b for b, _ in p.top]
        classes = [b for b, _ in p.top]
        raw = np.array([[dict(p.top)[c] for c in classes]])
        np.testing.assert_allclose([v for _, v in h.top], clip(apply_temperature(raw, 4.0), 1e-3)[0], atol=1e-6)
        assert h.text().splitlines()[0] == str(h.path)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d / "absent.jpg", "absent.jpg not found"),
        (
            lambda d: (d / "broken.jpg").write_bytes(b"\xff\xd8 nothing") and d / "broken.jpg",
            "broken.jpg is not a readable image",
        ),
        (lambda d: (d / "empty").mkdir() or d / "empty", "holds no .jpg, .jpeg or .png files"),
    ],
)
def test_predict_bad_path_is_one_clear_line(make, message, tmp_path):
    from dogbreeds.errors import DogbreedsError
    from dogbreeds.prediction import checked_images, image_paths

    with pytest.raises(DogbreedsError, match=message):
        checked_images(image_paths([make(tmp_path)]))


def test_predict_bad_path_through_the_console_script(evaluated, tmp_path):
    _, run, _ = evaluated
    (tmp_path / "ok.png").write_bytes(b"")
    result = console_script("predict", tmp_path / "ok.png", "--run", run)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "ok.png is not a readable image" in lines[0], (
        result.stderr
    )


def test_runs_lists_newest_first_with_scores(evaluated, tmp_path):
    _, run, _ = evaluated
    runs = tmp_path / "runs"
    shutil.copytree(run, runs / "older")
    shutil.copytree(run, runs / "newer")
    os.utime(runs / "older" / "model.keras", (1.7e9, 1.7e9))
    os.utime(runs / "newer" / "model.keras", (1.8e9, 1.8e9))
    (runs / "newer" / "evaluation.json").unlink()
    (runs / "half").mkdir()
    config = json.loads((run / "config.json").read_text()) | {"method": "distill", "image_size": 64}
    (runs / "half" / "config.json").write_text(json.dumps(config))
    os.utime(runs / "half" / "config.json", (1.6e9, 1.6e9))
    (runs / "not-a-run").mkdir()

    result = dogbreeds("runs", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.strip().splitlines()
    assert header.split()[:5] == ["run", "backbone", "method", "size", "date"]
    assert [row.split()[0] for row in rows] == ["newer", "older", "half"]
    metrics = json.loads((run / "metrics.json").read_text())
    evaluation = json.loads((run / "evaluation.json").read_text())
    newer, older, half = (row.split() for row in rows)
    assert newer[1:4] == ["tiny_cnn", "finetune", "48"] and newer[-1] == "-"
    assert newer[-3:-1] == [f"{metrics['val_log_loss']:.4f}", f"{metrics['val_accuracy']:.2%}"]
    assert older[-1] == f"{evaluation['log_loss_calibrated']:.4f}"
    assert half[1:5] == ["tiny_cnn", "distill", "64", "unfinished"]
