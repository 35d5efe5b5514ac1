"""The training loop under every job: phases of training in turn, on one epoch axis, with the run
folder updated after every epoch.

A `Phase` is a stretch of training with its own optimizer (a frozen backbone, then fine-tuning;
or one phase for a network trained from scratch). After every epoch the run folder gets the
epoch log, the best model by validation loss, and (when resumable) the model with its
optimizer (`last.keras`) and where training stands (`progress.json`), all written atomically,
so a run stopped by Ctrl-C, a kill or the end of a Kaggle session continues with `--resume`.
Every epoch also goes to TensorBoard (RUN/tensorboard) and, for a tracked run, to MLflow (`tracking`).
`--time-budget` is a `Budget`: an epoch that would not end in time, with the run's end, is not started.
"""

from __future__ import annotations

import json
import math
import re
import signal
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, fields
from typing import Callable

import keras
import pandas as pd
import tensorflow as tf

from dogbreeds.errors import DogbreedsError, damaged
from dogbreeds.options import type_problem
from dogbreeds.progress import fit_verbosity
from dogbreeds.runs import Run
from dogbreeds.tracking import Tracker, board


@dataclass
class Progress:
    """Where training stands: saved after every epoch as progress.json."""

    epoch: int = 0  # completed epochs, on one axis across both phases
    phase: str = ""
    phase_start: int = 0
    completed: list[str] = field(default_factory=list)


def read_progress(run: Run) -> Progress:
    """A run's progress.json, checked: --resume trusts every number in it."""
    raw = run.read_json(Run.progress_file)
    unknown = sorted(set(raw) - {f.name for f in fields(Progress)})
    wrong = type_problem(Progress, raw) or (unknown and f"unknown entries {', '.join(unknown)}")
    if wrong:
        raise damaged(run.file(Run.progress_file), wrong)
    return Progress(**raw)


class AveragedWeights(keras.callbacks.SwapEMAWeights):
    """`--ema`: Keras validates with the optimizer's moving average of the weights; this also
    lends it to SaveProgress for the best model. The last model keeps the raw weights and the
    average in its optimizer, so that a resumed run goes on exactly; fit leaves the average in
    the model when a phase ends."""

    @contextmanager
    def holding_average(self):
        self._swap_variables()
        try:
            yield
        finally:
            self._swap_variables()


@contextmanager
def uninterrupted():
    """Ctrl-C or SIGTERM while an epoch's files are written takes effect once they are: a run
    stopped there resumes from that epoch rather than from a half-saved one."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = {
        s: signal.signal(s, lambda number, frame: caught.append(number)) for s in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    if caught:
        raise KeyboardInterrupt


class SaveProgress(keras.callbacks.Callback):
    """After each epoch: the epoch log, the best model, the last model, then progress.json; then
    the epoch's row to the run's MLflow run, if tracked (outside the saves: a slow store does not
    hold up a Ctrl-C)."""

    def __init__(self, run: Run, progress: Progress, resumable: bool = True, tracker: Tracker | None = None):
        super().__init__()
        self.run, self.progress, self.resumable, self.tracker = run, progress, resumable, tracker
        self.averaged: AveragedWeights | None = None  # set by fit_phases for an optimizer with use_ema
        rows = run.history(progress.epoch) if progress.epoch else pd.DataFrame()
        self.rows = rows.to_dict("records")
        seen = [r["val_loss"] for r in self.rows if "val_loss" in r]
        self.best = min(seen, default=math.inf)

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        with uninterrupted():
            self._save(epoch, logs)
        if self.tracker is not None:
            self.tracker.log_epochs(self.rows[-1:])

    def _save(self, epoch, logs):
        logs = {k: float(v) for k, v in (logs or {}).items()}
        row = {"epoch": epoch, "phase": self.progress.phase, **logs}
        row["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        row["seconds"] = round(time.perf_counter() - self.started, 2)
        self.rows.append(row)
        self.run.write(Run.log_file, pd.DataFrame(self.rows).to_csv(index=False))
        if logs.get("val_loss", math.inf) < self.best:
            self.best = logs["val_loss"]
            with self.averaged.holding_average() if self.averaged else nullcontext():
                self.run.save_model(self.model)
        self.progress.epoch = epoch + 1
        if self.resumable:
            self.run.save_model(self.model, Run.last_file)
            self.run.write(Run.progress_file, json.dumps(asdict(self.progress)))


class StopOnNaN(keras.callbacks.TerminateOnNaN):
    """Keras' TerminateOnNaN, which also keeps the epoch, so that the run ends with a line saying so
    rather than with a model that cannot predict."""

    epoch: int | None = None

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_batch_end(self, batch, logs=None):
        super().on_batch_end(batch, logs)
        if self.model.stop_training and self.epoch is None:
            self.epoch = self.current


class OutOfTime(Exception):
    """An epoch whose first steps show it would end after the deadline: it is dropped, and the
    run goes on (with --resume) from the last epoch saved."""


class Budget:
    """`--time-budget`: an epoch is started only if it and the run's end (the held-out predictions)
    fit before the deadline, judged by its phase's longest epoch so far. A phase's first epoch
    (fine-tuning costs more than the frozen epochs before it) is judged again by its first steps
    (`KeepToBudget`). Not started, or dropped: the run ends as if its epochs were done, resumable."""

    def __init__(self, seconds: float | None = None, started: float | None = None):
        """`seconds` from `started` (a time.monotonic() value: the command's start), or from now."""
        self.deadline = None if seconds is None else (started or time.monotonic()) + seconds
        self.epochs: dict[str, float] = {}  # each phase's longest epoch so far, in seconds
        self.validation = 0.0  # the longest validation pass
        self.finishing = 0.0  # the run's end: that pass, times the passes it makes
        self.stopped = False

    @staticmethod
    def parse(text: str) -> float:
        """Seconds in `8h30m`, `45m`, `90s` or `1h`."""
        found = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text.strip())
        if not text.strip() or not found:
            raise DogbreedsError(f"--time-budget must look like 8h30m, 45m or 90s, got {text!r}")
        hours, minutes, seconds = (int(v or 0) for v in found.groups())
        return hours * 3600 + minutes * 60 + seconds

    def fits(self, seconds: float) -> bool:
        """Whether `seconds` more, then the run's end, end before the deadline."""
        return self.deadline is None or time.monotonic() + seconds + self.finishing <= self.deadline

    def allows_another(self, phase: str = "") -> bool:
        """Whether the next epoch of `phase` (none named: of the slowest phase) should start; the
        first always does (there is nothing to judge by)."""
        expected = self.epochs.get(phase) or max(self.epochs.values(), default=0.0)
        if expected and not self.fits(expected):
            self.stopped = True
        return not self.stopped


class KeepToBudget(keras.callbacks.Callback):
    """Times each epoch and its validation pass, and stops training when the budget leaves no
    room for another epoch and the run's end (`finishing`: that many validation passes). The
    first epoch of a phase not timed yet is judged by its first tenth of steps (the first step,
    which compiles, left out), and dropped there if it would end late."""

    def __init__(self, budget: Budget, phase: str, finishing: float = 1.0):
        super().__init__()
        self.budget, self.phase, self.finishing = budget, phase, finishing

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.monotonic()
        steps = self.params.get("steps") or 0
        judged = self.budget.deadline is not None and self.phase not in self.budget.epochs and self.budget.epochs
        self.judge_at = max(3, steps // 10) if judged and steps > 3 else None

    def on_train_batch_end(self, batch, logs=None):
        if self.judge_at is None:
            return
        if batch == 0:
            self.first_step = time.monotonic()
        elif batch + 1 == self.judge_at:
            each = (time.monotonic() - self.first_step) / batch
            self.judge_at = None
            if not self.budget.fits(each * (self.params["steps"] - batch - 1) + self.budget.validation):
                self.budget.stopped = True
                raise OutOfTime

    def on_test_begin(self, logs=None):
        self.validating = time.monotonic()

    def on_test_end(self, logs=None):
        self.budget.validation = max(self.budget.validation, time.monotonic() - self.validating)
        self.budget.finishing = self.budget.validation * self.finishing

    def on_epoch_end(self, epoch, logs=None):
        took = time.monotonic() - self.started
        self.budget.epochs[self.phase] = max(self.budget.epochs.get(self.phase, 0.0), took)
        if not self.budget.allows_another(self.phase):
            self.model.stop_training = True


@keras.saving.register_keras_serializable("dogbreeds")
class FineTuneAdam(keras.optimizers.Adam):
    """Adam for fine-tuning: a rate scaled per variable (layer-wise decay), and Keras' moving
    average of the weights, moved once per update when gradients are accumulated.

    Keras has no parameter groups; every backend's apply step calls `update_step` once per
    variable with the rate of that step, so scaling the rate there scales that variable alone.
    (The TensorFlow backend hands it the backend's variable, so the factor is found by index.)

    Keras' average has one momentum from the first step, so a short fine-tuning's average stays
    near the weights it started from. That is kept on purpose: timm's warm-up (an average that
    follows the weights closely at first) measured worse on short runs (docs/recipes.md).
    """

    def __init__(self, *args, rate_factors: dict[str, float] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.rate_factors = dict(rate_factors or {})

    def build(self, variables):
        super().build(variables)
        self._factors = [self.rate_factors.get(variable.path, 1.0) for variable in variables]

    def update_step(self, gradient, variable, learning_rate):
        factor = self._factors[self._get_variable_index(variable)]
        return super().update_step(gradient, variable, learning_rate * factor if factor != 1.0 else learning_rate)

    def _update_model_variables_moving_average(self, trainable_variables):
        """Keras' own update (base_optimizer.py), skipped on the batches that only accumulate."""
        if not self.use_ema:
            return
        momentum = keras.ops.where(keras.ops.equal(self.iterations, 0), 0.0, self.ema_momentum)  # the first copies
        if self.gradient_accumulation_steps:  # Keras averages after every batch; the weights move once in N
            updated = (self._iterations + 1) % self.gradient_accumulation_steps == 0
            momentum = keras.ops.where(updated, momentum, 1.0)
        for variable, average in zip(trainable_variables, self._model_variables_moving_average):
            if average is not None:
                m = keras.ops.cast(momentum, variable.dtype)
                average.assign(m * average + (1 - m) * variable)

    def get_config(self):
        return super().get_config() | {"rate_factors": self.rate_factors}


@keras.saving.register_keras_serializable("dogbreeds")
class LayerwiseAdam(FineTuneAdam):
    """The name runs saved before FineTuneAdam gave their optimizer: they resume with it."""


@dataclass
class Phase:
    """A stretch of training with its own optimizer: what the loop needs to run it or resume it."""

    name: str
    epochs: int
    optimizer: Callable[[], keras.optimizers.Optimizer]
    prepare: Callable[[], None] = lambda: None  # set which layers train, before compiling
    adaptive: bool = True  # early stopping and the rate cut on a plateau; False: a fixed schedule runs out
    loss: str | keras.losses.Loss = "sparse_categorical_crossentropy"  # categorical_: target distributions
    callbacks: list[keras.callbacks.Callback] = field(default_factory=list)  # the phase's own, e.g. Lookahead


def fit_phases(
    model: keras.Model,
    run: Run,
    phases: list[Phase],
    train_data: tf.data.Dataset,
    val_data: tf.data.Dataset,
    progress: Progress,
    patience: int = 3,
    resumable: bool = True,
    budget: Budget | None = None,
    finishing: float = 1.0,
    tracker: Tracker | None = None,
) -> None:
    """The phases in turn, on one epoch axis, with the run folder updated after every epoch.

    A phase already in `progress.completed` is skipped; the current one (a resumed run)
    continues without recompiling, so the optimizer loaded with the model keeps its state.
    `resumable` keeps last.keras and progress.json for `--resume`; without it only the best
    model and the epoch log are written. A `budget` that runs out leaves the phase unfinished,
    to be resumed; the run's end predicts the held-out images `finishing` times (2: with their
    mirrors), which the budget keeps time for. Each epoch is logged to TensorBoard once it is
    saved, and to `tracker`'s MLflow run.
    """
    budget = budget or Budget()
    saver = SaveProgress(run, progress, resumable, tracker)
    for row in saver.rows:  # a resumed run's epochs judge the next ones
        seconds, name = row.get("seconds"), row.get("phase", "")
        if isinstance(seconds, (int, float)) and math.isfinite(seconds):
            budget.epochs[name] = max(budget.epochs.get(name, 0.0), float(seconds))
    verbose = fit_verbosity()  # one line per epoch where no one watches a bar
    for phase in phases:
        if phase.name in progress.completed:
            continue
        if not budget.allows_another(phase.name):
            return
        if progress.phase != phase.name:
            progress.phase, progress.phase_start = phase.name, progress.epoch
            phase.prepare()
            model.compile(optimizer=phase.optimizer(), loss=phase.loss, metrics=["accuracy"])
        guard = StopOnNaN()
        callbacks = [guard, *phase.callbacks, saver, board(run), KeepToBudget(budget, phase.name, finishing)]
        optimizer = getattr(model.optimizer, "inner_optimizer", model.optimizer)  # under mixed_float16's loss scaling
        saver.averaged = AveragedWeights() if optimizer.use_ema else None
        if saver.averaged:
            callbacks.insert(0, saver.averaged)
        if phase.adaptive:
            callbacks += [
                keras.callbacks.EarlyStopping(patience=patience),
                keras.callbacks.ReduceLROnPlateau(factor=0.2, patience=max(1, patience - 1), min_lr=1e-7),
            ]
        end = progress.phase_start + phase.epochs
        fits = progress.epoch < end
        if fits:
            try:
                model.fit(
                    train_data,
                    validation_data=val_data,
                    initial_epoch=progress.epoch,
                    epochs=end,
                    verbose=verbose,
                    shuffle=False,  # the loaders shuffle, reproducibly
                    callbacks=callbacks,
                )
            except OutOfTime:  # the model in memory is part of an epoch on: the run folder holds the last whole one
                return
        if guard.epoch is not None:
            raise DogbreedsError(
                f"the training loss became NaN or infinite in epoch {guard.epoch + 1} ({phase.name}); the best model "
                f"so far is in {run.path}: lower --learning-rate (or --fine-tune-learning-rate), or train in "
                "--precision float32"
            )
        if budget.stopped and progress.epoch < end:
            return  # the phase goes on after --resume
        progress.completed.append(phase.name)
        if resumable:
            with uninterrupted():
                if saver.averaged and fits:  # the next phase starts from the average, resumed or not
                    run.save_model(model, Run.last_file)
                run.write(Run.progress_file, json.dumps(asdict(progress)))
