"""The main job as a user runs it: the `dogbreeds` console script, train then submit."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from dogbreeds.metrics import scores

from helpers import dogbreeds, train_tiny


@pytest.fixture(scope="module")
def trained(competition, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "tiny"
    result = train_tiny(competition, run)
    return run, result


def test_train_writes_a_complete_run_folder(trained):
    run, result = trained
    for name in ("config.json", "classes.json", "model.keras", "history.csv", "history.png", "metrics.json"):
        assert (run / name).is_file(), name
    config = json.loads((run / "config.json").read_text())
    assert config["backbone"] == "tiny_cnn" and config["image_size"] == 48 and config["seed"] == 42
    assert json.loads((run / "classes.json").read_text()) == ["sheltie", "beagle", "pug"]
    log = pd.read_csv(run / "history.csv")
    assert log["epoch"].tolist() == list(range(len(log)))  # one axis across both phases
    assert {"frozen", "fine_tune"} == set(log["phase"])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["val_log_loss"] < math.log(3)  # it learned something
    assert f"validation log loss {metrics['val_log_loss']:.4f}" in result.stdout
    assert (run / "history.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_validation_figures_are_the_saved_held_out_predictions_scored(trained, competition):
    run, _ = trained
    held_out = pd.read_csv(run / "val_predictions.csv", dtype={"id": str})
    labels = pd.read_csv(competition / "labels.csv", dtype=str).set_index("id")["breed"]
    truth = labels.loc[held_out["id"]].map(list(held_out.columns[1:]).index).to_numpy()
    metrics = json.loads((run / "metrics.json").read_text())
    found = scores(held_out.iloc[:, 1:].to_numpy(), truth)
    assert metrics["val_log_loss"] == pytest.approx(found["log_loss"], abs=1e-6)
    assert metrics["val_images"] == len(held_out)


def test_the_image_size_defaults_to_the_backbones(competition, tmp_path):
    run = tmp_path / "run"
    result = dogbreeds("train", "--data", competition, "--backbone", "tiny_cnn", "--weights", "none", "--epochs", 1,
                       "--fine-tune-epochs", 0, "--batch-size", 16, "--run-dir", run)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads((run / "config.json").read_text())["image_size"] == 64  # tiny_cnn's, as `backbones` says
    listed = {line.split()[0]: line.split() for line in dogbreeds("backbones").stdout.splitlines()[1:]}
    assert listed["tiny_cnn"][3] == "64px" and listed["inception_resnet_v2"][2:4] == ["299px", "331px"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["submit", "--batch-size", 0], "--batch-size must be at least 1, got 0"),
        (["evaluate", "--batch-size", 0], "--batch-size must be at least 1, got 0"),
        (["blend", "a", "b", "--batch-size", 0], "--batch-size must be at least 1, got 0"),
        (["predict", "x.jpg", "--top", 0], "--top must be at least 1, got 0"),
        (["explain", "x.jpg", "--top", 0], "--top must be at least 1, got 0"),
    ],
)
def test_the_prediction_options_are_checked_alike_in_every_command(args, message, tmp_path):
    result = dogbreeds(*args, cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.strip() == f"error: {message}"


def test_submit_matches_sample_submission_exactly(trained, competition, tmp_path):
    run, _ = trained
    out = tmp_path / "submission.csv"
    result = dogbreeds("submit", "--run", run, "--data", competition, "--out", out)
    assert result.returncode == 0, result.stderr
    assert str(out) in result.stdout
    sample = pd.read_csv(competition / "sample_submission.csv")
    submission = pd.read_csv(out)
    assert list(submission.columns) == list(sample.columns)  # header, column by column
    assert submission["id"].tolist() == sample["id"].tolist()  # rows, in order, each once
    p = submission.iloc[:, 1:].to_numpy()
    assert np.isfinite(p).all() and (p > 0).all() and (p < 1).all()
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary file left behind

    scored = dogbreeds("score", out, "--solution", competition / "solution.csv")
    assert scored.returncode == 0
    assert float(scored.stdout.split()[2].rstrip(",")) < math.log(3)


def test_submit_refuses_to_overwrite_without_force(trained, competition, tmp_path):
    run, _ = trained
    out = tmp_path / "kept.csv"
    out.write_text("id,an earlier submission\n")
    result = dogbreeds("submit", "--run", run, "--data", competition, "--out", out, "--no-tta")
    assert result.returncode == 2 and "--force" in result.stderr
    assert out.read_text() == "id,an earlier submission\n"
    result = dogbreeds("submit", "--run", run, "--data", competition, "--out", out, "--no-tta", "--force")
    assert result.returncode == 0, result.stderr
    assert out.read_text().startswith("id,sheltie,beagle,pug\n")


def test_submit_defaults_to_newest_run_and_submissions_folder(trained, competition, tmp_path):
    run, _ = trained
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "tiny").symlink_to(run)
    result = dogbreeds("submit", "--data", competition, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "submissions" / "tiny.csv").is_file()


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--data", "/no/such/folder"], "data folder /no/such/folder does not exist"),
        (["train", "--val-split", "0.9"], "--val-split must be between 0 and 0.5"),
        (["train", "--backbone", "vgg99"], "unknown backbone 'vgg99'"),
        (["submit", "--run", "/no/such/run"], "run /no/such/run not found"),
    ],
)
def test_bad_input_is_one_clear_line(args, message, tmp_path, competition):
    if args[0] == "train" and "--data" not in args:
        args = [*args, "--data", str(competition)]
    result = dogbreeds(*args, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()


def test_offline_imagenet_names_the_file_and_how_to_get_it(monkeypatch, tmp_path):
    """Off a Kaggle kernel, with no network: only the download is stubbed; the backbone is the real one."""
    import keras

    from dogbreeds import models
    from dogbreeds.errors import DogbreedsError

    def no_internet(fname, origin, **_):
        raise Exception(f"URL fetch failure on {origin}: None -- [Errno -2] Name or service not known")

    monkeypatch.setattr(keras.utils, "get_file", no_internet)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))  # an empty cache
    monkeypatch.setenv("DOGBREEDS_KAGGLE_ROOT", str(tmp_path / "not-kaggle"))  # not a kernel
    with pytest.raises(DogbreedsError) as error:
        models.build_backbone("mobilenet_v2", "imagenet", 96)
    message = str(error.value)
    assert message.startswith("no ImageNet weights for mobilenet_v2 at 96 px: the download failed")
    assert "Name or service not known" in message and "https://" not in message  # the reason, not the URL
    assert "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_96_no_top.h5" in message
    assert str(tmp_path / "keras-home" / "models") in message and "/input" not in message
    assert "dogbreeds weights mobilenet_v2 --image-size 96 --download DIR" in message
    assert message.endswith("or pass --weights FILE")


def test_python_dash_m_works():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "dogbreeds", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "submit" in result.stdout
