"""Bottleneck features: the cache, resuming an extraction, both heads, an ensemble, submit."""

import json
import os

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from dogbreeds.cache import FeatureCache, FeatureSpec, training_features
from dogbreeds.config import TrainConfig
from dogbreeds.heads import train_dense_head, train_logreg_head
from dogbreeds.models import build_backbone
from dogbreeds.settings import HeadSettings

from helpers import dogbreeds


@pytest.fixture
def images(competition):
    labels = pd.read_csv(competition / "labels.csv")
    return pd.DataFrame({"path": [str(competition / "train" / f"{i}.jpg") for i in labels["id"]]}).head(20)


def spec(**changes):
    return FeatureSpec(**{"backbone": "tiny_cnn", "weights": "none", "image_size": 48, **changes})


def test_same_settings_reuse_the_cache_and_any_change_makes_a_new_entry(images, tmp_path):
    cache = FeatureCache(tmp_path / "cache", batch_size=8)
    first = np.array(cache.features(spec(), images))
    assert first.shape == (20, 64) and cache.extracted == 20
    again = FeatureCache(tmp_path / "cache", batch_size=8)  # another command, the same disk
    np.testing.assert_array_equal(again.features(spec(), images), first)
    assert again.extracted == 0

    cache.features(spec(image_size=56), images)
    assert cache.extracted == 40  # a new size: a new entry
    cache.features(spec(), images.head(19))
    assert cache.extracted == 59  # a new file list
    cache.features(spec(view=1), images)
    assert cache.extracted == 79  # a new view
    weights = tmp_path / "w.weights.h5"
    build_backbone("tiny_cnn", "none", 48).save_weights(weights)
    cache.features(spec(weights=str(weights)), images)
    assert cache.extracted == 99  # weights from a file
    assert len([p for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".partial")]) == 5
    os.utime(images["path"].iloc[0])  # the same name, touched: could be another picture
    cache.features(spec(), images)
    assert cache.extracted == 119


def test_more_views_extract_only_the_new_view(images, tmp_path):
    cache = FeatureCache(tmp_path / "cache", batch_size=8)
    config = TrainConfig(method="features", backbone="tiny_cnn", weights="none", image_size=48, feature_views=2)
    two = training_features(cache, config.features, images)
    assert two.shape == (40, 64) and cache.extracted == 40
    config.feature_views = 3
    three = training_features(cache, config.features, images)
    assert three.shape == (60, 64) and cache.extracted == 60
    np.testing.assert_array_equal(three[:40], two)
    mirrored_differs = not np.allclose(two[:20], two[20:])
    augmented_differs = not np.allclose(three[40:], two[:20])
    assert mirrored_differs and augmented_differs


def test_an_interrupted_extraction_resumes_where_it_stopped(images, tmp_path):
    victim = images["path"].iloc[13]
    original, stat = open(victim, "rb").read(), os.stat(victim)
    with open(victim, "r+b") as f:  # same size, garbage inside: decoding fails mid-way
        f.seek(2)
        f.write(b"\x00" * (len(original) - 2))
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    cache = FeatureCache(tmp_path / "cache", batch_size=4)
    with pytest.raises(Exception):
        cache.features(spec(view=2), images)  # an augmented view: its random draws must line up too
    partial = next((tmp_path / "cache").glob("*.partial"))
    done = json.loads((partial / "progress.json").read_text())["done"]
    assert done == 12  # three whole batches of four were saved before the broken image

    with open(victim, "wb") as f:
        f.write(original)
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    resumed = FeatureCache(tmp_path / "cache", batch_size=4)
    features = np.array(resumed.features(spec(view=2), images))
    assert resumed.extracted == 20 - done
    assert not list((tmp_path / "cache").glob("*.partial"))
    fresh = FeatureCache(tmp_path / "other", batch_size=4).features(spec(view=2), images)
    np.testing.assert_allclose(features, fresh, rtol=1e-5, atol=1e-5)


def test_logreg_head_is_the_same_model_as_scikit_learn():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 6)).astype("float32") * [1, 5, 0.1, 1, 1, 2]
    y = (x[:, 0] + x[:, 1] / 5 > 0).astype(int) + (x[:, 3] > 1)
    model, search = train_logreg_head(HeadSettings(head="logreg"), x, y, x, y, n_classes=4)  # class 3 never seen
    c = search.loc[search["val_loss"].idxmin(), "C"]
    mean, scale = x.mean(0), x.std(0) + 1e-6
    expected = LogisticRegression(C=c, max_iter=300).fit((x - mean) / scale, y).predict_proba((x - mean) / scale)
    got = model.predict(x, verbose=0)
    np.testing.assert_allclose(got[:, :3], expected, atol=1e-4)
    assert np.all(got[:, 3] < 1e-6)


@pytest.fixture(scope="module")
def features_runs(competition, tmp_path_factory):
    root = tmp_path_factory.mktemp("features")
    common = [
        "--data",
        competition,
        "--method",
        "features",
        "--weights",
        "none",
        "--image-size",
        48,
        "--cache-dir",
        root / "cache",
        "--batch-size",
        8,
    ]
    runs = {}
    for name, extra in {
        "dense": ["--backbone", "tiny_cnn", "--head", "dense"],
        "logreg": ["--backbone", "tiny_cnn", "--head", "logreg"],
        "ensemble": ["--backbone", "tiny_cnn,mobilenet_v2", "--head", "logreg", "--feature-views", 1],
    }.items():
        result = dogbreeds("train", *common, *extra, "--run-dir", root / name)
        assert result.returncode == 0, result.stderr
        runs[name] = (root / name, result)
    return runs


def test_the_saved_dense_head_scores_what_training_validated():
    """Three separable clusters: the head learns them, and the Keras model it returns gives the
    validation loss training recorded for its best epoch."""
    rng = np.random.default_rng(2)
    centres = rng.normal(scale=3, size=(3, 40))
    y, y_val = rng.integers(0, 3, 600), rng.integers(0, 3, 150)
    x = (centres[y] + rng.normal(size=(600, 40)) + 5).astype("float32")
    x_val = (centres[y_val] + rng.normal(size=(150, 40)) + 5).astype("float32")
    settings = HeadSettings(epochs=30)
    model, history = train_dense_head(settings, x, y, x_val, y_val, n_classes=3)
    p = model.predict(x_val, verbose=0)
    assert -np.log(p[np.arange(150), y_val]).mean() == pytest.approx(history["val_loss"].min(), abs=1e-4)
    assert (p.argmax(1) == y_val).mean() > 0.95 and history["val_loss"].min() < 0.3
    _, again = train_dense_head(settings, x, y, x_val, y_val, n_classes=3)
    pd.testing.assert_frame_equal(history, again)  # the seed repeats the run


def test_the_dense_head_keeps_its_best_epoch_not_its_last():
    """Validation labels that disagree with training ones: the more it learns, the worse it
    validates, so it stops early and must hand back its first epoch's weights."""
    rng = np.random.default_rng(3)
    centres = rng.normal(scale=3, size=(3, 40))
    y = rng.integers(0, 3, 600)
    x = (centres[y] + rng.normal(size=(600, 40))).astype("float32")
    settings = HeadSettings(epochs=40, patience=1)
    model, history = train_dense_head(settings, x, y, x[:150], (y[:150] + 1) % 3, n_classes=3)
    best = int(history["val_loss"].idxmin())
    assert len(history) == best + 6 < 40  # stopped early, after at least 5 epochs' patience
    p = model.predict(x[:150], verbose=0)
    restored = -np.log(p[np.arange(150), (y[:150] + 1) % 3]).mean()
    assert restored == pytest.approx(history["val_loss"].min(), abs=1e-4)
    assert restored < history["val_loss"].iloc[-1] - 0.1


@pytest.mark.parametrize("name", ["dense", "logreg"])
def test_both_heads_train_and_record_the_run(features_runs, name):
    run, result = features_runs[name]
    metrics = json.loads((run / "metrics.json").read_text())
    config = json.loads((run / "config.json").read_text())
    assert config["method"] == "features" and config["head"] == name
    assert metrics["features"] == 64 and metrics["feature_rows"] == 2 * metrics["train_images"]
    assert np.isfinite(metrics["val_log_loss"]) and f"{name} head on 64 features" in result.stdout
    assert (run / ("history.png" if name == "dense" else "head_search.csv")).is_file()
    if name == "logreg":
        assert metrics["images_extracted"] == 0  # the dense run, just before, filled the cache


def test_an_ensemble_concatenates_the_backbones(features_runs):
    run, _ = features_runs["ensemble"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["features"] == 64 + 1280  # tiny_cnn + mobilenet_v2
    assert metrics["feature_rows"] == metrics["train_images"]


@pytest.mark.parametrize("name", ["logreg", "ensemble"])
def test_submit_from_a_features_run_uses_the_cached_test_features(features_runs, competition, tmp_path, name):
    run, _ = features_runs[name]
    out = tmp_path / "s.csv"
    result = dogbreeds("submit", "--run", run, "--data", competition, "--out", out)
    assert result.returncode == 0, result.stderr
    sample, submission = pd.read_csv(competition / "sample_submission.csv"), pd.read_csv(out)
    assert list(submission.columns) == list(sample.columns) and submission["id"].tolist() == sample["id"].tolist()
    np.testing.assert_allclose(submission.iloc[:, 1:].sum(axis=1), 1.0, atol=1e-5)
    assert "%" not in result.stderr  # no extraction progress bar: the test vectors were cached by train
