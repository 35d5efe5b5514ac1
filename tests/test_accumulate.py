"""--accumulate N: one update per N batches, the same update as one batch N times larger."""

import keras
import numpy as np
import pytest
from test_recipes import tiny_transfer_model

from dogbreeds.config import TrainConfig
from dogbreeds.errors import DogbreedsError
from dogbreeds.loop import FineTuneAdam
from dogbreeds.training import check_accumulation, competition_phases

from helpers import TINY, dogbreeds

X = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
Y = np.array([0, 1, 1, 0, 1, 0, 0, 1])


def trained_head(accumulate: int, batch_size: int, seen: list | None = None) -> keras.Model:
    """The frozen phase's optimizer as train builds it, fitted once over the same eight rows."""
    keras.utils.set_random_seed(1)
    model = tiny_transfer_model()
    frozen, _ = competition_phases(model, TrainConfig(recipe="classic", accumulate=accumulate))
    frozen.prepare()
    model.compile(frozen.optimizer(), frozen.loss)
    record = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: seen.append([w.numpy().copy() for w in model.trainable_weights])
    )
    callbacks = [record] if seen is not None else []
    model.fit(X, Y, batch_size=batch_size, epochs=1, shuffle=False, verbose=0, callbacks=callbacks)
    return model


def test_four_accumulated_batches_update_once_as_one_batch_four_times_larger():
    seen = []
    accumulated = trained_head(4, batch_size=2, seen=seen)
    large = trained_head(1, batch_size=8)
    assert len(seen) == 4
    for before, after in zip(seen[0], seen[2]):  # batches 1 to 3 leave the weights where they were
        np.testing.assert_array_equal(before, after)
    assert any(not np.allclose(a, b) for a, b in zip(seen[2], seen[3]))  # the fourth moves them
    assert int(accumulated.optimizer.iterations) == 1
    for mine, theirs in zip(accumulated.trainable_weights, large.trainable_weights):
        np.testing.assert_allclose(mine.numpy(), theirs.numpy(), rtol=1e-5, atol=1e-6)


def test_the_average_and_the_cosine_count_updates_not_batches():
    config = TrainConfig(recipe="strong", accumulate=4, epochs=1, fine_tune_epochs=3, warmup_epochs=1)
    _, fine_tune = competition_phases(tiny_transfer_model(), config, steps_per_epoch=40)
    rate = fine_tune.optimizer()._learning_rate  # the schedule: 10 updates an epoch
    assert rate.warmup_steps == 10 and rate.decay_steps == 20

    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros")])
    model.compile(FineTuneAdam(0.1, use_ema=True, ema_momentum=0.99, gradient_accumulation_steps=2), "mse")
    seen = []
    weight = model.weights[0]
    record = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: seen.append(float(weight[0, 0])))
    model.fit(np.ones((20, 1)), np.ones((20, 1)), batch_size=1, epochs=1, shuffle=False, verbose=0, callbacks=[record])
    updated = seen[1::2]  # the weights after each of the ten updates
    expected = updated[0]  # Keras' average: the first update copies, then momentum 0.99
    for weight in updated[1:]:
        expected = 0.99 * expected + 0.01 * weight
    average = float(model.optimizer._model_variables_moving_average[0][0, 0])
    assert average == pytest.approx(expected, rel=1e-5)


def test_accumulate_is_for_fine_tuning_runs(competition):
    result = dogbreeds("train", "--data", competition, *TINY, "--method", "features", "--accumulate", 2)
    assert result.returncode == 2 and "--accumulate applies to --method finetune" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_several_replicas_refuse_accumulation_before_training():
    """Keras accumulates inside a conditional that tf.distribute cannot all-reduce in (issue 20582)."""
    check_accumulation(TrainConfig(accumulate=4), replicas=1)
    check_accumulation(TrainConfig(), replicas=2)
    with pytest.raises(DogbreedsError, match="--accumulate 4 cannot run on 2 replicas"):
        check_accumulation(TrainConfig(accumulate=4), replicas=2)
