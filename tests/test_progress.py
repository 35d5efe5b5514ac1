"""Progress of long work: a bar on a terminal; anywhere else (CliRunner's output, like a Kaggle
kernel's log) no bar, but a line as each phase starts and one as it ends."""

from __future__ import annotations

import io
import logging
import re
import sys

import pytest

from dogbreeds.errors import log
from dogbreeds.progress import KerasSteps, fit_verbosity, interactive, track

from helpers import TINY, dogbreeds

BAR = re.compile(r"\d+%\||\|[█▏▎▍▌▋▊▉ ]+\||\d+/\d+ \[\d\d:\d\d")  # tqdm's percentage, its blocks, its "3/9 [00:01"


def no_bar(result) -> None:
    shown = result.stdout + result.stderr
    assert "\r" not in shown and not BAR.search(shown), shown


def test_submit_off_a_terminal_prints_the_prediction_as_two_lines_and_no_bar(tiny_run, competition, tmp_path):
    result = dogbreeds("submit", "--run", tiny_run, "--data", competition, "--out", tmp_path / "s.csv")
    assert result.returncode == 0, result.stderr
    no_bar(result)
    lines = result.stdout.splitlines()
    assert "predicting 9 test images ..." in lines
    assert any(re.fullmatch(r"predicting 9 test images: done in \d+\.\d s", line) for line in lines), lines


def test_a_features_run_off_a_terminal_prints_each_extraction_and_the_head_as_two_lines(competition, tmp_path):
    result = dogbreeds(
        "train", "--data", competition, "--method", "features", *TINY, "--head-epochs", 5,
        "--cache-dir", tmp_path / "cache", "--run-dir", tmp_path / "run",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    no_bar(result)
    out = result.stdout
    for view in ("plain", "mirror"):  # the training images (38 of 48), then the held-out ones, then the test images
        for n in (38, 10, 9):
            assert f"extracting tiny_cnn 48px {view} features of {n} images ...\n" in out, out
            assert re.search(rf"extracting tiny_cnn 48px {view} features of {n} images: done in \d+\.\d s\n", out)
    assert "training the dense head (at most 5 epochs) ...\n" in out
    assert re.search(r"training the dense head \(at most 5 epochs\): done in \d+\.\d s\n", out)


@pytest.fixture
def logged(monkeypatch):
    """The package's log lines, as the command line shows them."""
    text = io.StringIO()
    monkeypatch.setattr(log, "handlers", [logging.StreamHandler(text)])
    monkeypatch.setattr(log, "level", logging.INFO)
    return text


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def on_a_terminal(monkeypatch) -> io.StringIO:
    """Standard output and standard error as terminals; what is drawn on stderr, tqdm's place.
    Called in the test itself: pytest sets its own streams back after the fixtures."""
    monkeypatch.setattr(sys, "stdout", Terminal())
    monkeypatch.setattr(sys, "stderr", Terminal())
    return sys.stderr


def test_on_a_terminal_a_phase_is_a_bar_with_its_time_left_and_no_lines(logged, monkeypatch):
    drawn = on_a_terminal(monkeypatch)
    assert interactive() and fit_verbosity() == 1
    with track("predicting 5 images", 5) as shown:
        steps = KerasSteps(shown, per_batch=4, total=5)
        steps.on_predict_batch_end(0)
        steps.on_predict_batch_end(1)  # a padded last batch of 4 counts the one image left
        assert shown.bar is not None and shown.bar.n == 5
    bar = drawn.getvalue()
    assert "predicting 5 images: 100%|" in bar and "5/5 [" in bar and "<00:00" in bar  # elapsed<left
    assert logged.getvalue() == ""


def test_off_a_terminal_a_phase_is_a_start_and_a_finish_line(logged, capsys):
    assert not interactive() and fit_verbosity() == 2
    with track("checking 3 images", 3) as shown:
        shown.update(3)
        assert shown.bar is None
    assert re.fullmatch(r"checking 3 images \.\.\.\nchecking 3 images: done in \d+\.\d s\n", logged.getvalue())
    captured = capsys.readouterr()
    assert captured.out == captured.err == ""


def test_a_phase_without_steps_is_two_lines_even_on_a_terminal_and_a_failed_one_has_no_finish(logged, monkeypatch):
    drawn = on_a_terminal(monkeypatch)
    with track("exporting run as tflite"):
        pass
    with pytest.raises(KeyboardInterrupt):
        with track("extracting 9 images", 9, initial=4):
            raise KeyboardInterrupt
    lines = logged.getvalue().splitlines()
    assert lines[0] == "exporting run as tflite ..." and lines[1].startswith("exporting run as tflite: done in ")
    assert lines[2:] == [] and "extracting 9 images:  44%|" in drawn.getvalue()  # the bar stays where it was


def test_a_resumed_phase_says_where_it_resumes(logged):
    with track("extracting 9 images", 9, initial=4):
        pass
    assert logged.getvalue().splitlines()[0] == "extracting 9 images, resuming after 4 ..."
