"""`dogbreeds export`: each format gives what `predict --no-tta` gives, and nothing is half-written."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from dogbreeds.calibration import DEFAULT_FLOOR
from dogbreeds.metrics import clip
from dogbreeds.pipeline import decode

from helpers import TINY, dogbreeds, train_tiny


@pytest.fixture(scope="module")
def runs(competition, tmp_path_factory):
    """A fine-tuned run, and a features run of two folds (its export averages them)."""
    folder = tmp_path_factory.mktemp("export")
    train_tiny(competition, folder / "finetune", epochs=1, fine_tune_epochs=0)
    features = dogbreeds(
        "train", "--data", competition, "--method", "features", *TINY, "--folds", 2, "--head-epochs", 3,
        "--feature-views", 1, "--cache-dir", folder / "cache", "--run-dir", folder / "features",
    )  # fmt: skip
    assert features.returncode == 0, features.stderr
    return folder


def predicted(run, images) -> tuple[list[str], np.ndarray]:
    """`dogbreeds predict --no-tta --json` over the images: the classes and a row of probabilities each."""
    classes = json.loads((run / "classes.json").read_text())
    result = dogbreeds("predict", *images, "--run", run, "--no-tta", "--json", "--top", len(classes))
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line)["predictions"] for line in result.stdout.splitlines()]
    rows = [{p["breed"]: p["probability"] for p in predictions} for predictions in lines]
    return classes, np.array([[row[c] for c in classes] for row in rows])


def served(target, format: str, images: np.ndarray) -> np.ndarray:
    """The exported model run as a user would, without dogbreeds."""
    if format == "savedmodel":
        signature = tf.saved_model.load(str(target)).signatures["serving_default"]
        return signature(images=tf.constant(images))["probabilities"].numpy()
    if format == "keras":
        return keras.models.load_model(target / "model.keras", safe_mode=True).predict(images, verbose=0)
    interpreter = tf.lite.Interpreter(model_path=str(target / "model.tflite"))
    given, answer = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    interpreter.resize_tensor_input(given["index"], images.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(given["index"], images)
    interpreter.invoke()
    return interpreter.get_tensor(answer["index"])


@pytest.mark.parametrize("run, format", [("finetune", "savedmodel"), ("finetune", "keras"), ("features", "tflite")])
def test_export_gives_what_predict_gives(runs, competition, tmp_path, run, format):
    paths = sorted((competition / "test").glob("*.jpg"))
    target = tmp_path / f"{run}-{format}"
    result = dogbreeds("export", "--run", runs / run, "--format", format, "--out", target)
    assert result.returncode == 0, result.stderr
    assert "uint8 RGB images of 48x48 px in, 3 probabilities out" in result.stdout
    images = np.stack([decode(tf.constant(str(p)), None, 48).numpy() for p in paths])  # as the loader decodes
    classes, expected = predicted(runs / run, paths)
    assert json.loads((target / "classes.json").read_text()) == classes
    probabilities = served(target, format, images)
    np.testing.assert_allclose(clip(probabilities, DEFAULT_FLOOR), expected, atol=2e-6)  # as predict clips, to 6 digits


def test_an_interrupted_export_leaves_nothing(runs, tmp_path, monkeypatch):
    def interrupted(*_):
        raise KeyboardInterrupt

    monkeypatch.setattr(tf.lite.TFLiteConverter, "from_saved_model", interrupted)
    result = dogbreeds("export", "--run", runs / "finetune", "--format", "tflite", "--out", tmp_path / "model")
    assert result.returncode == 130 and "interrupted" in result.stderr
    assert list(tmp_path.iterdir()) == []  # neither the target nor the temporary folder


def test_bad_exports_are_one_line(runs, tmp_path):
    cases = [
        (("--run", runs / "finetune", "--format", "onnx"), "--format must be one of savedmodel, tflite, keras"),
        (("--run", tmp_path / "nothing", "--format", "keras"), "not found"),
    ]
    (tmp_path / "taken").mkdir()
    cases.append((("--run", runs / "finetune", "--format", "keras", "--out", tmp_path / "taken"), "--force"))
    for args, message in cases:
        result = dogbreeds("export", *args)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert message in result.stderr
