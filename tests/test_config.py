import pytest

from dogbreeds.config import TrainConfig
from dogbreeds.errors import DogbreedsError
from dogbreeds.models import get_backbone
from dogbreeds.options import flag_of, from_options, option_fields
from dogbreeds.settings import Augmentation, BatchAugmentation


def test_defaults_are_the_competition_settings():
    config = TrainConfig()
    assert (config.backbone, config.weights, config.image_size) == ("inception_resnet_v2", "imagenet", None)
    assert get_backbone(config.backbone).size == 331  # what train uses and records for None
    assert (config.epochs, config.fine_tune_epochs, config.val_split, config.seed) == (5, 5, 0.2, 42)
    assert config.recipe == "strong" and config.fine_tune_lr == pytest.approx(config.learning_rate / 10)


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


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"batch_size": 0}, "--batch-size must be at least 1, got 0"),
        ({"epochs": -1}, "--epochs must be 0 or more, got -1"),
        ({"learning_rate": 0.0}, "--learning-rate must be positive, got 0.0"),
        ({"dropout": 1.0}, r"--dropout must be in \[0, 1\), got 1.0"),
        ({"val_split": 0.5}, "--val-split must be between 0 and 0.5, got 0.5"),
        ({"head": "svm"}, "--head must be one of dense, logreg, got 'svm'"),
        ({"augmentation": Augmentation(zoom=1.5)}, r"--zoom must be in \[0, 1\), got 1.5"),
        ({"learning_rate": float("inf")}, "--learning-rate must be a finite number, got inf"),
        ({"augmentation": Augmentation(rotation=float("nan"))}, "--rotation must be a finite number, got nan"),
        ({"batch_augmentation": BatchAugmentation(mixup=float("nan"))}, "--mixup must be a finite number, got nan"),
        ({"seed": -1}, "--seed must be 0 or more, got -1"),
        ({"patience": -1}, "--patience must be 0 or more, got -1"),
    ],
)
def test_each_declared_bound_says_which_option_and_what_it_got(changes, message):
    with pytest.raises(DogbreedsError, match=message):
        TrainConfig(**changes)


def test_command_line_values_become_the_config_nested_fields_included():
    config = from_options(TrainConfig, {"backbone": "xception", "zoom": 0.3, "flip": False, "seed": 7})
    assert (config.backbone, config.seed) == ("xception", 7)
    assert config.augmentation == Augmentation(flip=False, rotation=15.0, shift=0.1, zoom=0.3)


def test_every_declared_option_is_on_the_command_line():
    from typer.main import get_command

    from dogbreeds.cli import app

    train = get_command(app).commands["train"]
    names = {name for parameter in train.params for name in [*parameter.opts, *parameter.secondary_opts]}
    declared = {flag_of(f) for f, _, _ in option_fields(TrainConfig)}
    assert declared <= names and {"--run-dir", "--resume", "--no-flip", "--no-tta"} <= names
