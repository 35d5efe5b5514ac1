"""Fixtures: small generated competitions, and Keras' global precision policy put back after
every test. Helpers that are not fixtures live in helpers.py.

Nothing here needs the network or ../shared.
"""

from __future__ import annotations

import os

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


@pytest.fixture(autouse=True)
def keras_policy():
    """Keras' global dtype policy as it was before the test, set back after it: a test (or a
    `dogbreeds train --precision mixed_float16` run in-process) that changes it leaves no trace."""
    before = keras.mixed_precision.global_policy()
    yield before
    keras.mixed_precision.set_global_policy(before)
