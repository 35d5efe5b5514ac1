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


TINY = ("--backbone", "tiny_cnn", "--weights", "none", "--image-size", 48, "--batch-size", 8)


def train_tiny(data, run, *, epochs: int = 2, fine_tune_epochs: int = 6) -> subprocess.CompletedProcess:
    """Train the tiny backbone from scratch through the console script; fails the test if it fails."""
    result = dogbreeds(
        "train", "--data", data, *TINY, "--epochs", epochs, "--fine-tune-epochs", fine_tune_epochs,
        "--learning-rate", 3e-3, "--fine-tune-learning-rate", 2e-3, "--run-dir", run,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result
