"""Fixtures: small generated competitions, and Keras' global precision policy put back after
every test. Helpers that are not fixtures live in helpers.py.

Nothing here needs the network or ../shared.
"""

from __future__ import annotations

import os
import shutil

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402

from dogbreeds.synthetic import make_competition  # noqa: E402


@pytest.fixture(scope="session")
def competition(tmp_path_factory):
    """Three classes of coloured shapes, 16 training images each, 9 test images, 48 px."""
    return make_competition(
        tmp_path_factory.mktemp("competition"), n_classes=3, train_per_class=16, n_test=9, image_size=48
    )


@pytest.fixture(scope="session")
def one_epoch_run(competition, tmp_path_factory):
    """A tiny run of one frozen and one fine-tuning epoch, trained once for the session; use
    `tiny_run`, which hands each module a copy of its own to change."""
    from helpers import train_tiny

    run = tmp_path_factory.mktemp("template") / "run"
    train_tiny(competition, run, epochs=1, fine_tune_epochs=1)
    return run


@pytest.fixture(scope="module")
def tiny_run(one_epoch_run, tmp_path_factory):
    """A module's own copy of the session's one-epoch run."""
    return shutil.copytree(one_epoch_run, tmp_path_factory.mktemp("runs") / "tiny")


@pytest.fixture(autouse=True)
def keras_policy():
    """Keras' global dtype policy as it was before the test, set back after it: a test (or a
    `dogbreeds train --precision mixed_float16` run in-process) that changes it leaves no trace."""
    before = keras.mixed_precision.global_policy()
    yield before
    keras.mixed_precision.set_global_policy(before)
