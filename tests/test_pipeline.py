import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from PIL import Image, ImageOps

from dogbreeds.augmentation import affine_transforms, random_affine, warp
from dogbreeds.images import inspect_images
from dogbreeds.pipeline import LegacyLoader, TFDataLoader, decode
from dogbreeds.settings import Augmentation


def as_array(path, size=32, orientation=1):
    image = decode(tf.constant(str(path)), tf.constant(orientation), size)
    assert image.dtype == tf.uint8
    return image.numpy().astype(np.float32)


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
    assert image.shape == (32, 32, 3)
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


def test_affine_with_every_range_zero_is_the_identity():
    batch = tf.constant(np.stack([gradient(21, 21)]).astype(np.float32))
    out = random_affine(batch, tf.constant([0, 0], tf.int64), Augmentation.none())
    np.testing.assert_allclose(out.numpy(), batch.numpy(), atol=1e-3)


def test_affine_zoom_above_one_shows_more_of_the_image():
    """ImageDataGenerator's zoom: output pixel p samples the source at c + z (p - c), so z > 1
    takes in more of the image (its edges repeat beyond it) and z < 1 magnifies the centre."""
    n, side = 32, 21
    columns = np.tile(np.arange(side, dtype=np.float32) * 10, (side, 1))  # each pixel: 10 x its column
    batch = tf.constant(np.repeat(columns[None, :, :, None], n, axis=0).repeat(3, axis=3))
    seed, augmentation = tf.constant([5, 6], tf.int64), Augmentation(flip=False, rotation=0, shift=0, zoom=0.5)
    out = random_affine(batch, seed, augmentation).numpy()[:, side // 2, :, 0]  # the middle row of each
    zooms = affine_transforms(n, float(side), float(side), seed, augmentation).numpy()[:, 0]
    assert (zooms > 1.2).any() and (zooms < 0.8).any()
    centre = (side - 1) / 2
    expected = np.clip(centre + zooms[:, None] * (np.arange(side) - centre), 0, side - 1) * 10
    np.testing.assert_allclose(out, expected, atol=1e-2)
    wide = zooms > 1.05
    assert (out[wide, 0] == 0).all() and (out[wide, -1] == 200).all()  # the whole width, edges reached inside
    assert (out[~wide & (zooms < 0.95), 0] > 0).all()  # magnified: the first columns are not shown


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


def test_warp_matches_tensorflows_projective_transform():
    """The XLA warp resamples like ImageProjectiveTransformV3 (bilinear, nearest-edge fill), only faster."""
    batch = tf.constant(np.stack([gradient(40, 30), gradient(40, 30)[::-1]]).astype(np.float32))
    transforms = affine_transforms(2, 30.0, 40.0, tf.constant([3, 4], tf.int64), Augmentation(rotation=30, zoom=0.3))
    reference = tf.raw_ops.ImageProjectiveTransformV3(
        images=batch,
        transforms=tf.concat([transforms, tf.zeros((2, 2))], axis=1),
        output_shape=(30, 40),
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="NEAREST",
    )
    got = warp(batch, transforms)
    assert got.dtype == tf.float32 and got.shape == batch.shape
    assert np.abs(got.numpy() - reference.numpy()).mean() < 0.5  # of 255; equal but at the clamped edges
    assert np.abs(got.numpy() - batch.numpy()).mean() > 5  # and it did move the pixels


def test_large_jpegs_are_decoded_scaled_down_without_aliasing(tmp_path):
    """A fine checkerboard must come out grey, as PIL's antialiased resize makes it, not as moire."""
    path = tmp_path / "big.jpg"
    squares = (np.indices((1600, 2400)).sum(axis=0) % 2 * 255).astype(np.uint8)  # 1-px squares
    Image.fromarray(squares).convert("RGB").save(path, quality=95)
    expected = np.asarray(Image.open(path).resize((64, 64), Image.BILINEAR), dtype=np.float32)
    got = as_array(path, size=64)
    assert np.abs(got - expected).mean() < 8
    naive = tf.image.resize(tf.io.decode_jpeg(tf.io.read_file(str(path)), channels=3), (64, 64)).numpy()
    assert np.abs(naive - expected).mean() > 30  # what a plain bilinear resize of the full image gives


@pytest.mark.parametrize("cache", ["memory", "disk"])
def test_cached_training_is_random_across_epochs_but_repeatable(competition, tmp_path, monkeypatch, cache):
    monkeypatch.setenv("DOGBREEDS_CACHE", str(tmp_path / "cache"))
    frame = frame_of(competition)
    cached = loader(TFDataLoader, seed=5)
    cached.cache = cache
    a1, a2 = first_epochs(cached.training(frame))
    b1, b2 = first_epochs(cached.training(frame))  # the disk cache is read back here
    np.testing.assert_array_equal(a1, b1)
    np.testing.assert_array_equal(a2, b2)
    assert not np.allclose(a1, a2)
    if cache == "disk":
        assert sorted(p.suffix for p in (tmp_path / "cache").iterdir()) == [".data-00000-of-00001", ".index"]
    plain = loader(TFDataLoader, seed=5)
    x_eval = np.concatenate([x.numpy() for x, _ in cached.evaluation(frame)])
    np.testing.assert_array_equal(x_eval, np.concatenate([x.numpy() for x, _ in plain.evaluation(frame)]))


def test_fast_training_batches_look_like_evaluation_batches(competition):
    """Same shape, dtype and range as the deterministic path; without augmentation, the same pictures."""
    frame = frame_of(competition)
    x_eval = np.concatenate([x.numpy() for x, _ in loader(TFDataLoader, size=20).evaluation(frame)])
    for augmentation in (Augmentation(), Augmentation.none()):
        batches = list(loader(TFDataLoader, augmentation=augmentation, size=20).training(frame))
        for x, y in batches:
            assert x.dtype == tf.float32 and y.dtype == tf.int64 and x.shape[1:] == x_eval.shape[1:] == (20, 20, 3)
            assert -1.0 <= x.numpy().min() and x.numpy().max() <= 1.0
    # The warp straight from the file, with nothing to do but resize, resizes as decode() does.
    x_train = np.concatenate([x.numpy() for x, _ in batches])
    nearest = [np.abs(x_eval - image).mean(axis=(1, 2, 3)).min() for image in x_train]
    assert max(nearest) < 0.005  # uint8 rounding apart (of 2: the range after preprocessing)


def test_a_disk_cache_left_half_written_is_dropped(competition, tmp_path, monkeypatch):
    monkeypatch.setenv("DOGBREEDS_CACHE", str(tmp_path))
    disk = loader(TFDataLoader)
    disk.cache = "disk"
    frame = frame_of(competition)
    prefix = disk._cache_file(frame)
    (tmp_path / f"{prefix.name}.data-00000-of-00001").write_bytes(b"half")
    (tmp_path / f"{prefix.name}_0.lockfile").write_bytes(b"")
    assert disk._cache_file(frame) == prefix and not list(tmp_path.iterdir())
    assert len(np.concatenate([x.numpy() for x, _ in disk.evaluation(frame)])) == len(frame)


def test_no_replica_gets_an_empty_share_of_a_batch(competition):
    """9 images, batches of 4 for 2 replicas: a last batch of 1 cannot be split."""
    frame = frame_of(competition, n=9)
    mirrored = loader(TFDataLoader)
    mirrored.replicas = 2
    assert [len(y) for _, y in mirrored.training(frame)] == [4, 4]  # the odd one out differs each epoch
    labels = np.concatenate([y.numpy() for _, y in mirrored.evaluation(frame)])
    assert labels.tolist() == [*frame["label"], frame["label"].iloc[-1]]  # the last repeated, then cut
    assert sum(len(x) for x in mirrored.prediction(frame[["path"]])) == 10


def test_training_warp_turns_photos_upright_as_decode_does(tmp_path):
    """The EXIF turn is folded into the training warp; without augmentation it must match decode()."""
    paths = []
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        paths.append(str(tmp_path / f"o{orientation}.jpg"))
        Image.fromarray(gradient(48, 36)).save(paths[-1], exif=exif, quality=100)
    frame = inspect_images(paths).assign(label=np.arange(8))
    fast = loader(TFDataLoader, augmentation=Augmentation.none(), size=24)
    expected = np.concatenate([x.numpy() for x, _ in fast.evaluation(frame)])
    for x, y in fast.training(frame):
        for image, label in zip(x.numpy(), y.numpy()):
            assert np.abs(image - expected[label]).mean() < 0.005, f"orientation {label + 1}"


def test_legacy_loader_keeps_every_label_past_ten(competition):
    """flow_from_dataframe drops rows whose label is not among its classes: breeds 10 to 119 must stay."""
    frame = frame_of(competition).assign(label=np.arange(12))
    legacy = loader(LegacyLoader).evaluation(frame)
    labels = np.concatenate([legacy[i][1] for i in range(len(legacy))]).astype(int)
    assert labels.tolist() == list(range(12))
