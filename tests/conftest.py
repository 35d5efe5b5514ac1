"""Fixtures: small generated competitions. Helpers that are not fixtures live in helpers.py.

Nothing here needs the network or ../shared.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from dogbreeds.synthetic import make_competition  # noqa: E402


@pytest.fixture(scope="session")
def competition(tmp_path_factory):
    """Three classes of coloured shapes, 16 training images each, 9 test images, 48 px."""
    return make_competition(
        tmp_path_factory.mktemp("competition"), n_classes=3, train_per_class=16, n_test=9, image_size=48
    )
