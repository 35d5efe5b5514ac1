"""`dogbreeds explain` and evaluate's heat maps: Grad-CAM finds the class evidence where it is, in
every backbone family, for fine-tuned, features and k-fold runs; the pictures and the errors."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil

import keras
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dogbreeds.evaluation import evaluate, write_evaluation
from dogbreeds.explain import GradCam, at_map, explain_images, grid, heat_maps, layouts, prefix_tokens, split
from dogbreeds.inference import Predictor, make_loader
from dogbreeds.models import build_backbone, build_classifier
from dogbreeds.settings import Loading

from helpers import TINY, console_script, dogbreeds

PNG = b"\x89PNG\r\n\x1a\n"
SIZE, CELL = 48, 8  # the runs' image size; the hand-made network's map has a cell per 8x8 pixels


def colour_classifier(classes: int = 3) -> keras.Model:
    """A classifier as build_classifier makes one, its weights set by hand: channel k of the map
    is how much more of colour k (red, green, blue) than of the others each 8x8 cell holds, and
    breed k's logit is 10 times that channel's mean. Breed k's evidence is where colour k is."""
    inputs = keras.Input((SIZE, SIZE, 3))
    colours = keras.layers.Conv2D(3, 1, name="colours")(inputs)
    x = keras.layers.AveragePooling2D(CELL, name="cells")(keras.layers.ReLU(name="positive")(colours))
    model = build_classifier(keras.Model(inputs, x, name="colour_map"), classes, dropout=0.0)
    model.get_layer("colour_map").get_layer("colours").set_weights([np.eye(3, 3)[None, None] * 1.5 - 0.5, np.zeros(3)])
    model.get_layer("breed").set_weights([10 * np.eye(3, classes), np.zeros(classes)])
    return model


def photo(path, squares: dict[tuple[int, int, int], tuple[slice, slice]]):
    """A grey photo holding squares of pure colour (RGB: where)."""
    pixels = np.full((SIZE, SIZE, 3), 128, np.uint8)
    for colour, where in squares.items():
        pixels[where] = colour
    Image.fromarray(pixels).save(path)
    return path


RED, BLUE = (255, 0, 0), (0, 0, 255)
TOP_LEFT, BOTTOM_RIGHT = np.s_[:13, :13], np.s_[36:, 36:]  # red's square is the larger: its breed is predicted


@pytest.fixture(scope="module")
def colour_run(tiny_run):
    """The module's tiny run with the hand-made network as its model: sheltie is red, beagle green, pug blue."""
    colour_classifier().save(tiny_run / "model.keras")
    assert json.loads((tiny_run / "classes.json").read_text()) == ["sheltie", "beagle", "pug"]
    return tiny_run


def test_the_map_lights_the_corner_that_holds_the_breeds_evidence(colour_run, tmp_path):
    two = photo(tmp_path / "two.png", {RED: TOP_LEFT, BLUE: BOTTOM_RIGHT})
    result = explain_images([two], colour_run, out=tmp_path / "out", top=3)
    sheltie = result.explanations[0]
    assert sheltie.breed == "sheltie" and sheltie.predicted and sheltie.top[0][0] == "sheltie"
    assert result.layers == ["tiny_cnn's cells"] and sheltie.heat_map.shape == (6, 6)  # config.json's backbone
    asked = explain_images([two], colour_run, breed="Pug", out=tmp_path / "pug").explanations[0]
    assert asked.breed == "pug" and not asked.predicted
    for explanation, corner, other in ((sheltie, (0, 0), np.s_[3:, 3:]), (asked, (5, 5), np.s_[:3, :3])):
        heat = explanation.heat_map
        assert np.unravel_index(heat.argmax(), heat.shape) == corner and heat.max() == pytest.approx(1.0)
        assert heat[other].max() < 0.05  # nothing where the other colour is, nor on the grey
    mirrored = photo(tmp_path / "mirrored.png", {RED: np.s_[35:, 35:], BLUE: np.s_[:12, :12]})
    heat = explain_images([mirrored], colour_run, breed="sheltie", out=tmp_path / "m").explanations[0].heat_map
    assert np.unravel_index(heat.argmax(), heat.shape) == (5, 5)  # the map follows the evidence


def test_explain_writes_a_picture_per_photo_and_replaces_only_its_own(colour_run, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    photo(photos / "a.png", {RED: TOP_LEFT})
    photo(photos / "b.jpg", {BLUE: BOTTOM_RIGHT})
    out = tmp_path / "out"
    result = dogbreeds("explain", photos, "--run", colour_run, "--out", out)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["a-gradcam.png", "b-gradcam.png"]  # no temporary left
    for picture in out.iterdir():
        assert picture.read_bytes()[:8] == PNG
        with Image.open(picture) as image:
            assert image.width >= 800 and len(set(image.convert("L").getdata())) > 50, picture
    assert "Grad-CAM at tiny_cnn's cells (6x6)" in result.stdout
    assert f"{out / 'b-gradcam.png'}: {photos / 'b.jpg'}, map of pug" in result.stdout

    again = dogbreeds("explain", photos / "a.png", "--run", colour_run, "--out", out)
    assert again.returncode == 2 and "a-gradcam.png exists; pass --force" in again.stderr
    before = (out / "a-gradcam.png").stat().st_mtime_ns
    assert dogbreeds("explain", photos / "a.png", "--run", colour_run, "--out", out, "--force").returncode == 0
    assert (out / "a-gradcam.png").stat().st_mtime_ns > before
    (out / "b-gradcam.png").write_text("someone's notes")
    kept = dogbreeds("explain", photos / "b.jpg", "--run", colour_run, "--out", out, "--force")
    assert kept.returncode == 2 and "is not a PNG picture" in kept.stderr
    assert (out / "b-gradcam.png").read_text() == "someone's notes"
    (tmp_path / "other").mkdir()
    photo(tmp_path / "other" / "a.jpg", {RED: TOP_LEFT})
    twice = dogbreeds("explain", photos / "a.png", tmp_path / "other" / "a.jpg", "--run", colour_run, "--out", out)
    assert twice.returncode == 2 and "would both be drawn in" in twice.stderr


@pytest.mark.jax
def test_explain_under_jax_draws_the_pictures_tensorflow_draws(colour_run, tmp_path):
    """Under KERAS_BACKEND=jax the gradient at the map is JAX's (distribute.gradients), and so the
    maps and the pictures are TensorFlow's, to a shade: the same run, photos and breed in both."""
    if importlib.util.find_spec("jax") is None or keras.backend.backend() != "tensorflow":
        pytest.skip("needs jax installed, and TensorFlow in this process to compare with")
    photos = tmp_path / "photos"
    photos.mkdir()
    photo(photos / "a.png", {RED: TOP_LEFT, BLUE: BOTTOM_RIGHT})
    photo(photos / "b.png", {BLUE: TOP_LEFT})
    jax = console_script("explain", photos, "--run", colour_run, "--breed", "pug", "--out", tmp_path / "jax",
                         env={"KERAS_BACKEND": "jax"})  # fmt: skip
    assert jax.returncode == 0, jax.stderr
    assert f"{tmp_path / 'jax' / 'a-gradcam.png'}: {photos / 'a.png'}, map of pug" in jax.stdout
    explain_images([photos], colour_run, breed="pug", out=tmp_path / "tf")
    for name in ("a-gradcam.png", "b-gradcam.png"):
        assert (tmp_path / "jax" / name).read_bytes()[:8] == PNG
        drawn = [np.asarray(Image.open(tmp_path / b / name).convert("RGB"), dtype=int) for b in ("jax", "tf")]
        assert drawn[0].shape == drawn[1].shape, name
        shades = np.abs(drawn[0] - drawn[1]).max(axis=-1)  # a pixel on a colour's edge may round the other way
        assert shades.max() <= 8 and (shades > 0).mean() < 1e-3, (name, shades.max(), (shades > 0).mean())


@pytest.mark.parametrize(
    "case, message",
    [
        ("run", "run {tmp}/nowhere not found"),
        ("breed", "--breed 'shelty' is not a breed of run"),
        ("unreadable", "broken.jpg is not a readable image"),
        ("missing", "absent.jpg not found"),
    ],
)
def test_a_bad_run_breed_or_image_is_one_line_and_nothing_is_written(colour_run, tmp_path, case, message):
    good = photo(tmp_path / "good.png", {RED: TOP_LEFT})
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    args = {
        "run": [good, "--run", tmp_path / "nowhere"],
        "breed": [good, "--run", colour_run, "--breed", "shelty"],
        "unreadable": [good, tmp_path / "broken.jpg", "--run", colour_run],
        "missing": [good, tmp_path / "absent.jpg", "--run", colour_run],
    }[case]
    result = dogbreeds("explain", *args, "--out", tmp_path / "out")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert message.format(tmp=tmp_path) in lines[0]
    if case == "breed":  # how to see the names, and the nearest ones
        assert "did you mean sheltie?" in lines[0] and f"{colour_run / 'classes.json'}" in lines[0]
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def kfold_features_run(competition, tmp_path_factory):
    """Two folds, each a dense head on tiny_cnn's cached vectors."""
    root = tmp_path_factory.mktemp("explain-folds")
    run = root / "kfold"
    result = dogbreeds("train", "--data", competition, "--method", "features", *TINY, "--head-epochs", 8,
                       "--folds", 2, "--cache-dir", root / "cache", "--run-dir", run)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return run


def test_a_k_fold_features_run_maps_through_its_heads_and_backbone_and_averages_its_folds(
    kfold_features_run, competition, tmp_path
):
    run = kfold_features_run
    image = sorted((competition / "test").iterdir())[0]
    result = explain_images([image], run, out=tmp_path / "k")
    assert re.fullmatch(r"tiny_cnn's re_lu(_\d+)?", result.layers[0])  # Keras numbers its layers' names
    heat = result.explanations[0].heat_map
    assert heat.shape == (3, 3) and 0 <= heat.min() and heat.max() <= 1 and heat.std() > 0.05
    breed = result.explanations[0].breed
    folds = [explain_images([image], run / f"fold-{i}", breed=breed, out=tmp_path / f"{i}") for i in (1, 2)]
    np.testing.assert_allclose(heat, np.mean([f.explanations[0].heat_map for f in folds], axis=0), atol=1e-5)
    assert (tmp_path / "k" / f"{image.stem}-gradcam.png").read_bytes()[:8] == PNG
    other = next(c for c in json.loads((run / "classes.json").read_text()) if c != breed)
    elsewhere = explain_images([image], run, breed=other, out=tmp_path / "other").explanations[0].heat_map
    assert not np.allclose(elsewhere, heat, atol=0.05)  # the head's weights of the breed decide the map


def test_evaluate_draws_each_example_under_the_map_of_the_fold_that_held_it_out(kfold_features_run):
    run = kfold_features_run
    result = evaluate(run)
    assert result.heat_maps is not None and result.heat_maps.shape == (len(result.shown), 3, 3)
    assert np.isfinite(result.heat_maps).all() and result.heat_maps.max() <= 1
    first = result.images.iloc[result.shown[:1]]
    held = {i: set(pd.read_csv(run / f"fold-{i}" / "val_predictions.csv", dtype={"id": str})["id"]) for i in (1, 2)}
    fold = next(i for i in (1, 2) if first["id"].iloc[0] in held[i])
    breed = result.raw[result.shown[:1]].argmax(axis=1)
    alone, _ = heat_maps(Predictor.open(run / f"fold-{fold}"), first, breed)
    np.testing.assert_allclose(result.heat_maps[0], alone[0], atol=1e-5)
    write_evaluation(result)
    assert (run / "examples.png").read_bytes()[:8] == PNG


def test_evaluate_without_the_backbone_weights_draws_the_examples_without_maps(kfold_features_run, tmp_path):
    """A features run's vectors are cached, so it evaluates where its backbone's weights are not."""
    run = shutil.copytree(kfold_features_run, tmp_path / "moved")
    for config in run.rglob("config.json"):
        config.write_text(config.read_text().replace('"weights": "none"', f'"weights": "{tmp_path / "gone.h5"}"'))
    result = dogbreeds("evaluate", "--run", run)
    assert result.returncode == 0, result.stderr
    assert "warning: examples.png without heat maps: --weights" in result.stderr and "gone.h5" in result.stderr
    assert (run / "examples.png").read_bytes()[:8] == PNG


def test_every_backbone_family_is_mapped_on_its_own_grid(tmp_path):
    """The layer is found the same way in each: CNNs' last map; a transformer's last tokens whose
    patches reach the score: CLIP's last block reads them (its head takes the class token only),
    ViT's one encoder layer runs all its blocks, so its patch embeddings. Tokens are laid out as
    the image is: a change in its top-right corner changes only the top-right patches."""
    keras_hub = pytest.importorskip("keras_hub")
    from dogbreeds.hub import TINY as HUB_TINY
    from dogbreeds.hub import save_tiny_preset

    expected = {"tiny_cnn": (r"re_lu(_\d+)?", 4), "mobilenet_v2": ("out_relu", 2)}  # 64 px: strides 16 and 32
    expected |= {
        "dinov2": (".*_layernorm", 4), "dinov3": (".*_layernorm", 4), "siglip": (".*_post_layer_norm", 4),
        "clip": (".*_encoder_block_0", 4), "vit": (".*patching_and_embedding", 4), "swin": ("norm", 8),
    }  # fmt: skip
    assert set(expected) - {"tiny_cnn", "mobilenet_v2"} == set(HUB_TINY) and keras_hub
    pixels = np.random.default_rng(0).integers(0, 255, (70, 90, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "photo.png")
    images = pd.DataFrame({"path": [str(tmp_path / "photo.png")] * 3})  # one photo, a map per breed
    for family, (layer, side) in expected.items():
        if family in HUB_TINY:
            name, size, _ = HUB_TINY[family]
            weights = str(tmp_path / family)
            save_tiny_preset(family, weights)
        else:
            name, size, weights = family, 64, "none"
        keras.utils.set_random_seed(0)
        classifier = build_classifier(build_backbone(name, weights, size), 3, pretrained=False)
        model, found = at_map(classifier, prefix_tokens(name), scores=True)
        assert re.fullmatch(layer, found), (family, found)
        embedding = split(classifier, layouts(classifier)[0])  # patches, or a CNN's first convolution
        pixels = np.random.default_rng(1).normal(size=(1, size, size, 3)).astype("float32")
        corner = pixels.copy()
        corner[:, :8, -8:] += 1.0
        before, after = (grid(embedding([x])[0], prefix_tokens(name)).numpy()[0] for x in (pixels, corner))
        rows, columns = np.nonzero(np.abs(after - before).max(axis=-1) > 1e-5)
        half = before.shape[0] // 2
        assert len(rows) and rows.max() < half and columns.min() >= half, (family, rows, columns)
        loader = make_loader(Loading(backbone=name, image_size=size, batch_size=8))
        maps = GradCam(model, [prefix_tokens(name)], [loader], [found]).maps(images, np.arange(3))
        assert maps.shape == (3, side, side) and np.isfinite(maps).all() and maps.min() >= 0, family
        assert maps.max() == pytest.approx(1.0) and maps.std() > 0.05, family  # a map, scaled to its peak
