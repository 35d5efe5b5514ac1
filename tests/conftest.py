"""Small generated competitions; nothing here needs the network or ../shared."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from dogbreeds.demo import make_competition  # noqa: E402


@pytest.fixture(scope="session")
def competition(tmp_path_factory):
    """Three classes of coloured shapes, 16 training images each, 9 test images, 48 px."""
    return make_competition(
        tmp_path_factory.mktemp("competition"), n_classes=3, train_per_class=16, n_test=9, image_size=48
    )


def dogbreeds(*args: str, cwd=None, env=None) -> subprocess.CompletedProcess:
    """Run the installed console script as a user would."""
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
