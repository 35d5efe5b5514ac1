"""The pieces of `cifar --model airbench` (airbench94's recipe): patch whitening, lookahead,
alternating flips, whole-pixel shifts, flip + translate TTA."""

from __future__ import annotations

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from dogbreeds.cifar.airbench import (
    AirbenchLoader,
    Lookahead,
    flip_and_translate,
    image_patches,
    network,
    whiten,
    with_flip_translate_tta,
)


def smooth_images(n=64, size=12, seed=0):
    """Noise blurred across neighbours and channels: patches with strongly correlated pixels."""
    x = np.random.default_rng(seed).normal(size=(n, size + 1, size + 1, 3))
    x = x[:, 1:, 1:] + x[:, :-1, 1:] + x[:, 1:, :-1] + 0.5 * x.sum(axis=3, keepdims=True)[:, 1:, 1:]
    return (3.0 + x).astype(np.float32)


def test_the_whitening_layer_whitens_the_patches_it_was_set_from():
    images = smooth_images()
    raw = image_patches(images, 2).reshape(-1, 12)
    assert np.abs(np.corrcoef(raw, rowvar=False) - np.eye(12)).max() > 0.3  # far from white before
    model = network((12, 12, 3), 4)
    layer = model.get_layer("whiten")
    whiten(layer, images, epsilon=1e-6)
    assert not layer.trainable and not layer.trainable_weights
    out = keras.ops.convert_to_numpy(layer(images)).reshape(-1, 24)
    np.testing.assert_allclose(out.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(np.cov(out[:, :12], rowvar=False), np.eye(12), atol=1e-3)
    np.testing.assert_allclose(out[:, 12:], -out[:, :12], atol=1e-5)  # each filter and its negation


def test_lookahead_pulls_the_slow_weights_toward_the_fast_ones():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    lookahead = Lookahead(every=2, decay=lambda done: 0.5 * done)
    lookahead.set_model(model)
    lookahead.set_params({"epochs": 1, "steps": 5})
    start = [w.numpy() for w in model.weights]
    lookahead.on_train_begin()
    lookahead.on_epoch_begin(0)

    def step(batch, shift):  # an optimizer's step: the fast weights move
        for w in model.weights:
            w.assign(w.numpy() + shift)
        lookahead.on_train_batch_end(batch)

    def assert_on(expected):
        for w, e in zip(model.weights, expected):
            np.testing.assert_allclose(w.numpy(), e, rtol=1e-6)

    step(0, 1.0)  # step 1: no sync, the model keeps its fast weights
    assert_on([s + 1.0 for s in start])
    step(1, 2.0)  # step 2 of 5: decay 0.2, slow = start + 0.8 x (fast - start), and the model goes on from it
    assert_on([s + 0.8 * 3.0 for s in start])
    step(2, 4.0)
    step(3, 1.0)  # step 4: decay 0.4, slow moves 0.6 of the way to the fast weights (2.4 + 5)
    assert_on([s + 2.4 + 0.6 * 5.0 for s in start])
    step(4, 10.0)  # the epoch's last step: the model returns to the slow weights before validation
    assert_on([s + 5.4 for s in start])


def test_translate_tta_averages_the_logits_of_six_views_with_the_unmoved_pair_as_half():
    images = np.random.default_rng(0).uniform(size=(2, 6, 6, 3)).astype(np.float32)
    # a "model" whose logits are its view's pixels
    softmax = keras.Sequential([keras.Input((6, 6, 3)), keras.layers.Flatten(), keras.layers.Softmax()])
    got = keras.ops.convert_to_numpy(with_flip_translate_tta(softmax)(images))
    padded = np.pad(images, [(0, 0), (1, 1), (1, 1), (0, 0)], mode="reflect")
    views = [images, padded[:, :6, :6], padded[:, 2:, 2:]]
    pairs = [(v + v[:, :, ::-1]).reshape(2, -1) / 2 for v in views]
    logits = pairs[0] / 2 + pairs[1] / 4 + pairs[2] / 4
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(got, expected, rtol=1e-4)


def asymmetric_frame(folder, n=8, size=8):
    """Images that differ from each other and from their mirrors; label = the image's index."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = folder / f"{i}.png"
        tf.io.write_file(str(path), tf.io.encode_png(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)))
        paths.append(str(path))
    return pd.DataFrame({"path": paths, "label": np.arange(n)})


def test_alternate_flips_mirror_each_image_on_every_other_epoch(tmp_path):
    frame = asymmetric_frame(tmp_path)
    loader = AirbenchLoader(image_size=8, batch_size=3, preprocess=lambda x: x, cache="memory", pixels=0)
    originals = {y: x for x, y in zip(*map(np.concatenate, zip(*loader.evaluation(frame).as_numpy_iterator())))}
    training = loader.training(frame)
    assert training.cardinality() == 3  # Keras still knows the epoch's length
    flipped = []
    for _ in range(4):
        seen = {}
        for x, y in training.as_numpy_iterator():
            for image, label in zip(x, y):
                original = originals[label]
                same, mirrored = np.array_equal(image, original), np.array_equal(image, original[:, ::-1])
                assert same != mirrored
                seen[label] = mirrored
        flipped.append([seen[i] for i in range(len(frame))])
    flipped = np.array(flipped)
    assert 0 < flipped[0].sum() < len(frame)  # the first epoch flips a random half, about
    assert (flipped[1:] != flipped[:-1]).all()  # then every image changes side every epoch


def test_whole_pixel_shifts_reach_every_offset_and_nothing_between():
    ramp = np.stack([*np.meshgrid(np.arange(32), np.arange(32), indexing="xy"), np.zeros((32, 32))], axis=-1)
    images = tf.constant(np.repeat(ramp[None], 2000, axis=0), tf.float32)  # channel 0: x, channel 1: y
    out = flip_and_translate(images, tf.constant([3, 4], tf.int64), tf.zeros(2000, tf.bool), pixels=2).numpy()
    shifts = out[:, 16, 16, :2] - 16.0  # the centre: no edge reflected
    assert set(np.unique(shifts)) == {-2.0, -1.0, 0.0, 1.0, 2.0}
    counts = np.unique(shifts[:, 0], return_counts=True)[1]
    assert counts.min() > 0.8 * counts.max()  # uniform among the five
    mirrored = flip_and_translate(images[:4], tf.constant([3, 4], tf.int64), tf.ones(4, tf.bool), pixels=0).numpy()
    np.testing.assert_allclose(mirrored[:, :, :, 0], 31.0 - ramp[None, :, :, 0].repeat(4, axis=0))


def test_whole_pixel_shifts_are_crops_of_the_reflect_padded_image():
    image = np.random.default_rng(0).integers(0, 256, (1, 6, 6, 3)).astype(np.uint8)
    padded = np.pad(image[0], [(2, 2), (2, 2), (0, 0)], mode="reflect")
    crops = {padded[y : y + 6, x : x + 6].tobytes() for y in range(5) for x in range(5)}
    seen = set()
    for seed in range(20):
        seed = tf.constant([seed, 1], tf.int64)
        out = flip_and_translate(tf.constant(image, tf.float32), seed, tf.constant([False]), pixels=2)
        seen.add(out.numpy()[0].astype(np.uint8).tobytes())
    assert seen <= crops and len(seen) > 5
