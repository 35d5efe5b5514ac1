"""Heads trained on cached backbone vectors: a Keras dense head, or scikit-learn's logistic regression.

`train --method features` and `cifar --model transfer` both call `fit_head`, which trains the
head its `HeadSettings` name, saves it as the run's model.keras and writes its history (a dense
head's epochs also to TensorBoard). Both heads are saved as Keras models, so a head run is
loaded and used like any other run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import keras
import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression

from dogbreeds.cache import HeadInputs
from dogbreeds.errors import log
from dogbreeds.metrics import scores
from dogbreeds.progress import KerasSteps, track
from dogbreeds.report import plot_history
from dogbreeds.runs import Run
from dogbreeds.settings import HeadSettings
from dogbreeds.tracking import board

LOGREG_STRENGTHS = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)


def train_dense_head(
    settings: HeadSettings, x, y, x_val, y_val, n_classes: int, callbacks: tuple = ()
) -> tuple[keras.Model, pd.DataFrame]:
    """BatchNormalization, Dropout, Dense softmax; Adam; early stopping on validation loss.

    The best epoch's weights are restored. A head's validation loss wanders more than a
    fine-tuning phase's, so it waits at least 5 epochs for an improvement. `callbacks`: more
    of Keras' (TensorBoard's).
    """
    keras.utils.set_random_seed(settings.seed)
    inputs = keras.Input((x.shape[1],), name="features")
    normalised = keras.layers.BatchNormalization(dtype="float32", name="head_norm")(inputs)  # float32 always
    dropped = keras.layers.Dropout(settings.dropout, name="head_dropout")(normalised)
    outputs = keras.layers.Dense(n_classes, activation="softmax", dtype="float32", name="breed")(dropped)
    model = keras.Model(inputs, outputs, name="dense_head")
    model.compile(
        optimizer=keras.optimizers.Adam(settings.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    stop = keras.callbacks.EarlyStopping(patience=max(5, settings.patience), restore_best_weights=True)
    # Keras' own display would be a line (or a bar) per epoch of a second or less: one bar over the epochs instead.
    with track(f"training the dense head (at most {settings.epochs} epochs)", settings.epochs, unit="epoch") as shown:
        fitted = model.fit(
            np.asarray(x, np.float32),
            np.asarray(y),
            validation_data=(np.asarray(x_val, np.float32), np.asarray(y_val)),
            batch_size=int(np.clip(len(x) // 32, 32, 256)),  # about 32 steps an epoch
            epochs=settings.epochs,
            callbacks=[stop, *callbacks, KerasSteps(shown)],
            verbose=0,
        )
    history = pd.DataFrame(fitted.history)
    history.insert(0, "phase", "head")
    history.insert(0, "epoch", np.arange(len(history)))
    return model, history


def train_logreg_head(settings: HeadSettings, x, y, x_val, y_val, n_classes: int) -> tuple[keras.Model, pd.DataFrame]:
    """scikit-learn multinomial logistic regression, its strength C chosen on validation.

    The fitted coefficients go into an equivalent Keras model (standardise, Dense softmax),
    so a logreg run is saved, loaded and used like any other, with no pickle.
    """
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    z, z_val = (x - mean) / scale, (x_val - mean) / scale
    rows, best = [], None
    what = f"fitting logistic regression at {len(LOGREG_STRENGTHS)} strengths C"
    with track(what, len(LOGREG_STRENGTHS), unit="fit") as shown:
        for c in LOGREG_STRENGTHS:
            fitted = LogisticRegression(C=c, max_iter=300).fit(z, y)
            probabilities = np.zeros((len(z_val), n_classes))
            probabilities[:, fitted.classes_] = fitted.predict_proba(z_val)
            found = scores(probabilities, y_val)  # as Kaggle clips them
            rows.append({"C": c, "val_loss": found["log_loss"], "val_accuracy": found["accuracy"]})
            if best is None or found["log_loss"] < best[0]:
                best = (found["log_loss"], c, fitted)
            shown.update()
    _, c, fitted = best
    log.info(f"logistic regression: C = {c:g} has the lowest validation log loss")
    coef = np.zeros((n_classes, x.shape[1]), np.float32)
    intercept = np.full(n_classes, -1e4, np.float32)  # classes absent from training get no probability
    if len(fitted.classes_) == 2 and fitted.coef_.shape[0] == 1:  # binary: sklearn keeps one row
        coef[fitted.classes_[1]], intercept[fitted.classes_[1]] = fitted.coef_[0], fitted.intercept_[0]
        coef[fitted.classes_[0]], intercept[fitted.classes_[0]] = 0.0, 0.0
    else:
        coef[fitted.classes_], intercept[fitted.classes_] = fitted.coef_, fitted.intercept_
    inputs = keras.Input((x.shape[1],), name="features")
    standardised = keras.layers.Normalization(mean=mean, variance=scale**2, name="standardise")(inputs)
    dense = keras.layers.Dense(n_classes, activation="softmax", dtype="float32", name="breed")
    model = keras.Model(inputs, dense(standardised), name="logreg_head")
    dense.set_weights([coef.T, intercept])
    return model, pd.DataFrame(rows)


HEADS: dict[str, Callable[..., tuple[keras.Model, pd.DataFrame]]] = {
    "dense": train_dense_head,
    "logreg": train_logreg_head,
}
SEARCH_FILE = "head_search.csv"  # logreg: the validation loss of each C tried


@dataclass
class FittedHead:
    model: keras.Model
    history: pd.DataFrame
    seconds: float

    @property
    def epochs(self) -> int | None:
        return len(self.history) if "epoch" in self.history else None

    @property
    def best_epoch(self) -> int | None:
        return int(self.history["val_loss"].idxmin()) + 1 if "epoch" in self.history else None


def fit_head(run: Run, settings: HeadSettings, inputs: HeadInputs, y_val, n_classes: int, title: str) -> FittedHead:
    """Train the head on the vectors, save it as the run's model and write its history."""
    started = time.perf_counter()
    extra = {"callbacks": [board(run)]} if settings.head == "dense" else {}  # logreg has no epochs to log
    model, history = HEADS[settings.head](settings, inputs.x, inputs.y, inputs.x_val, y_val, n_classes, **extra)
    fitted = FittedHead(model, history, time.perf_counter() - started)
    run.save_model(model)
    if fitted.epochs is not None:
        run.write(Run.log_file, history.to_csv(index=False))
        plot_history(history, run.file(Run.plot_file), title=title)
    else:
        run.write(SEARCH_FILE, history.to_csv(index=False))
    return fitted
