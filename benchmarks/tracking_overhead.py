"""What the TensorBoard logs every run writes cost: the same small training with and without them.

    python benchmarks/tracking_overhead.py [--repeats 5] [--epochs 10]

Trains tiny_cnn from scratch on a generated competition (3 breeds x 32 images, 48 px, batch 8:
12 training steps an epoch) for --epochs frozen and --epochs fine-tuning epochs, in this process,
alternately with TensorBoard (as every run) and without it (the loop's `board` replaced by Keras'
no-op callback: what a run gets where tensorboard is not installed); a first pair warms up and
is left out. Prints, per run, the wall time of `training.train` and the time spent inside the
TensorBoard callback's own hooks, then per epoch: the median difference of wall times, and the
median time in the hooks (the direct figure, which the machine's load does not blur).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import tempfile
import time
from pathlib import Path

import keras

from dogbreeds import loop
from dogbreeds.config import TrainConfig
from dogbreeds.runs import Run
from dogbreeds.synthetic import make_competition
from dogbreeds.tracking import EpochBoard

HOOKS = (
    "set_model", "on_train_begin", "on_train_end", "on_epoch_begin", "on_epoch_end", "on_test_begin", "on_test_end",
    "on_train_batch_begin", "on_train_batch_end", "on_test_batch_begin", "on_test_batch_end",
)  # fmt: skip


class TimedBoard(EpochBoard):
    """EpochBoard counting the seconds spent in its hooks (all the callback does)."""

    spent = 0.0


def _timed(name):
    inner = getattr(EpochBoard, name)

    def hook(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            return inner(self, *args, **kwargs)
        finally:
            TimedBoard.spent += time.perf_counter() - started

    return hook


for _name in HOOKS:
    setattr(TimedBoard, _name, _timed(_name))


def train_once(data: Path, run_dir: Path, epochs: int, with_board: bool) -> tuple[float, float]:
    """Wall seconds of one training, and seconds inside the TensorBoard callback."""
    config = TrainConfig(
        data=str(data), backbone="tiny_cnn", weights="none", image_size=48, batch_size=8, epochs=epochs,
        fine_tune_epochs=epochs, patience=1000, learning_rate=3e-3, fine_tune_learning_rate=2e-3, tta=False,
    )  # fmt: skip
    TimedBoard.spent = 0.0
    if with_board:
        loop.board = lambda run: TimedBoard(run.file(Run.board_dir))
    else:
        loop.board = lambda run: keras.callbacks.Callback()
    from dogbreeds.training import train

    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # Keras' epoch lines
        train(config, run_dir=str(run_dir))
    return time.perf_counter() - started, TimedBoard.spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=10, help="frozen epochs, and as many fine-tuning")
    args = parser.parse_args()
    epochs = 2 * args.epochs
    with tempfile.TemporaryDirectory() as tmp:
        data = make_competition(Path(tmp) / "data", n_classes=3, train_per_class=32, n_test=3, image_size=48)
        results = {True: [], False: []}
        for i in range(args.repeats + 1):
            for with_board in (True, False) if i % 2 else (False, True):
                wall, hooks = train_once(data, Path(tmp) / f"run-{i}-{int(with_board)}", args.epochs, with_board)
                said = "with" if with_board else "without"
                print(f"run {i} {said} TensorBoard: {wall:.2f} s, {hooks:.3f} s in its hooks", flush=True)
                if i:  # the first pair warms up
                    results[with_board].append((wall, hooks))
    pairs = zip(results[True], results[False])
    difference = statistics.median((w - wo) / epochs for (w, _), (wo, _) in pairs)
    hooks = statistics.median(h / epochs for _, h in results[True])
    print(
        f"per epoch ({epochs} epochs a run, {args.repeats} runs each): wall time difference "
        f"{difference * 1000:.1f} ms (median of pairs), time in the TensorBoard callback {hooks * 1000:.2f} ms (median)"
    )


if __name__ == "__main__":
    main()
