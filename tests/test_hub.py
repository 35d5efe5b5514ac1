"""KerasHub backbones: tiny random presets saved by KerasHub's own classes stand in for the
published ones (which cannot be downloaded here), found where a user's would be, and used by
every command that takes a backbone."""

from __future__ import annotations

import json
import shutil
import sys

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from dogbreeds import hub
from dogbreeds.cache import FeatureSpec
from dogbreeds.hub import TINY as HUB_TINY
from dogbreeds.hub import save_tiny_preset
from dogbreeds.models import build_backbone, get_backbone
from dogbreeds.pipeline import decode

from helpers import dogbreeds

keras_hub = pytest.importorskip("keras_hub")


@pytest.fixture(scope="module")
def presets(tmp_path_factory):
    """A tiny preset folder of every family: {family: folder}."""
    root = tmp_path_factory.mktemp("presets")
    folders = {family: root / family for family in HUB_TINY}
    for family, folder in folders.items():
        save_tiny_preset(family, folder)
    return folders


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch, tmp_path):
    """An empty kagglehub cache, and every download failing as it does with the internet off."""
    import kagglehub

    def offline(handle, *_, **__):
        raise ConnectionError(f"Failed to resolve 'api.kaggle.com' ([Errno -2] Name or service not known) {handle}")

    monkeypatch.setattr(kagglehub, "model_download", offline)
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "kagglehub"))


def test_the_preprocessing_is_the_presets_own_image_converter(presets):
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 56, 56, 3)).astype("float32")
    for family, folder in presets.items():
        name, size, _ = HUB_TINY[family]
        images = pixels if size == 56 else np.pad(pixels, ((0, 0), (4, 4), (4, 4), (0, 0)), mode="reflect")
        converter = keras_hub.layers.ImageConverter.from_preset(str(folder))
        expected = keras.ops.convert_to_numpy(converter(images))
        np.testing.assert_allclose(get_backbone(name).preprocess(images), expected, atol=1e-5, err_msg=family)


def test_each_family_pools_its_tokens_into_one_vector(presets):
    x = np.random.default_rng(1).normal(size=(2, 64, 64, 3)).astype("float32")
    for family, folder in presets.items():
        name, size, width = HUB_TINY[family]
        model = build_backbone(name, str(folder), size)
        assert model.output_shape == (None, width), family
        assert np.isfinite(model.predict(x[:, :size, :size], verbose=0)).all(), family
    # DINOv2's vector is its class token beside the mean of its patch tokens, after the last norm
    tokens = keras_hub.models.DINOV2Backbone.from_preset(str(presets["dinov2"]))({"images": x[:, :56, :56]})
    tokens = keras.ops.convert_to_numpy(tokens)
    expected = np.concatenate([tokens[:, 0], tokens[:, 1:].mean(axis=1)], axis=-1)
    vector = build_backbone("dinov2_small", str(presets["dinov2"]), 56).predict(x[:, :56, :56], verbose=0)
    np.testing.assert_allclose(vector, expected, atol=1e-5)


def test_dinov2_interpolates_to_another_multiple_of_its_patches_and_a_fixed_size_model_refuses(presets, competition):
    assert build_backbone("dinov2_small", str(presets["dinov2"]), 84).output_shape == (None, 64)
    result = dogbreeds(
        "train", "--data", competition, "--backbone", "dinov2_small", "--weights", presets["dinov2"], "--image-size", 60
    )
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "multiples of its 14 px patches (112, 224" in result.stderr
    result = dogbreeds(
        "train", "--data", competition, "--backbone", "vit_large_patch16_384_imagenet", "--weights", presets["vit"]
    )
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "takes 64 px only" in result.stderr and "--image-size 384" in result.stderr  # the preset's size


def test_a_kaggle_model_attached_to_the_kernel_is_found_newest_version_first(presets, tmp_path, monkeypatch):
    root = tmp_path / "kaggle"
    (root / "working").mkdir(parents=True)
    for version in (1, 2):
        shutil.copytree(presets["dinov2"], root / "input" / "dinov2" / "keras" / "dinov2_small" / str(version))
    monkeypatch.setenv("DOGBREEDS_KAGGLE_ROOT", str(root))
    assert hub.find_preset(hub.PRESETS["dinov2_small"]) == root / "input" / "dinov2" / "keras" / "dinov2_small" / "2"
    result = dogbreeds("weights", "dinov2_small")
    assert result.returncode == 0 and f"found {root}/input/dinov2/keras/dinov2_small/2" in result.stdout
    assert build_backbone("dinov2_small", "imagenet", 56).output_shape == (None, 64)


def test_missing_weights_are_one_line_naming_the_kaggle_model(competition, tmp_path):
    result = dogbreeds("train", "--data", competition, "--backbone", "dinov2_large", "--run-dir", tmp_path / "run")
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1 and line.startswith("error: no weights for dinov2_large")
    assert "attach the Kaggle Model keras/dinov2/keras/dinov2_large" in line and "Name or service not known" in line
    assert "--download DIR" in line and not (tmp_path / "run").exists()
    failed = dogbreeds("weights", "siglip_so400m_patch14_384", "--download", tmp_path / "upload")
    assert failed.returncode == 2 and len(failed.stderr.strip().splitlines()) == 1
    assert "could not download keras/siglip/keras/siglip_so400m_patch14_384" in failed.stderr


def test_a_folder_of_another_model_or_no_preset_is_one_line(presets, competition, tmp_path):
    train = ("train", "--data", competition, "--backbone", "dinov2_small", "--image-size", 56)
    result = dogbreeds(*train, "--weights", presets["vit"])
    assert result.returncode == 2 and "holds a ViTBackbone, not the DINOV2Backbone of dinov2_small" in result.stderr
    result = dogbreeds(*train, "--weights", tmp_path)
    assert result.returncode == 2 and "not a KerasHub preset folder (no config.json in it)" in result.stderr


def test_without_keras_hub_the_error_names_the_extra(competition, monkeypatch):
    monkeypatch.setitem(sys.modules, "keras_hub", None)
    train = ("train", "--data", competition, "--backbone", "dinov2_small", "--weights", "none", "--image-size", 56)
    result = dogbreeds(*train)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert 'pip install "dogbreeds[hub]"' in result.stderr


def test_the_cache_identity_holds_the_presets_files(presets, tmp_path):
    folder = shutil.copytree(presets["dinov2"], tmp_path / "preset")
    spec = FeatureSpec("dinov2_small", str(folder), 56)
    before = spec.identity()
    assert before == FeatureSpec("dinov2_small", str(shutil.copytree(folder, tmp_path / "moved")), 56).identity()
    with open(folder / "model.weights.h5", "ab") as f:
        f.write(b"\0")  # other weights
    assert spec.identity() != before


def test_backbones_lists_the_hub_models_with_their_pooling():
    listed = dogbreeds("backbones").stdout
    line = next(line for line in listed.splitlines() if line.startswith("dinov2_large "))
    assert "304.6M" in line and "224px" in line and "cls+mean" in line and "LVD-142M" in line
    assert "map" in next(line for line in listed.splitlines() if line.startswith("siglip_so400m_patch14_384 "))


# -- the commands, end to end ------------------------------------------------------------------------


def predicted(run, images) -> np.ndarray:
    classes = json.loads((run / "classes.json").read_text())
    result = dogbreeds("predict", *images, "--run", run, "--no-tta", "--no-calibrate", "--json", "--top", len(classes))
    assert result.returncode == 0, result.stderr
    rows = [
        {p["breed"]: p["probability"] for p in json.loads(line)["predictions"]}
        for line in result.stdout.split("\n")
        if line
    ]
    return np.array([[row[c] for c in classes] for row in rows])


def exported(run, target, size: int, paths) -> np.ndarray:
    result = dogbreeds("export", "--run", run, "--format", "savedmodel", "--out", target)
    assert result.returncode == 0, result.stderr
    images = np.stack([decode(tf.constant(str(p)), None, size).numpy() for p in paths])
    signature = tf.saved_model.load(str(target)).signatures["serving_default"]
    return signature(images=tf.constant(images))["probabilities"].numpy()


def test_a_mixed_ensemble_trains_in_folds_blends_submits_and_exports(presets, competition, tmp_path):
    common = ("--data", competition, "--method", "features", "--image-size", 56, "--feature-views", 1,
              "--cache-dir", tmp_path / "cache", "--backbone", "dinov2_small,tiny_cnn")  # fmt: skip
    weights = ("--weights", f"{presets['dinov2']},none")
    folds = dogbreeds("train", *common, *weights, "--folds", 2, "--head-epochs", 3, "--run-dir", tmp_path / "folds")
    assert folds.returncode == 0, folds.stderr
    assert (tmp_path / "folds" / "oof.csv").is_file()
    logreg = dogbreeds("train", *common, *weights, "--folds", 2, "--head", "logreg", "--run-dir", tmp_path / "logreg")
    assert logreg.returncode == 0, logreg.stderr
    assert "dinov2_small 56px" not in logreg.stdout + logreg.stderr  # the first run's vectors, from the cache
    blend = dogbreeds("blend", tmp_path / "folds", tmp_path / "logreg", "--out", tmp_path / "blend.csv")
    assert blend.returncode == 0, blend.stderr
    submission = pd.read_csv(tmp_path / "blend.csv")
    assert len(submission) == 9 and np.allclose(submission.drop(columns="id").sum(axis=1), 1, atol=1e-4)

    evaluated = dogbreeds("evaluate", "--run", tmp_path / "folds")
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads((tmp_path / "folds" / "evaluation.json").read_text())["images"] == 48  # every fold's

    paths = sorted((competition / "test").glob("*.jpg"))[:4]
    served = exported(tmp_path / "folds", tmp_path / "export", 56, paths)
    np.testing.assert_allclose(served, predicted(tmp_path / "folds", paths), atol=2e-6)


def test_fine_tuning_a_transformer_then_predict_and_export_agree(presets, competition, tmp_path):
    run = tmp_path / "vit"
    result = dogbreeds(
        "train", "--data", competition, "--backbone", "vit_large_patch16_384_imagenet", "--weights", presets["vit"],
        "--image-size", 64, "--epochs", 0, "--fine-tune-epochs", 1, "--batch-size", 8, "--run-dir", run,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    history = pd.read_csv(run / "history.csv")
    assert history["phase"].tolist() == ["fine_tune"] and history["val_loss"].notna().all()
    paths = sorted((competition / "test").glob("*.jpg"))[:4]
    np.testing.assert_allclose(exported(run, tmp_path / "export", 64, paths), predicted(run, paths), atol=2e-6)


def test_layer_decay_gives_each_block_its_share_of_the_rate(presets):
    factors = hub.layer_decay_factors(build_backbone("dinov2_small", str(presets["dinov2"]), 56), 0.5)
    assert factors["dinov2_backbone_embeddings/cls_token"] == 0.5**3  # two blocks: embeddings, 1, 2, final norm
    assert factors["dinov2_backbone_encoder/layers_0/attention/attention/query/kernel"] == 0.5**2
    assert factors["dinov2_backbone_encoder/layers_1/attention/attention/query/kernel"] == 0.5
    assert factors["dinov2_backbone_layernorm/gamma"] == 1.0
    swin = hub.layer_decay_factors(build_backbone("swin_large_patch4_window12_384", str(presets["swin"]), 64), 0.5)
    assert sorted(set(swin.values())) == [0.5**k for k in range(5, -1, -1)]  # four blocks in two stages


def test_layerwise_adam_moves_each_variable_by_its_share_of_the_rate():
    from dogbreeds.loop import FineTuneAdam

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="dense")])
    kernel, bias = (v.path for v in model.trainable_variables)
    model.compile(FineTuneAdam(0.01, rate_factors={kernel: 0.25}), "mse")
    before = [v.numpy().copy() for v in model.trainable_variables]
    x = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
    model.train_on_batch(x, np.ones((8, 3), "float32"))
    moved = [np.abs(v.numpy() - b) for v, b in zip(model.trainable_variables, before)]
    np.testing.assert_allclose(moved[0], 0.0025, rtol=1e-3)  # Adam's first step is the rate times the sign
    np.testing.assert_allclose(moved[1], 0.01, rtol=1e-3)
    assert FineTuneAdam.from_config(model.optimizer.get_config()).rate_factors == {kernel: 0.25}


def test_a_network_tflite_cannot_hold_is_one_line_and_leaves_nothing(presets, competition, tmp_path):
    run = tmp_path / "swin"
    trained = dogbreeds(
        "train", "--data", competition, "--method", "features", "--backbone", "swin_large_patch4_window12_384",
        "--weights", presets["swin"], "--image-size", 64, "--feature-views", 1, "--head-epochs", 1, "--run-dir", run,
        "--cache-dir", tmp_path / "cache",
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    result = dogbreeds("export", "--run", run, "--format", "tflite", "--out", tmp_path / "out")
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "error: this run's network does not convert to TFLite: it uses TensorFlow ops the TFLite runtime lacks "
        "(Roll); export --format savedmodel or keras"
    ]
    assert not (tmp_path / "out").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
