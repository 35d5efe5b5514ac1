"""Work cut short: a kill, SIGTERM, a full disk, a time budget. What was saved stays whole, what a
cut left behind is swept by the next command, and the run goes on with `--resume`."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import keras
import pandas as pd
import pytest

from dogbreeds.loop import Budget, KeepToBudget, OutOfTime, uninterrupted

from helpers import TINY, dogbreeds, predicting_model

DEAD = 99_999_999  # above Linux's pid_max: no process has it


def full_disk() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def one_error_line(result, *fragments):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def hidden(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def trained(tiny_run):
    return tiny_run


def test_the_next_command_sweeps_what_killed_ones_left(trained, competition, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    stale = [f".model.{DEAD}.tmp.keras", f".history.csv.{DEAD}.k2x9_q.tmp", f".confusion.{DEAD}.tmp.png"]
    for name in stale:
        (run / name).write_bytes(b"half")
    (run / f".export-keras.{DEAD}.tmp").mkdir()
    alive = f".last.{os.getpid()}.tmp.keras"  # a command still writing (this process) is left alone
    (run / alive).write_bytes(b"being written")
    (run / "notes.tmp").write_text("the user's")

    assert dogbreeds("evaluate", "--run", run).returncode == 0
    assert hidden(run) == [alive] and (run / "notes.tmp").is_file()

    out = tmp_path / "subs" / "s.csv"
    out.parent.mkdir()
    (out.parent / f".s.csv.{DEAD}.a1b2c3.tmp").write_text("id,half")
    (out.parent / f".other.csv.{DEAD}.a1b2c3.tmp").write_text("not this command's file")
    assert dogbreeds("submit", "--run", run, "--data", competition, "--out", out).returncode == 0
    assert hidden(out.parent) == [f".other.csv.{DEAD}.a1b2c3.tmp"]


def test_a_full_disk_while_training_is_one_line_and_the_run_resumes(competition, tmp_path, monkeypatch):
    save = keras.Model.save

    def half_then_full(model, path, *args, **kwargs):
        open(path, "wb").write(b"PK half a model")
        raise full_disk()

    monkeypatch.setattr(keras.Model, "save", half_then_full)
    run = tmp_path / "run"
    result = dogbreeds("train", "--data", competition, *TINY, "--epochs", 1, "--fine-tune-epochs", 1, "--run-dir", run)
    one_error_line(result, "no space left on the device writing", f"dogbreeds train --resume {run}")
    assert hidden(run) == []

    monkeypatch.setattr(keras.Model, "save", save)  # space freed
    result = dogbreeds("train", "--resume", run)
    assert result.returncode == 0, result.stderr
    assert "saved no epoch to resume from: training it from the start" in result.stdout
    assert len(pd.read_csv(run / "history.csv")) == 2
    predicting_model(run / "model.keras")


def test_a_full_disk_while_submitting_leaves_no_file(trained, competition, tmp_path, monkeypatch):
    fdopen = os.fdopen

    class FullDisk:
        def __init__(self, fd, *args, **kwargs):
            self.file = fdopen(fd, *args, **kwargs)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

        def write(self, data):
            raise full_disk()

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    monkeypatch.setattr(os, "fdopen", FullDisk)
    out = tmp_path / "subs" / "s.csv"
    result = dogbreeds("submit", "--run", run, "--data", competition, "--out", out)
    one_error_line(result, f"no space left on the device writing {out}: free some space")
    assert not out.exists() and hidden(out.parent) == [] and hidden(run) == []


def test_an_interrupt_while_an_epoch_is_saved_takes_effect_after_the_save(competition, tmp_path, monkeypatch):
    save = keras.Model.save
    interrupted = []

    def interrupt_then_save(model, path, *args, **kwargs):
        if not interrupted:
            interrupted.append(path)
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, or SIGTERM, as model.keras is written
        save(model, path, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "save", interrupt_then_save)
    run = tmp_path / "run"
    result = dogbreeds("train", "--data", competition, *TINY, "--epochs", 1, "--fine-tune-epochs", 2, "--run-dir", run)
    assert result.returncode == 130 and f"dogbreeds train --resume {run}" in result.stderr
    assert json.loads((run / "progress.json").read_text())["epoch"] == 1 and hidden(run) == []

    monkeypatch.setattr(keras.Model, "save", save)
    result = dogbreeds("train", "--resume", run)
    assert result.returncode == 0, result.stderr
    assert f"resuming {run} after epoch 1" in result.stdout


def test_uninterrupted_holds_an_interrupt_until_its_end():
    finished = False
    with pytest.raises(KeyboardInterrupt):
        with uninterrupted():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            finished = True
    assert finished


def test_sigterm_ends_the_command_even_where_python_cannot_act():
    """The main thread here ignores the signal, as one inside a long TensorFlow call would."""
    program = (
        "import os, signal, time\n"
        "from dogbreeds.cli import end_on_termination\n"
        "end_on_termination(grace=0.5)\n"
        "signal.signal(signal.SIGTERM, lambda *_: None)\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "time.sleep(60)\n"
    )
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=50)
    assert result.returncode == 130 and time.monotonic() - started < 30
    assert "interrupted (SIGTERM)" in result.stderr


@pytest.fixture
def clock(monkeypatch):
    """time.monotonic() as the test sets it."""
    now = [0.0]
    monkeypatch.setattr("dogbreeds.loop.time.monotonic", lambda: now[0])
    return now


def test_a_new_phase_is_judged_by_its_first_steps_not_by_the_faster_phase_before_it(clock):
    budget = Budget(100, started=0)
    budget.epochs["frozen"] = 20
    clock[0] = 50
    assert budget.allows_another("fine_tune")  # judged by the frozen epochs, 50 + 20 <= 100, it starts
    keeper = KeepToBudget(budget, "fine_tune")
    keeper.set_params({"steps": 40})
    keeper.on_epoch_begin(3)
    keeper.on_train_batch_end(0)  # the first step (it compiles) is not counted
    clock[0] = 53
    keeper.on_train_batch_end(1)
    clock[0] = 56
    keeper.on_train_batch_end(2)
    clock[0] = 59
    with pytest.raises(OutOfTime):  # 3 s a step: 36 more steps end at 167
        keeper.on_train_batch_end(3)
    assert budget.stopped


def test_a_phase_judged_by_its_first_steps_goes_on_when_it_fits(clock):
    budget = Budget(1000, started=0)
    budget.epochs["frozen"] = 20
    keeper = KeepToBudget(budget, "fine_tune")
    keeper.set_params({"steps": 40})
    keeper.on_epoch_begin(3)
    for step in range(40):
        clock[0] += 3
        keeper.on_train_batch_end(step)
    assert not budget.stopped


def test_a_budget_keeps_time_for_the_end_of_the_run(clock):
    budget = Budget(100, started=0)
    budget.epochs["frozen"] = 20
    clock[0] = 60
    assert budget.allows_another("frozen")  # 60 + 20 <= 100
    budget.finishing = 25  # the held-out images predicted twice, at the end
    assert not budget.allows_another("frozen") and budget.stopped
