"""Strategies and precision: mirrored training on two logical CPUs, float32 probabilities."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from dogbreeds.config import TrainConfig
from dogbreeds.distribute import describe, make_strategy, use_precision
from dogbreeds.errors import DogbreedsError
from dogbreeds.models import build_backbone, build_classifier

# Logical devices must be made before TensorFlow sets up its own: a process of its own.
MIRRORED = """
import json, sys
from pathlib import Path
from dogbreeds.config import TrainConfig
from dogbreeds.submission import submit
from dogbreeds.training import resume, train

data, run = sys.argv[1], Path(sys.argv[2])
config = TrainConfig(
    data=data, backbone="tiny_cnn", weights="none", image_size=48, batch_size=4, epochs=1, fine_tune_epochs=1,
    learning_rate=3e-3, strategy="mirrored", cache_images="memory", schedule="plateau",
)
trained = train(config, run_dir=str(run))
# Back to the end of the first epoch, then on from last.keras under the strategy.
progress = {"epoch": 1, "phase": "fine_tune", "phase_start": 1, "completed": ["frozen"]}
(run / "progress.json").write_text(json.dumps(progress))
resumed = resume(str(run))
written = submit(run, data, run / "submission.csv", strategy="mirrored")
print(json.dumps({"trained": trained.metrics, "resumed": resumed.metrics, "submission": str(written.path)}))
"""


def test_mirrored_strategy_trains_resumes_and_submits_on_two_cpu_devices(competition, tmp_path):
    run = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-c", MIRRORED, str(competition), str(run)],
        env={**os.environ, "DOGBREEDS_CPU_DEVICES": "2"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    for metrics in (out["trained"], out["resumed"]):
        assert metrics["strategy"] == "MirroredStrategy, 2 replicas"
        assert metrics["global_batch_size"] == 8 and metrics["epochs"] == 2
        assert np.isfinite(metrics["val_log_loss"])
    history = pd.read_csv(run / "history.csv")
    # The strong recipe (its averaged weights swapped on every replica) at constant rates, times the replicas.
    assert history["learning_rate"].tolist() == pytest.approx([2 * 3e-3, 2 * 3e-3 / 10])
    assert history["phase"].tolist() == ["frozen", "fine_tune"]
    submission = pd.read_csv(out["submission"])
    assert submission["id"].tolist() == pd.read_csv(competition / "sample_submission.csv")["id"].tolist()
    np.testing.assert_allclose(submission.iloc[:, 1:].sum(axis=1), 1.0, atol=1e-5)


GPU_HOST = pytest.mark.skipif(
    bool(tf.config.list_physical_devices("GPU")), reason="checks what a machine without a GPU gets"
)


@GPU_HOST
def test_auto_is_one_device_on_a_cpu():
    assert describe(make_strategy("auto")) == "DefaultStrategy, 1 replica"


def test_a_missing_tpu_says_so():
    with pytest.raises(DogbreedsError, match="no TPU could be reached"):
        make_strategy("tpu")


@pytest.mark.parametrize("field, value", [("strategy", "horovod"), ("cache_images", "gpu")])
def test_unknown_strategy_or_cache_is_refused(field, value):
    with pytest.raises(DogbreedsError, match=value):
        TrainConfig(**{field: value})


def test_the_legacy_loader_has_no_cache():
    with pytest.raises(DogbreedsError, match="--cache-images works with --loader tfdata only"):
        TrainConfig(loader="legacy", cache_images="memory")


def test_use_precision_sets_the_global_policy():
    assert use_precision("mixed_bfloat16") == "mixed_bfloat16"
    assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
    assert use_precision("float32") == "float32"
    assert keras.mixed_precision.global_policy().name == "float32"


@GPU_HOST
def test_auto_precision_is_float32_on_a_cpu():
    keras.mixed_precision.set_global_policy("mixed_float16")
    assert use_precision("auto") == "float32"
    assert keras.mixed_precision.global_policy().name == "float32"


@pytest.mark.parametrize("policy, compute", [("mixed_float16", "float16"), ("mixed_bfloat16", "bfloat16")])
def test_mixed_precision_trains_and_keeps_float32_probabilities(policy, compute):
    keras.mixed_precision.set_global_policy(policy)  # set back by conftest's keras_policy fixture
    model = build_classifier(build_backbone("tiny_cnn", "none", 32), 3, pretrained=False)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (8, 32, 32, 3)).astype("float32")
    history = model.fit(x, rng.integers(3, size=8), epochs=2, batch_size=4, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert model.get_layer("head_norm").compute_dtype == compute  # the body really runs in half precision
    if policy == "mixed_float16":  # float16 gradients need the loss scaled, and Keras does it
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    probabilities = model.predict(x, verbose=0)
    assert probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize(
    "tpu, gpus, expected, reason",
    [
        (False, [], "float32", "no GPU"),
        (False, [("Tesla P100-PCIE-16GB", (6, 0))], "float32", "compute capability 6.0, below 7.0"),
        (False, [("Tesla T4", (7, 5))], "mixed_float16", "compute capability 7.5"),
        (False, [("NVIDIA A100-SXM4-40GB", (8, 0))], "mixed_float16", "Tensor Cores"),
        (False, [("a GPU that says nothing", None)], "float32", "unknown"),
        (True, [], "mixed_bfloat16", "TPU"),
    ],
)
def test_auto_precision_takes_float16_only_where_tensor_cores_make_it_pay(tpu, gpus, expected, reason):
    from dogbreeds.distribute import auto_precision

    chosen, why = auto_precision(tpu, gpus)
    assert chosen == expected and reason in why
