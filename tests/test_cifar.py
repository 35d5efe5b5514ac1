"""`dogbreeds cifar`: its loaders, the pickle guard, and every model on a tiny generated set."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dogbreeds.cifar import data as cifar
from dogbreeds.cifar.config import CifarConfig, model_names
from dogbreeds.errors import DogbreedsError

from helpers import dogbreeds

COLOURS = [(220, 40, 40), (40, 200, 60), (40, 60, 220), (230, 220, 40)]


def coloured_arrays(per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """32x32 images: each class its own colour, with noise; an easy task any model learns."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(COLOURS)), per_class)
    rng.shuffle(labels)
    base = np.array(COLOURS, np.float32)[labels][:, None, None, :]
    images = np.clip(base + rng.normal(0, 25, (len(labels), 32, 32, 3)), 0, 255).astype(np.uint8)
    return images, labels


def write_batches(folder, train, test, names, protocol=2):
    """The cifar-10-batches-py layout: rows of 3072 bytes, channel-major, labels as a list."""
    folder.mkdir(parents=True)

    def dump(name, value):
        with open(folder / name, "wb") as f:
            pickle.dump(value, f, protocol=protocol)

    def batch(images, labels):
        return {b"data": images.transpose(0, 3, 1, 2).reshape(len(images), -1), b"labels": labels.tolist()}

    half = len(train[0]) // 2
    dump("data_batch_1", batch(train[0][:half], train[1][:half]))
    dump("data_batch_2", batch(train[0][half:], train[1][half:]))
    dump("test_batch", batch(*test))
    dump("batches.meta", {b"label_names": [n.encode() for n in names]})
    return folder


@pytest.fixture(scope="module")
def image_folders(tmp_path_factory):
    """train/<class>/*.png and test/<class>/*.png, 24 and 6 images a class."""
    root = tmp_path_factory.mktemp("cifar-folders")
    for part, (images, labels) in (("train", coloured_arrays(24, 0)), ("test", coloured_arrays(6, 1))):
        for i, (image, label) in enumerate(zip(images, labels)):
            folder = root / part / f"colour{label}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{i}.png")
    return root


def test_python_batches_load_with_shapes_labels_and_pixels(tmp_path):
    train, test = coloured_arrays(5, 0), coloured_arrays(2, 1)
    names = ["red", "green", "blue", "yellow"]
    folder = write_batches(tmp_path / "cifar-10-batches-py", train, test, names)
    classes, (x, y), (x_test, y_test) = cifar.read_python_batches(folder)
    assert classes == names
    assert x.shape == (20, 32, 32, 3) and x.dtype == np.uint8 and x_test.shape == (8, 32, 32, 3)
    np.testing.assert_array_equal(x, train[0])  # NHWC, in file order across the batches
    np.testing.assert_array_equal(y, train[1])
    np.testing.assert_array_equal(y_test, test[1])

    data = cifar.load_cifar(str(folder), "cifar10", tmp_path / "cache")
    assert data.classes == names and len(data.train) == 20 and len(data.test) == 8
    # Written as lossless PNG under the class folder of each label: the pixels come back.
    row = data.train.iloc[0]
    path = row["path"]
    assert os.path.basename(os.path.dirname(path)) == names[row["label"]]
    index = int(os.path.basename(path).split(".")[0])
    np.testing.assert_array_equal(np.asarray(Image.open(path)), train[0][index])
    again = cifar.load_cifar(str(folder), "cifar10", tmp_path / "cache")  # reused, not rewritten
    assert again.train["path"].tolist() == data.train["path"].tolist()


def test_cifar100_batches_use_the_fine_labels(tmp_path):
    images, labels = coloured_arrays(3, 0)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rows = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    for name, count in (("train", 12), ("test", 8)):
        with open(folder / name, "wb") as f:
            pickle.dump(
                {b"data": rows[:count], b"fine_labels": labels[:count].tolist(), b"coarse_labels": [0] * count}, f
            )
    with open(folder / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [b"a", b"b", b"c", b"d"], b"coarse_label_names": [b"x"]}, f)
    classes, (x, y), (x_test, y_test) = cifar.read_python_batches(folder)
    assert classes == ["a", "b", "c", "d"]
    assert x.shape == (12, 32, 32, 3) and len(x_test) == 8
    np.testing.assert_array_equal(y, labels[:12])


class Payload:
    """What a malicious pickle does: call a function while loading."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_pickle_carrying_code_is_refused_before_it_runs(tmp_path):
    train, test = coloured_arrays(2, 0), coloured_arrays(1, 1)
    folder = write_batches(tmp_path / "batches", train, test, ["a", "b", "c", "d"])
    marker = tmp_path / "payload-ran"
    with open(folder / "data_batch_2", "wb") as f:
        pickle.dump({b"data": Payload(marker), b"labels": [0]}, f)
    with pytest.raises(DogbreedsError, match=r"asks to load io\.open.*refused"):
        cifar.read_python_batches(folder)
    assert not marker.exists()
    result = dogbreeds("cifar", "--data", folder, "--model", "mlp", "--cache-dir", tmp_path / "cache")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "refused" in result.stderr and "Traceback" not in result.stderr
    assert not marker.exists()


def test_image_folders_give_sorted_classes_and_matching_labels(image_folders, tmp_path):
    data = cifar.load_cifar(str(image_folders), "cifar10", tmp_path)
    assert data.classes == ["colour0", "colour1", "colour2", "colour3"]
    assert len(data.train) == 96 and len(data.test) == 24
    for row in data.train.itertuples():
        assert row.path.split(os.sep)[-2] == data.classes[row.label]
    assert set(data.train["orientation"]) == {1}


def test_data_errors_say_what_to_pass(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DogbreedsError, match="neither CIFAR python batches"):
        cifar.load_cifar(str(tmp_path / "empty"), "cifar10", tmp_path)

    def offline():
        raise OSError("no network")

    monkeypatch.setattr(cifar.keras.datasets.cifar10, "load_data", offline)
    with pytest.raises(DogbreedsError, match="could not download cifar10.*--data"):
        cifar.load_cifar(None, "cifar10", tmp_path)


def test_unknown_model_is_one_line(tmp_path):
    result = dogbreeds("cifar", "--model", "vgg", "--data", tmp_path)
    assert result.returncode == 2
    assert "--model 'vgg' is not one of mlp, seed-cnn, resnet9, airbench, transfer, all" in result.stderr


def test_every_model_trains_and_all_writes_the_table(image_folders, tmp_path):
    run = tmp_path / "all"
    result = dogbreeds(
        "cifar", "--model", "all", "--data", image_folders, "--epochs", 1, "--batch-size", 16,
        "--backbone", "tiny_cnn", "--weights", "none", "--image-size", 32,
        "--cache-dir", tmp_path / "cache", "--run-dir", run,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(run / "results.csv")
    assert table["model"].tolist() == ["mlp", "seed-cnn", "resnet9", "airbench", "transfer"]
    assert (table["epochs"] == 1).all() and (table["parameters"] > 0).all()
    assert table["test_accuracy"].between(0, 1).all() and (table["test_log_loss"] > 0).all()
    markdown = (run / "results.md").read_text()
    header = [cell.strip() for cell in markdown.splitlines()[0].strip("|").split("|")]
    assert header[:4] == ["model", "parameters", "epochs", "s / epoch"] and markdown.count("\n") == 7
    assert (run / "accuracy.png").stat().st_size > 10_000
    for model in table["model"]:
        assert (run / model / "model.keras").is_file() and (run / model / "history.csv").is_file()
    assert "transfer: test accuracy" in result.stdout
    metrics = pd.read_json(run / "airbench" / "metrics.json", typ="series")
    assert metrics["test_tta"] == "flip_translate" and metrics["parameters"] > 1_900_000  # airbench94's net


def test_the_perceptron_learns_the_colours(image_folders, tmp_path):
    """Labels and images stay paired through the loader: an easy task is learnt, not guessed."""
    result = dogbreeds(
        "cifar", "--model", "mlp", "--data", image_folders, "--epochs", 8, "--batch-size", 16,
        "--cache-dir", tmp_path / "cache", "--run-dir", tmp_path / "mlp",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    metrics = pd.read_json(tmp_path / "mlp" / "metrics.json", typ="series")
    assert metrics["test_accuracy"] >= 0.9  # chance is 0.25
    assert metrics["test_log_loss"] < np.log(4)


def test_cnn_is_still_airbench():
    assert model_names("cnn") == ["airbench"] and CifarConfig(model="cnn").model == "airbench"
    assert model_names("all") == ["mlp", "seed-cnn", "resnet9", "airbench", "transfer"]
    assert json.loads(CifarConfig(model="cnn").to_json())["model"] == "airbench"  # what its run folder records
