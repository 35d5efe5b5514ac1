import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from PIL import Image, ImageOps

from dogbreeds.config import Augmentation
from dogbreeds.pipeline import LegacyLoader, TFDataLoader, decode, inspect_images, random_affine


def as_array(path, size=32, orientation=1):
    return decode(tf.constant(str(path)), tf.constant(orientation), size).numpy()


def gradient(width=40, height=30):
    """An image whose every pixel is distinct, so any wrong turn shows."""
    x, y = np.meshgrid(np.linspace(0, 255, width), np.linspace(0, 255, height))
    return np.stack([x, y, 255 - x], axis=-1).astype(np.uint8)


@pytest.mark.parametrize(
    "mode, fmt",
    [
        ("RGB", "JPEG"),
        ("L", "JPEG"),
        ("CMYK", "JPEG"),
        ("RGB", "PNG"),
        ("RGBA", "PNG"),
        ("I;16", "PNG"),
        ("RGB", "WEBP"),
    ],
)
def test_decode_copes_with_real_photo_formats(tmp_path, mode, fmt):
    path = tmp_path / "photo.jpg"  # always named .jpg, as in the competition
    if mode == "I;16":  # a real 16-bit photo spans 0-65535
        picture = Image.fromarray(gradient()[..., 0].astype(np.uint16) * 257)
    else:
        picture = Image.fromarray(gradient()).convert(mode)
    picture.save(path, format=fmt)
    image = as_array(path)
    assert image.shape == (32, 32, 3) and image.dtype == np.float32
    assert 0 <= image.min() and image.max() <= 255 and image.std() > 10


@pytest.mark.parametrize("size", [(1, 1), (100, 60), (3000, 2000)])
def test_decode_any_size(tmp_path, size):
    path = tmp_path / "p.jpg"
    Image.new("RGB", size, (200, 100, 50)).save(path)
    image = as_array(path, size=40)
    assert image.shape == (40, 40, 3)
    np.testing.assert_allclose(image.mean(axis=(0, 1)), [200, 100, 50], atol=4)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pil(tmp_path, orientation):
    path = tmp_path / f"o{orientation}.jpg"
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(gradient()).save(path, exif=exif, quality=100)
    assert inspect_images([str(path)])["orientation"].tolist() == [orientation]
    expected = ImageOps.exif_transpose(Image.open(path)).convert("RGB").resize((32, 32), Image.BILINEAR)
    got = as_array(path, orientation=orientation)
    assert np.abs(got - np.asarray(expected, dtype=np.float32)).mean() < 8


def test_affine_with_only_flip_mirrors_or_keeps_each_image():
    batch = tf.constant(np.stack([gradient(16, 16)] * 8).astype(np.float32))
    out = random_affine(
        batch, tf.constant([1, 2], tf.int64), Augmentation(flip=True, rotation=0, shift=0, zoom=0)
    ).numpy()
    original, mirrored = batch.numpy()[0], batch.numpy()[0][:, ::-1]
    kinds = [np.allclose(o, original, atol=1e-3) or (np.allclose(o, mirrored, atol=1e-3) and 2) for o in out]
    assert all(kinds) and True in kinds and 2 in kinds  # both outcomes happen, nothing else


def test_affine_zoom_above_one_shows_more_of_the_image():
    batch = tf.ones((1, 21, 21, 3)) * 255.0
    out = random_affine(batch, tf.constant([0, 0], tf.int64), Augmentation(flip=False, rotation=0, shift=0, zoom=0.0))
    np.testing.assert_allclose(out.numpy(), batch.numpy(), atol=1e-3)  # the identity when all ranges are 0


def frame_of(competition, n=12):
    labels = pd.read_csv(competition / "labels.csv").head(n)
    return pd.DataFrame(
        {"path": [str(competition / "train" / f"{i}.jpg") for i in labels["id"]], "label": np.arange(n) % 3}
    )


def loader(kind, seed=0, augmentation=None, size=40):
    return kind(
        image_size=size,
        batch_size=4,
        preprocess=lambda x: x / 127.5 - 1.0,
        augmentation=augmentation or Augmentation(),
        seed=seed,
    )


def first_epochs(ds, epochs=2):
    return [np.concatenate([x.numpy() for x, _ in ds]) for _ in range(epochs)]


def test_training_augmentation_is_random_across_epochs_but_repeatable(competition):
    frame = frame_of(competition)
    a1, a2 = first_epochs(loader(TFDataLoader, seed=5).training(frame))
    b1, b2 = first_epochs(loader(TFDataLoader, seed=5).training(frame))
    c1, _ = first_epochs(loader(TFDataLoader, seed=6).training(frame))
    np.testing.assert_array_equal(a1, b1)
    np.testing.assert_array_equal(a2, b2)
    assert not np.allclose(a1, a2)
    assert not np.allclose(a1, c1)


def test_evaluation_and_prediction_keep_order_and_are_deterministic(competition):
    frame = frame_of(competition)
    tf_loader = loader(TFDataLoader)
    labels = np.concatenate([y.numpy() for _, y in tf_loader.evaluation(frame)])
    assert labels.tolist() == frame["label"].tolist()
    once = np.concatenate([x.numpy() for x, _ in tf_loader.evaluation(frame)])
    twice = np.concatenate([x.numpy() for x in tf_loader.prediction(frame[["path"]])])
    np.testing.assert_array_equal(once, twice)


def test_legacy_and_tfdata_loaders_agree(competition):
    frame = frame_of(competition)
    for method in ("training", "evaluation"):
        x_tf, y_tf = next(iter(getattr(loader(TFDataLoader), method)(frame)))
        x_legacy, y_legacy = getattr(loader(LegacyLoader), method)(frame)[0]
        assert x_tf.shape == x_legacy.shape == (4, 40, 40, 3)
        assert x_tf.dtype == x_legacy.dtype == np.float32
        for x in (x_tf.numpy(), x_legacy):
            assert -1.0 <= x.min() and x.max() <= 1.0 and x.std() > 0.05
        assert set(np.asarray(y_legacy).astype(int)) <= {0, 1, 2}
    # Without augmentation both show the same pictures in the same order.
    x_tf = np.concatenate([x.numpy() for x, _ in loader(TFDataLoader).evaluation(frame)])
    legacy = loader(LegacyLoader).evaluation(frame)
    x_legacy = np.concatenate([legacy[i][0] for i in range(len(legacy))])
    y_legacy = np.concatenate([legacy[i][1] for i in range(len(legacy))]).astype(int)
    assert y_legacy.tolist() == frame["label"].tolist()
    assert np.abs(x_tf - x_legacy).mean() < 0.05
