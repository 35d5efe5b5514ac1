import keras
import numpy as np
import pytest

from dogbreeds.errors import DogbreedsError
from dogbreeds.models import BACKBONES, build_backbone, build_classifier, set_trainable

REQUIRED = {
    "inception_resnet_v2",
    "xception",
    "inception_v3",
    "resnet50",
    "mobilenet_v2",
    "efficientnet_b0",
    "efficientnet_b1",
    "efficientnet_b2",
    "efficientnet_b3",
    "efficientnet_v2_s",
    "convnext_tiny",
}


def test_registry_has_the_competition_backbones():
    assert REQUIRED <= set(BACKBONES)


# Building takes seconds a backbone: the suite builds one of each family (its own preprocessing)
# and the competition's; `pytest -m slow` builds the rest.
QUICK = sorted(
    {"tiny_cnn", "inception_resnet_v2", "resnet50", "resnet50_v2", "mobilenet_v2", "mobilenet_v3_large"}
    | {"efficientnet_b0", "efficientnet_v2_s", "convnext_tiny"}
)
HUB = sorted(name for name, spec in BACKBONES.items() if spec.preset)
OTHERS = sorted(set(BACKBONES) - set(QUICK) - set(HUB))


@pytest.mark.parametrize("name", QUICK)
def test_every_backbone_builds_and_classifies(name):
    size = max(BACKBONES[name].min_size, 64)
    backbone = build_backbone(name, "none", size)
    assert backbone.count_params() == BACKBONES[name].parameters  # what `dogbreeds backbones` shows
    model = build_classifier(backbone, 5, pretrained=False)
    images = np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype("float32")
    probabilities = model.predict(BACKBONES[name].preprocess(images), verbose=0)
    assert probabilities.shape == (2, 5) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_every_other_backbone_builds_with_the_parameters_shown():
    for name in OTHERS:
        backbone = build_backbone(name, "none", BACKBONES[name].min_size)
        assert backbone.count_params() == BACKBONES[name].parameters, name
        keras.backend.clear_session()


@pytest.mark.slow
def test_every_kerashub_backbone_builds_at_its_size_with_the_parameters_shown():
    pytest.importorskip("keras_hub")
    for name in HUB:  # at its default size: DINOv2's position embeddings grow with it
        backbone = build_backbone(name, "none", BACKBONES[name].size)
        assert backbone.count_params() == BACKBONES[name].parameters, name
        assert backbone.output_shape[1:] in ((768,), (1024,), (1152,), (1536,), (2048,), (3072,)), name
        keras.backend.clear_session()


def test_weights_file_is_loaded(tmp_path):
    source = build_backbone("mobilenet_v2", "none", 64)
    path = tmp_path / "mobilenet.weights.h5"
    source.save_weights(path)
    loaded = build_backbone("mobilenet_v2", str(path), 96)  # any input size fits the same weights
    for a, b in zip(source.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)
    fresh = build_backbone("mobilenet_v2", "none", 64)
    assert not all(np.array_equal(a, b) for a, b in zip(source.get_weights(), fresh.get_weights()))


def test_weights_of_another_architecture_are_refused(tmp_path):
    path = tmp_path / "tiny.weights.h5"
    build_backbone("tiny_cnn", "none", 64).save_weights(path)
    with pytest.raises(DogbreedsError, match="does not fit mobilenet_v2"):
        build_backbone("mobilenet_v2", str(path), 64)


@pytest.mark.parametrize("weights, message", [("/no/such.h5", "no such file"), ("imagenet", "no ImageNet weights")])
def test_weights_errors_say_what_to_do(weights, message):
    with pytest.raises(DogbreedsError, match=message):
        build_backbone("tiny_cnn", weights, 64)


def test_unknown_backbone_lists_the_choices():
    with pytest.raises(DogbreedsError, match="inception_resnet_v2"):
        build_backbone("vgg99", "none", 64)


def test_image_size_below_backbone_minimum():
    with pytest.raises(DogbreedsError, match="at least 75"):
        build_backbone("inception_resnet_v2", "none", 48)


def test_fine_tune_layers_unfreeze_the_top_and_keep_norm_frozen():
    backbone = build_backbone("mobilenet_v2", "none", 64)
    n = set_trainable(backbone, 10)
    assert 0 < n <= 10
    assert all(not layer.trainable for layer in backbone.layers[:-10])
    assert not any(layer.trainable for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization))
    assert set_trainable(backbone, None) > n


def test_head_softmax_stays_float32_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_classifier(build_backbone("tiny_cnn", "none", 64), 4, hidden_units=8)
        assert model.get_layer("breed").dtype_policy.compute_dtype == "float32"
        assert model.get_layer("head_hidden").dtype_policy.compute_dtype == "float16"
    finally:
        keras.mixed_precision.set_global_policy("float32")
