"""Progress of long work, shown by one rule for the whole package.

Where a person watches (standard output and standard error both terminals) a phase draws a tqdm
bar with its estimate of the time left, and Keras' fits draw their own bar (verbose 1). Anywhere
else (Kaggle's log viewer, a file, a pipe) a bar's redrawn lines would pile up as text, so a
phase writes one line through the package's log as it starts and one as it ends, with its
seconds, and a fit one line per epoch (verbose 2). A phase without steps to count (a conversion,
say) writes its two lines on a terminal too: a bar that never moves says less than they do.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Iterator

import keras
from tqdm import tqdm

from dogbreeds.errors import log


def interactive() -> bool:
    """Whether bars are drawn: stdout (Keras' bars, the log) and stderr (tqdm's) are terminals."""
    return sys.stdout.isatty() and sys.stderr.isatty()


def fit_verbosity() -> int:
    """Keras' `verbose` for a fit: its bar on a terminal, else one line per epoch."""
    return 1 if interactive() else 2


class Tracker:
    """One phase under way: a bar to advance, or nothing to draw until its end line."""

    def __init__(self, bar: tqdm | None):
        self.bar = bar

    def update(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)


@contextmanager
def track(what: str, total: int | None = None, *, unit: str = "img", initial: int = 0) -> Iterator[Tracker]:
    """The phase `what` ("predicting 300 test images") while the block runs: a bar over `total`
    steps of `unit` on a terminal (from `initial`: a resumed phase), else a start line and, when
    the block completes, a finish line with its seconds. A phase that fails or is interrupted
    writes no finish line: the error says what happened."""
    started = time.perf_counter()
    if total is not None and interactive():
        with tqdm(total=total, initial=initial, desc=what, unit=unit, dynamic_ncols=True) as bar:
            yield Tracker(bar)
        return
    log.info(f"{what}, resuming after {initial} ..." if initial else f"{what} ...")
    yield Tracker(None)
    log.info(f"{what}: done in {time.perf_counter() - started:.1f} s")


class KerasSteps(keras.callbacks.Callback):
    """Advances a tracked phase from Keras' loops: by `per_batch` after each predicted batch (the
    last one by what is left of `total`), or by one after each training epoch."""

    def __init__(self, tracker: Tracker, *, per_batch: int = 0, total: int = 0):
        super().__init__()
        self.tracker, self.per_batch, self.left = tracker, per_batch, total

    def on_predict_batch_end(self, batch, logs=None):
        step = min(self.per_batch, self.left)  # a loader pads its last batch
        self.left -= step
        self.tracker.update(step)

    def on_epoch_end(self, epoch, logs=None):
        self.tracker.update(1)
