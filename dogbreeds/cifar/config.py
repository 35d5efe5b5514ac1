"""`dogbreeds cifar`'s options, declared once as the engine's are (`options.option`)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from dogbreeds import __version__
from dogbreeds.config import RUN_FORMAT
from dogbreeds.errors import DogbreedsError
from dogbreeds.options import check_options, option, require
from dogbreeds.settings import PRECISIONS

MODELS = ("mlp", "seed-cnn", "resnet9", "airbench", "transfer")  # the table's order: from the write-ups on
ALIASES = {"cnn": "airbench"}  # earlier names, still accepted


def model_names(value: str) -> list[str]:
    """`--model`: one name, a comma-separated list, or all; earlier names taken for today's."""
    if value == "all":
        return list(MODELS)
    names = [ALIASES.get(v.strip(), v.strip()) for v in value.split(",")]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise DogbreedsError(f"--model {unknown[0]!r} is not one of {', '.join(MODELS)}, all")
    return names


@dataclass
class CifarConfig:
    """`dogbreeds cifar`: one of the ten-class experiments; None means the model's own recipe."""

    model: str = "airbench"  # one of MODELS; the command line also takes a list, or all
    dataset: str = option("cifar10", "cifar10 or cifar100.", choices=("cifar10", "cifar100"))
    data: str | None = option(
        None,
        "cifar-10-batches-py / cifar-100-python folder, or train/<class>/ and test/<class>/ image folders. "
        "Default: download with keras.datasets.",
    )
    epochs: int | None = option(
        None,
        "Default: the model's recipe (mlp 30, seed-cnn 10, airbench 8, resnet9 30; transfer: head epochs, 60).",
        at_least=1,
    )
    batch_size: int | None = option(
        None, "Default: the model's recipe (mlp 128, seed-cnn 32, airbench 1024, resnet9 512).", at_least=1
    )
    learning_rate: float | None = option(None, "Default: the model's recipe.", positive=True)
    limit: int | None = option(None, "Use only N training images (a stratified subset).", at_least=20)
    val_split: float = option(0.1, "Share of the training images held out for validation.", within=(0, 0.5, "()"))
    seed: int = option(42, "Split, shuffling, augmentation and initial weights.", at_least=0)
    precision: str = option(
        "auto", "auto: float32 on a CPU; mixed_bfloat16 is faster on CPUs with AMX (Xeon 4th gen+).",
        choices=PRECISIONS,
    )  # fmt: skip
    backbone: str = option("mobilenet_v2", "transfer: the frozen backbone.")
    weights: str = option("imagenet", "transfer: imagenet, or the path of a .h5 weights file.")
    image_size: int | None = option(
        None, "transfer: the images are upscaled to this. Default: the model's recipe (96).", at_least=32
    )
    cache_dir: str = option("cache", "Image folders made from batches, and features.")
    mode: str = "cifar"  # tells a CIFAR run folder from a competition run
    version: str = __version__
    run_format: int = RUN_FORMAT

    def __post_init__(self) -> None:
        self.model = ALIASES.get(self.model, self.model)
        require([(self.model in MODELS, f"--model must be one of {', '.join(MODELS)} or all, got {self.model!r}")])
        check_options(self)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)
