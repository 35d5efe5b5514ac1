"""What the tests share that is not a fixture: the command line run in-process or as the
installed script, and a tiny training run through it.

Imported as `from helpers import ...` (pytest's default import mode puts tests/ on sys.path).
Nothing here needs the network or ../shared.
"""

from __future__ import annotations

import logging
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
    logger = logging.getLogger("dogbreeds")  # the CLI points its handlers at CliRunner's streams, closed after
    handlers, propagate, level = logger.handlers[:], logger.propagate, logger.level
    if cwd is not None:
        os.chdir(cwd)
    try:
        result = CliRunner().invoke(app, [str(a) for a in args], env=env)
    finally:
        os.chdir(before)
        logger.handlers[:], logger.propagate, logger.level = handlers, propagate, level
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
    """Train the tiny backbone from scratch through the command line; fails the test if it fails.

    Without the moving average: from scratch, BatchNormalization's statistics train with the
    weights, and Keras' average of a few dozen steps (of the weights only) does not match them,
    so it would not be a model worth scoring; the average has tests of its own (test_recipes)."""
    result = dogbreeds(
        "train", "--data", data, *TINY, "--epochs", epochs, "--fine-tune-epochs", fine_tune_epochs,
        "--learning-rate", 3e-3, "--fine-tune-learning-rate", 2e-3, "--no-ema", "--run-dir", run,
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
