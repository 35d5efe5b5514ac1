"""What the tests share that is not a fixture: the command line run in-process or as the
installed script, and a tiny training run through it.

Imported as `from helpers import ...` (pytest's default import mode puts tests/ on sys.path).
Nothing here needs the network or ../shared.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import traceback
from types import SimpleNamespace

import keras
import numpy as np
from typer.testing import CliRunner

from dogbreeds.cli import app


def dogbreeds(*args, cwd=None, env=None) -> SimpleNamespace:
    """`dogbreeds ARGS` in this process, as Typer runs it: returncode, stdout and stderr.

    An exception that is not a clean exit (a bug) lands in stderr as its traceback, as it
    would in a terminal, so that tests checking for one line see it.
    """
    before = os.getcwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        result = CliRunner().invoke(app, [str(a) for a in args], env=env)
    finally:
        os.chdir(before)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(*result.exc_info))
    return SimpleNamespace(returncode=result.exit_code, stdout=result.stdout, stderr=stderr)


def console_script(*args, cwd=None, env=None) -> subprocess.CompletedProcess:
    """The installed console script in a process of its own: for signals, tracebacks, start-up."""
    exe = shutil.which("dogbreeds")
    command = [exe] if exe else [sys.executable, "-m", "dogbreeds"]
    return subprocess.run(
        [*command, *map(str, args)],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
    )


TINY = ("--backbone", "tiny_cnn", "--weights", "none", "--image-size", 48, "--batch-size", 8)


def train_tiny(data, run, *, epochs: int = 2, fine_tune_epochs: int = 6):
    """Train the tiny backbone from scratch through the command line; fails the test if it fails."""
    result = dogbreeds(
        "train", "--data", data, *TINY, "--epochs", epochs, "--fine-tune-epochs", fine_tune_epochs,
        "--learning-rate", 3e-3, "--fine-tune-learning-rate", 2e-3, "--run-dir", run,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result


def predicting_model(path, classes: int = 3) -> keras.Model:
    """The model saved at `path`, loaded and checked to predict, for a batch of its input, one
    finite probability distribution over `classes` per image; fails the test if it does not."""
    model = keras.models.load_model(path)
    x = np.random.default_rng(0).uniform(-1, 1, (4, *model.input_shape[1:])).astype("float32")
    p = model.predict(x, verbose=0)
    assert p.shape == (4, classes) and np.isfinite(p).all(), (path, p)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
    return model


# Tiny random models of each KerasHub family, saved as KerasHub saves a preset: the folder a
# Kaggle Model or `--weights DIR` holds. Their sizes fit the families' rules (multiples of the
# patch size; the native-only families take the size they were saved at).
HUB_TINY = {  # family: (a registry name of that family, image size, pooled width)
    "dinov2": ("dinov2_small", 56, 64),
    "dinov3": ("dinov3_vit_small_lvd1689m", 64, 64),
    "siglip": ("siglip_so400m_patch14_384", 56, 32),
    "clip": ("clip_vit_large_patch14_336", 56, 32),
    "vit": ("vit_large_patch16_384_imagenet", 64, 32),
    "swin": ("swin_large_patch4_window12_384", 64, 32),
}


def tiny_preset(family: str, folder) -> str:
    """A random model of `family` saved with `save_to_preset` into `folder`, with the image
    converter its real presets carry; returns the registry name it stands in for."""
    import keras_hub
    from keras_hub import layers as hub_layers
    from keras_hub import models as hub

    from dogbreeds.hub import FAMILIES

    name, size, _ = HUB_TINY[family]
    keras.utils.set_random_seed(0)
    shape, small = (size, size, 3), dict(num_layers=2, hidden_dim=32, num_heads=2, intermediate_dim=64)
    text = dict(vocabulary_size=50, embedding_dim=32, hidden_dim=32, num_layers=1, num_heads=2, intermediate_dim=64)
    if family == "dinov2":
        model = hub.DINOV2Backbone(patch_size=14, image_shape=shape, position_embedding_shape=shape, **small)
    elif family == "dinov3":
        model = hub.DINOV3Backbone(patch_size=16, image_shape=shape, **small)
    elif family == "siglip":
        vision = hub.SigLIPVisionEncoder(patch_size=14, image_shape=shape, **small)
        model = hub.SigLIPBackbone(vision, hub.SigLIPTextEncoder(**text, max_sequence_length=8))
    elif family == "clip":
        vision = hub.CLIPVisionEncoder(patch_size=14, image_shape=shape, **small)
        model = hub.CLIPBackbone(vision, hub.CLIPTextEncoder(**text, max_sequence_length=8), projection_dim=16)
    elif family == "vit":
        model = hub.ViTBackbone(shape, 16, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64)
    else:
        model = hub.SwinTransformerBackbone(shape, embed_dim=16, depths=(2, 2), num_heads=(2, 2), window_size=4)
    model.save_to_preset(str(folder))
    converters = {"dinov2": "DINOV2", "dinov3": "DINOV3", "siglip": "SigLIP", "clip": "CLIP", "vit": "ViT"}
    converter = getattr(hub_layers, converters.get(family, "SwinTransformer") + "ImageConverter")
    scale, offset = FAMILIES[family].scale.tolist(), FAMILIES[family].offset.tolist()
    converter(image_size=(size, size), scale=scale, offset=offset).save_to_preset(str(folder))
    assert keras_hub.models.Backbone.from_preset(str(folder)) is not None
    return name
