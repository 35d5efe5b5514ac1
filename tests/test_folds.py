"""k-fold runs (out-of-fold predictions, folds trained apart and merged, resumed) and `dogbreeds blend`."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from dogbreeds.blending import blended, fit_weights
from dogbreeds.competition import Competition, fold_split
from dogbreeds.metrics import clip, log_loss
from dogbreeds.synthetic import make_competition

from helpers import TINY, dogbreeds

FEATURES = ("--method", "features", *TINY, "--head-epochs", 8)  # a head that learns the shapes in a few epochs


def test_folds_partition_the_labelled_images_each_held_out_once(competition):
    labels = Competition.load(competition).labels
    held_out = []
    for fold in range(1, 4):
        train, val = fold_split(labels, folds=3, fold=fold, seed=5)
        assert not set(train["id"]) & set(val["id"]) and len(train) + len(val) == len(labels)
        assert set(val["label"].value_counts()) <= {5, 6}  # 16 images a breed: stratified
        held_out += val["id"].tolist()
    assert sorted(held_out) == sorted(labels["id"])


def test_the_seed_fixes_the_folds_and_another_seed_changes_them(competition):
    labels = Competition.load(competition).labels
    _, fold_2 = fold_split(labels, folds=3, fold=2, seed=5)
    _, again = fold_split(labels.copy(), folds=3, fold=2, seed=5)  # a fresh call on a copy: no state kept
    _, other = fold_split(labels, folds=3, fold=2, seed=6)
    assert again["id"].tolist() == fold_2["id"].tolist()
    assert set(other["id"]) != set(fold_2["id"])  # the seed is used, not ignored


@pytest.fixture(scope="module")
def folds_run(competition, tmp_path_factory):
    root = tmp_path_factory.mktemp("folds")
    run = root / "kfold"
    result = dogbreeds("train", "--data", competition, *FEATURES, "--folds", 3, "--cache-dir", root / "cache",
                       "--run-dir", run)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return root, run, result


def test_a_k_fold_run_predicts_every_labelled_image_out_of_fold(folds_run, competition):
    _, run, result = folds_run
    oof = pd.read_csv(run / "oof.csv", dtype={"id": str})
    sample = pd.read_csv(competition / "sample_submission.csv")
    labels = pd.read_csv(competition / "labels.csv", dtype=str)
    assert list(oof.columns) == list(sample.columns)
    assert oof["id"].tolist() == labels["id"].tolist()  # one row per labelled image, in labels.csv's order
    np.testing.assert_allclose(oof.iloc[:, 1:].sum(axis=1), 1.0, atol=1e-5)
    held = [pd.read_csv(run / f"fold-{i}" / "val_predictions.csv", dtype={"id": str}) for i in (1, 2, 3)]
    assert sorted(sum((h["id"].tolist() for h in held), [])) == sorted(labels["id"])  # each exactly once
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["folds_trained"] == [1, 2, 3] and len(metrics["per_fold"]) == 3
    truth = labels["breed"].map({c: i for i, c in enumerate(sample.columns[1:])}).to_numpy()
    assert metrics["val_log_loss"] == pytest.approx(log_loss(oof.iloc[:, 1:].to_numpy(), truth), abs=1e-6)
    assert "out-of-fold log loss" in result.stdout


def test_submit_averages_the_folds_and_evaluate_uses_every_labelled_image(folds_run, competition, tmp_path):
    _, run, _ = folds_run
    assert dogbreeds("submit", "--run", run, "--data", competition, "--out", tmp_path / "k.csv").returncode == 0
    each = []
    for i in (1, 2, 3):
        result = dogbreeds("submit", "--run", run / f"fold-{i}", "--data", competition, "--out", tmp_path / f"{i}.csv")
        assert result.returncode == 0, result.stderr
        each.append(pd.read_csv(run / f"fold-{i}" / "test_predictions.csv").iloc[:, 1:].to_numpy())
    averaged = pd.read_csv(run / "test_predictions.csv").iloc[:, 1:].to_numpy()
    np.testing.assert_allclose(averaged, np.mean(each, axis=0), atol=1e-6)

    result = dogbreeds("evaluate", "--run", run)
    assert result.returncode == 0, result.stderr
    with_tta = json.loads((run / "evaluation.json").read_text())
    assert with_tta["images"] == 48 and with_tta["tta"]
    oof = pd.read_csv(run / "oof.csv", dtype={"id": str})
    truth = pd.read_csv(competition / "labels.csv", dtype=str)["breed"].map(list(oof.columns[1:]).index)
    assert with_tta["log_loss"] == pytest.approx(log_loss(clip(oof.iloc[:, 1:].to_numpy(), 1e-6), truth), rel=1e-6)
    listing = dogbreeds("runs", "--dir", run.parent)
    assert "features, 3 folds" in listing.stdout

    # Without TTA each fold predicts the images it held out again: other figures, the same images.
    result = dogbreeds("evaluate", "--run", run, "--no-tta")
    assert result.returncode == 0, result.stderr
    without = json.loads((run / "evaluation.json").read_text())
    assert without["images"] == 48 and not without["tta"] and without["log_loss"] != with_tta["log_loss"]


def test_evaluate_refuses_data_that_does_not_label_the_held_out_images(folds_run, competition, tmp_path):
    _, run, _ = folds_run
    other = make_competition(tmp_path / "other", n_classes=3, train_per_class=16, n_test=3, image_size=48, seed=9)
    result = dogbreeds("evaluate", "--run", run, "--data", other)
    assert result.returncode == 2 and "does not label" in result.stderr and "--data it was trained on" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_folds_trained_apart_merge_and_a_fold_of_another_split_is_refused(competition, folds_run):
    root, _, _ = folds_run
    run = root / "apart"
    common = ("--data", competition, *FEATURES, "--folds", 3, "--cache-dir", root / "cache", "--run-dir", run)
    for fold in (3, 1):
        result = dogbreeds("train", *common, "--fold", fold)
        assert result.returncode == 0, result.stderr
    assert "folds 1, 3 of 3 trained" in result.stdout and not (run / "oof.csv").exists()
    assert "not all of its 3 folds" in dogbreeds("submit", "--run", run).stderr
    other = root / "other-seed"
    assert dogbreeds("train", *common[:-1], other, "--fold", 2, "--seed", 7).returncode == 0
    shutil.copytree(other / "fold-2", run / "fold-2")
    result = dogbreeds("train", "--resume", run)
    assert result.returncode == 2 and "belongs to another split" in result.stderr
    assert not (run / "oof.csv").exists()
    shutil.rmtree(run / "fold-2")
    assert dogbreeds("train", *common, "--fold", 2).returncode == 0
    assert (run / "oof.csv").is_file()


def test_a_fold_killed_mid_training_resumes_and_earlier_folds_are_kept(competition, tmp_path):
    run = tmp_path / "run"
    args = ["train", "--data", competition, *TINY, "--epochs", 1, "--fine-tune-epochs", 4, "--patience", 100,
            "--folds", 2, "--run-dir", run]  # fmt: skip
    process = subprocess.Popen([sys.executable, "-m", "dogbreeds", *map(str, args)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    progress = run / "fold-2" / "progress.json"
    deadline = time.time() + 240
    while not (progress.is_file() and json.loads(progress.read_text())["epoch"] >= 2):
        assert process.poll() is None and time.time() < deadline, process.communicate()
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    first_model = (run / "fold-1" / "model.keras").stat().st_mtime_ns
    assert not (run / "oof.csv").exists()

    result = dogbreeds("train", "--resume", run)
    assert result.returncode == 0, result.stderr
    assert "fold 1 of 2 is trained: kept" in result.stdout and "resuming" in result.stdout
    assert (run / "fold-1" / "model.keras").stat().st_mtime_ns == first_model  # not retrained
    assert len(pd.read_csv(run / "fold-2" / "history.csv")) == 5  # continued to its last epoch
    assert len(pd.read_csv(run / "oof.csv")) == 48


def test_the_fitted_blend_is_no_worse_than_its_best_run():
    rng = np.random.default_rng(0)
    labels = rng.integers(4, size=300)
    truth = np.eye(4)[labels]
    sharp = 0.7 * truth + 0.3 * rng.dirichlet(np.ones(4), 300)  # good
    noisy = 0.4 * truth + 0.6 * rng.dirichlet(np.ones(4), 300)  # worse, but its errors are its own
    useless = rng.dirichlet(np.ones(4), 300)
    stack = np.stack([noisy, sharp, useless])
    weights = fit_weights(stack, labels)
    assert weights.min() >= 0 and weights.sum() == pytest.approx(1.0)
    best = min(log_loss(p, labels) for p in stack)
    assert log_loss(np.tensordot(weights, stack, 1), labels) <= best
    assert weights[2] < 0.05 and weights[1] > weights[0]
    twice = fit_weights(stack[[1, 1]], labels)  # one run given twice: the optimum is not unique
    assert np.isfinite(twice).all() and twice.min() >= 0
    np.testing.assert_allclose(blended(twice, stack[[1, 1]]), sharp, atol=1e-9)  # the blend is that run


@pytest.fixture(scope="module")
def single_run(competition, folds_run):
    root, _, _ = folds_run
    run = root / "single"
    result = dogbreeds("train", "--data", competition, *FEATURES, "--head", "logreg", "--cache-dir", root / "cache",
                       "--run-dir", run)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return run


def test_blend_writes_a_checked_submission_and_its_record(folds_run, competition, tmp_path):
    root, run, _ = folds_run
    other = root / "kfold-logreg"
    result = dogbreeds("train", "--data", competition, *FEATURES, "--head", "logreg", "--folds", 3,
                       "--cache-dir", root / "cache", "--run-dir", other)  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = tmp_path / "blend.csv"
    result = dogbreeds("blend", run, other, "--data", competition, "--out", out)
    assert result.returncode == 0, result.stderr
    submission, sample = pd.read_csv(out), pd.read_csv(competition / "sample_submission.csv")
    assert list(submission.columns) == list(sample.columns) and submission["id"].tolist() == sample["id"].tolist()
    np.testing.assert_allclose(submission.iloc[:, 1:].sum(axis=1), 1.0, atol=1e-5)
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["runs"] == [str(run), str(other)] and sum(record["weights"]) == pytest.approx(1.0)
    figures = record["figures"]
    assert figures["images"] == 48 and figures["blend_log_loss"] <= min(figures["run_log_loss"]) + 1e-9
    assert "equal-weight mean" in result.stdout and "fitted blend" in result.stdout
    assert dogbreeds("blend", run, other, "--data", competition, "--out", out).returncode == 2  # kept without --force


def test_blend_refuses_runs_held_out_on_other_images_or_classes(folds_run, single_run, competition, tmp_path):
    _, run, _ = folds_run
    out = tmp_path / "b.csv"
    result = dogbreeds("blend", run, single_run, "--data", competition, "--out", out)
    assert result.returncode == 2 and "held out different images" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    shuffled = tmp_path / "shuffled"
    shutil.copytree(run, shuffled)
    classes = json.loads((shuffled / "classes.json").read_text())
    (shuffled / "classes.json").write_text(json.dumps(classes[::-1]))
    result = dogbreeds("blend", run, shuffled, "--data", competition, "--out", out)
    assert result.returncode == 2 and "different classes or class orders" in result.stderr
    assert not list(tmp_path.glob("b.*")) and not list(tmp_path.glob(".*tmp*"))


def test_blend_leaves_no_file_when_a_test_image_cannot_be_read(folds_run, competition, tmp_path):
    _, run, _ = folds_run
    data = tmp_path / "data"
    shutil.copytree(competition, data)
    broken = sorted((data / "test").iterdir())[0]
    broken.write_bytes(b"not a jpeg")
    out = tmp_path / "out" / "blend.csv"
    result = dogbreeds("blend", run, run, "--data", data, "--out", out)
    assert result.returncode == 2 and "cannot be read" in result.stderr
    assert not out.parent.exists() or not list(out.parent.iterdir())
