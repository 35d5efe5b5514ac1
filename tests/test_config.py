import pytest

from dogbreeds.config import Augmentation, TrainConfig
from dogbreeds.errors import DogbreedsError


def test_defaults_are_the_competition_settings():
    config = TrainConfig()
    assert (config.backbone, config.weights, config.image_size) == ("inception_resnet_v2", "imagenet", 331)
    assert (config.epochs, config.fine_tune_epochs, config.val_split, config.seed) == (5, 5, 0.2, 42)
    assert config.fine_tune_lr == pytest.approx(config.learning_rate / 100)


def test_json_round_trip_repeats_the_run():
    config = TrainConfig(backbone="xception", limit=100, augmentation=Augmentation(rotation=5))
    again = TrainConfig.from_json(config.to_json())
    assert again == config and isinstance(again.augmentation, Augmentation)


def test_a_newer_config_is_refused_with_a_reason():
    text = TrainConfig().to_json().replace('"seed"', '"mystery": 1, "seed"')
    with pytest.raises(DogbreedsError, match="unknown settings mystery"):
        TrainConfig.from_json(text)


@pytest.mark.parametrize(
    "field, value", [("image_size", 8), ("dropout", 1.0), ("val_split", 0.0), ("precision", "fp8"), ("limit", 1)]
)
def test_invalid_values_are_refused(field, value):
    with pytest.raises(DogbreedsError):
        TrainConfig(**{field: value})
