"""Kaggle mode on a stand-in root: paths found by themselves, from any working directory."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from dogbreeds.models import build_backbone

from helpers import TINY, dogbreeds

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


# -- offline ImageNet weights: the backbone's own Keras file, attached under input/ -----------------

NO_TOP = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"  # what 32 px loads
WITH_TOP = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5"


@pytest.fixture
def offline(kernel, tmp_path, monkeypatch):
    """The stand-in kernel with its own Keras cache, and every download failing as it does offline."""
    import keras

    def no_internet(fname, origin, **_):
        raise Exception(f"URL fetch failure on {origin}: None -- [Errno -2] Name or service not known")

    monkeypatch.setattr(keras.utils, "get_file", no_internet)
    root, elsewhere, env = kernel
    env = {**env, "KERAS_HOME": str(tmp_path / "keras-home")}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return root, elsewhere, env


def keras_file(path, include_top: bool):
    """A MobileNetV2 of random weights, saved as keras.applications' own files are (legacy HDF5)."""
    import keras

    model = keras.applications.MobileNetV2(include_top=include_top, weights=None, input_shape=(32, 32, 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return model


def test_offline_imagenet_uses_the_attached_file_and_says_which(offline):
    root, elsewhere, env = offline
    attached = root / "input" / "mobilenet-v2-weights" / "keras" / NO_TOP
    source = keras_file(attached, include_top=False)
    result = dogbreeds(
        "train", "--method", "features", "--backbone", "mobilenet_v2", "--image-size", 32, "--head-epochs", 1,
        "--feature-views", 1, "--no-tta", cwd=elsewhere, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"ImageNet weights of mobilenet_v2: {attached}" in result.stdout
    loaded = build_backbone("mobilenet_v2", "imagenet", 32)
    for a, b in zip(source.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_file_with_the_top_gives_the_backbone_without_it(offline):
    root, _, _ = offline
    whole = keras_file(root / "input" / "weights" / WITH_TOP, include_top=True)
    loaded = build_backbone("mobilenet_v2", "imagenet", 32)
    assert loaded.output_shape == (None, 1, 1, 1280)
    for a, b in zip(whole.get_weights(), loaded.get_weights()):  # the whole network's first weights
        np.testing.assert_array_equal(a, b)


def test_offline_imagenet_without_the_file_is_one_line_naming_it(offline):
    root, elsewhere, env = offline
    result = dogbreeds("train", "--backbone", "mobilenet_v2", "--image-size", 32, cwd=elsewhere, env=env)
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1 and line.startswith("error: no ImageNet weights for mobilenet_v2")
    assert NO_TOP in line and str(root / "input") in line and "Name or service not known" in line
    assert not (root / "working" / "runs").exists()


def test_weights_lists_the_files_and_download_fails_in_one_line(offline, tmp_path):
    result = dogbreeds("weights", "mobilenet_v2", "xception", "--image-size", 160)
    assert result.returncode == 0, result.stderr
    assert "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_160_no_top.h5" in result.stdout
    assert "https://storage.googleapis.com/tensorflow/keras-applications/xception/" in result.stdout
    failed = dogbreeds("weights", "xception", "--download", tmp_path / "upload")
    assert failed.returncode == 2 and len(failed.stderr.strip().splitlines()) == 1
    assert "could not download" in failed.stderr and "internet" in failed.stderr
