"""Bad input gets one clear line and a non-zero exit; interrupted work resumes; nothing half-written."""

import json
import shutil
import signal
import subprocess
import sys
import time

import keras
import pandas as pd
import pytest
import tensorflow as tf
from PIL import Image

from dogbreeds.cifar.config import CifarConfig
from dogbreeds.config import TrainConfig
from dogbreeds.distribute import user_facing_failures
from dogbreeds.errors import DogbreedsError
from dogbreeds.images import inspect_images
from dogbreeds.models import build_backbone
from dogbreeds.pipeline import decode
from dogbreeds.synthetic import make_competition

from helpers import TINY, console_script, dogbreeds, predicting_model


def one_error_line(result, *fragments):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


@pytest.fixture
def fresh(tmp_path):
    """A competition of our own, to break."""
    return make_competition(tmp_path / "data", n_classes=3, train_per_class=12, n_test=6, image_size=48)


def jpeg_bytes(folder, size=(40, 30)):
    """A whole JPEG's bytes, saved by PIL into the test's own `folder`."""
    path = folder / "probe.jpg"
    Image.new("RGB", size, (120, 60, 30)).save(path)
    return path.read_bytes()


def bmp_bytes(folder, mode):
    """A BMP of `mode`'s depth, as Pillow writes it (a 1-bit one passes Pillow, not TensorFlow)."""
    path = folder / f"probe-{mode}.bmp"
    Image.new(mode, (8, 8)).save(path, format="BMP")
    return path.read_bytes()


BROKEN = {  # each given a folder of the test's own (tmp_path)
    "truncated": lambda folder: jpeg_bytes(folder, (200, 150))[:700],
    "empty": lambda folder: b"",
    "text": lambda folder: b"id,breed\nnot an image\n",
    "1-bit BMP": lambda folder: bmp_bytes(folder, "1"),
}


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_inspect_names_broken_files(tmp_path, kind):
    path = tmp_path / "x.jpg"
    path.write_bytes(BROKEN[kind](tmp_path))
    problem = inspect_images([str(path)])["problem"].iloc[0]
    assert problem, kind
    expected = {"truncated": "unreadable", "empty": "empty file", "text": "not an image", "1-bit BMP": "1-bit BMP"}
    assert expected[kind] in problem


def test_inspect_refuses_a_decompression_bomb_without_decoding_it(tmp_path):
    path = tmp_path / "bomb.jpg"
    Image.new("1", (20000, 20000)).save(path, format="PNG")  # 400 MP, a few KB on disk
    assert "MP limit" in inspect_images([str(path)])["problem"].iloc[0]


def test_inspect_accepts_odd_but_valid_photos(tmp_path):
    paths = []
    for name, (mode, fmt, size) in {
        "gray": ("L", "JPEG", (50, 40)),
        "cmyk": ("CMYK", "JPEG", (50, 40)),
        "png": ("RGB", "PNG", (50, 40)),
        "webp": ("RGB", "WEBP", (50, 40)),
        "pixel": ("RGB", "JPEG", (1, 1)),
        "wide": ("RGB", "JPEG", (3000, 200)),
        "gray bmp": ("L", "BMP", (50, 40)),
        "rgb bmp": ("RGB", "BMP", (50, 40)),
        "rgba bmp": ("RGBA", "BMP", (50, 40)),
    }.items():
        paths.append(str(tmp_path / f"{name}.jpg"))
        Image.new(mode, size).save(paths[-1], format=fmt)
    assert inspect_images(paths)["problem"].tolist() == [""] * len(paths)
    for path in paths:  # and TensorFlow decodes every one, as the loaders will
        assert decode(tf.constant(path), None, 16).shape == (16, 16, 3), path


def test_training_skips_and_names_unreadable_images(fresh, tmp_path):
    victim = pd.read_csv(fresh / "labels.csv")["id"].iloc[0]
    (fresh / "train" / f"{victim}.jpg").write_bytes(b"")
    run = tmp_path / "run"
    result = dogbreeds(
        "train",
        "--data",
        fresh,
        *TINY,
        "--epochs",
        1,
        "--fine-tune-epochs",
        0,
        "--max-unreadable",
        0.05,
        "--run-dir",
        run,
    )
    assert result.returncode == 0, result.stderr
    assert f"skipping 1 unreadable training images (first: {victim} (empty file (0 bytes)))" in result.stderr
    skipped = pd.read_csv(run / "skipped_images.csv")
    assert skipped["id"].tolist() == [victim]


def test_training_refuses_when_too_many_images_are_unreadable(fresh, tmp_path):
    ids = pd.read_csv(fresh / "labels.csv")["id"].head(5)
    for i in ids:
        (fresh / "train" / f"{i}.jpg").unlink()
    result = dogbreeds("train", "--data", fresh, *TINY, "--run-dir", tmp_path / "run")
    one_error_line(result, "5 of 36 training images", "cannot be read", "(missing)", "--max-unreadable")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "breakage, fragments",
    [
        (lambda d: shutil.rmtree(d / "train"), ["train not found", "unzip train.zip"]),
        (lambda d: (d / "labels.csv").unlink(), ["labels.csv not found", "kaggle competitions download"]),
        (lambda d: (d / "labels.csv").write_text("id,dog\na,b\n"), ["labels.csv: missing column(s) breed"]),
        (lambda d: (d / "labels.csv").write_text("id,breed\n"), ["labels.csv has no rows"]),
    ],
)
def test_broken_competition_folders(fresh, tmp_path, breakage, fragments):
    breakage(fresh)
    one_error_line(dogbreeds("train", "--data", fresh, *TINY, "--run-dir", tmp_path / "run"), *fragments)


def test_without_sample_submission_training_says_what_it_uses(fresh, tmp_path):
    (fresh / "sample_submission.csv").unlink()
    result = dogbreeds(
        "train", "--data", fresh, *TINY, "--epochs", 1, "--fine-tune-epochs", 0, "--run-dir", tmp_path / "run"
    )
    assert result.returncode == 0, result.stderr
    assert "sample_submission.csv not found: using the sorted breeds of labels.csv" in result.stderr
    assert json.loads((tmp_path / "run" / "classes.json").read_text()) == ["beagle", "pug", "sheltie"]




def test_submit_stops_on_an_unreadable_test_image_before_writing(tiny_run, competition, tmp_path):
    data = tmp_path / "copy"
    shutil.copytree(competition, data)
    bad_id = pd.read_csv(data / "sample_submission.csv")["id"].iloc[2]
    (data / "test" / f"{bad_id}.jpg").write_bytes(BROKEN["truncated"](tmp_path))
    out = tmp_path / "sub.csv"
    one_error_line(dogbreeds("submit", "--run", tiny_run, "--data", data, "--out", out), bad_id, "test.zip")
    assert not out.exists() and not list(tmp_path.glob(".sub*"))


def test_submit_refuses_a_run_made_for_other_classes(tiny_run, fresh, tmp_path):
    sample = pd.read_csv(fresh / "sample_submission.csv")
    sample.rename(columns={"pug": "corgi"}).to_csv(fresh / "sample_submission.csv", index=False)
    labels = pd.read_csv(fresh / "labels.csv").replace("pug", "corgi")
    labels.to_csv(fresh / "labels.csv", index=False)
    one_error_line(
        dogbreeds("submit", "--run", tiny_run, "--data", fresh, "--out", tmp_path / "s.csv"),
        "differ",
        "pass the --data it was trained on",
    )


def test_run_without_model_or_from_another_version(tiny_run, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_run, broken)
    (broken / "model.keras").unlink()
    one_error_line(dogbreeds("submit", "--run", broken), "has no model.keras")
    config = json.loads((tiny_run / "config.json").read_text())
    config["run_format"] = 0
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(DogbreedsError, match="another run format"):
        TrainConfig.load(broken / "config.json")


def test_a_cifar_run_is_not_taken_for_a_competition_run(tiny_run, tmp_path):
    cifar_run = tmp_path / "cifar-run"
    shutil.copytree(tiny_run, cifar_run)
    (cifar_run / "config.json").write_text(CifarConfig(model="mlp").to_json())
    one_error_line(dogbreeds("submit", "--run", cifar_run), "`dogbreeds cifar` run, not a competition run")


def test_a_model_file_with_code_is_not_run(tiny_run, competition, tmp_path):
    run = tmp_path / "evil"
    shutil.copytree(tiny_run, run)
    inputs = keras.Input((48, 48, 3))
    outputs = keras.layers.Lambda(lambda x: x[:, 0, 0, :])(inputs)  # arbitrary Python in the file
    keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(outputs)).save(run / "model.keras")
    one_error_line(
        dogbreeds("submit", "--run", run, "--data", competition, "--out", tmp_path / "s.csv"), "cannot be loaded"
    )


def test_weights_that_are_not_hdf5(tmp_path):
    path = tmp_path / "weights.h5"
    path.write_text("<html>403 Forbidden</html>")
    with pytest.raises(DogbreedsError, match="is not an HDF5 file"):
        build_backbone("mobilenet_v2", str(path), 64)


def test_out_of_memory_says_which_batch_size_to_try():
    with pytest.raises(DogbreedsError, match="out of memory at --batch-size 32: try --batch-size 16"):
        with user_facing_failures(32):
            raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")


# -- interruption: kill a real training process, then resume it ---------------------------


def start_training(data, run, epochs, fine_tune_epochs):
    exe = shutil.which("dogbreeds")
    command = [exe] if exe else [sys.executable, "-m", "dogbreeds"]
    args = [
        "train",
        "--data",
        data,
        *TINY,
        "--epochs",
        epochs,
        "--fine-tune-epochs",
        fine_tune_epochs,
        "--patience",
        100,
        "--run-dir",
        run,
    ]
    return subprocess.Popen([*command, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_epochs(run, n, process, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        progress = run / "progress.json"
        if progress.is_file() and json.loads(progress.read_text())["epoch"] >= n:
            return
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    raise AssertionError(f"no {n} epochs within {timeout}s")


# SIGKILL's cut is also tested on a k-fold run (test_folds); this one runs with `pytest -m slow`.
@pytest.mark.parametrize("sig", [pytest.param(signal.SIGKILL, marks=pytest.mark.slow), signal.SIGTERM])
def test_killed_training_resumes_from_its_last_epoch(competition, tmp_path, sig):
    run = tmp_path / "run"
    process = start_training(competition, run, epochs=3, fine_tune_epochs=6)
    wait_for_epochs(run, 4, process)  # inside the fine-tuning phase
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=60)
    if sig == signal.SIGTERM:
        assert process.returncode == 130
        assert f"continue with: dogbreeds train --resume {run}" in stderr
    before = pd.read_csv(run / "history.csv")
    done = json.loads((run / "progress.json").read_text())["epoch"]
    assert len(before) >= done >= 4 and done < 9
    if sig == signal.SIGTERM:
        assert not list(run.glob(".*tmp*"))  # an orderly stop finishes or removes its writes
    # SIGKILL may cut a temporary file short, but renames never half-happen: the files resume reads are whole.
    best_before = before["val_loss"].head(done).min()
    predicting_model(run / "model.keras")  # the best model so far is intact: it loads and predicts
    last = predicting_model(run / "last.keras")  # and so is the model to resume from,
    assert int(last.optimizer.iterations) > 0  # with its optimizer's state

    result = dogbreeds("train", "--resume", run)
    assert result.returncode == 0, result.stderr
    assert f"resuming {run} after epoch {done} (fine_tune)" in result.stdout
    after = pd.read_csv(run / "history.csv")
    assert after["epoch"].tolist() == list(range(9))  # continued, not restarted, on one axis
    pd.testing.assert_frame_equal(after.head(done), before.head(done))
    assert (after["phase"] == "frozen").sum() == 3
    metrics = json.loads((run / "metrics.json").read_text())
    assert after["val_loss"].min() <= best_before and metrics["epochs"] == 9


def test_debug_shows_the_traceback(tmp_path):
    result = console_script("--debug", "train", "--data", tmp_path / "nowhere")
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_weights_of_another_backbone_is_one_line_and_nothing_else(competition, tmp_path):
    path = tmp_path / "tiny.weights.h5"
    build_backbone("tiny_cnn", "none", 64).save_weights(path)
    result = dogbreeds("train", "--data", competition, "--backbone", "mobilenet_v2", "--weights", path,
                       "--image-size", 64, "--run-dir", tmp_path / "run")  # fmt: skip
    one_error_line(result, "does not fit mobilenet_v2", "without its top")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr  # no per-layer warnings from Keras
    assert not (tmp_path / "run").exists()


def test_a_loss_that_becomes_nan_ends_the_run_with_a_line(competition, tmp_path):
    result = dogbreeds("train", "--data", competition, *TINY, "--epochs", 1, "--fine-tune-epochs", 0,
                       "--learning-rate", 1e30, "--recipe", "classic", "--run-dir", tmp_path / "run")  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "the training loss became NaN or infinite in epoch 1 (frozen)" in result.stderr
    assert "Traceback" not in result.stderr


def test_training_on_a_single_breed_is_refused_in_one_line(tmp_path):
    data = make_competition(tmp_path / "one", n_classes=2, train_per_class=6, n_test=2, image_size=32)
    labels = pd.read_csv(data / "labels.csv", dtype=str).assign(breed="sheltie")
    labels.to_csv(data / "labels.csv", index=False)
    result = dogbreeds("train", "--data", data, *TINY, "--run-dir", tmp_path / "run")
    assert result.returncode == 2 and "all of one breed (sheltie)" in result.stderr
    errors = [line for line in result.stderr.splitlines() if not line.startswith("warning: ")]
    assert len(errors) == 1 and errors[0].startswith("error: ") and not (tmp_path / "run").exists()
