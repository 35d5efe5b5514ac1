"""Keras' JAX backend (`pytest -m jax`, in .ci/run): the commands a competitor runs, under
KERAS_BACKEND=jax, on two simulated CPU devices and in two processes; and the device rules that
hold under either backend (a made-up TPU, the processes' options), which run in every suite.

A backend is chosen when Keras is imported, so each JAX check is a process of its own: one
process runs the whole journey (train, resume, submit, export, folds, features, airbench), and
this process, under TensorFlow, checks what came out, including that a run trained under one
backend submits the same probabilities under the other.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from PIL import Image

from dogbreeds.distribute import auto_precision, plan_devices
from dogbreeds.errors import DogbreedsError

from helpers import TINY, dogbreeds

TESTS = Path(__file__).parent
JAX = pytest.mark.jax

# One JAX process, two CPU devices: every step through the command line, as a user runs it.
JOURNEY = """
import json, sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from helpers import TINY, dogbreeds

data, cifar, tf_run, out = map(Path, sys.argv[2:6])
said = {}

def step(name, *args):
    result = dogbreeds(*args)
    said[name] = {"rc": result.returncode, "out": result.stdout[-3000:], "err": result.stderr[-3000:]}
    return result.returncode == 0

run = out / "run"
fit = ("--epochs", 1, "--fine-tune-epochs", 1, "--learning-rate", 3e-3)
if step("train", "train", "--data", data, *TINY, *fit, "--strategy", "mirrored", "--accumulate", 2, "--run-dir", run):
    progress = {"epoch": 1, "phase": "fine_tune", "phase_start": 1, "completed": ["frozen"]}
    (run / "progress.json").write_text(json.dumps(progress))  # back to the end of the first epoch
    step("resume", "train", "--resume", run)
    step("submit", "submit", "--run", run, "--out", out / "jax.csv", "--no-calibrate")
    step("evaluate", "evaluate", "--run", run)
    step("savedmodel", "export", "--run", run, "--format", "savedmodel", "--out", out / "savedmodel")
    step("tflite", "export", "--run", run, "--format", "tflite", "--out", out / "tflite")
step("tf_run", "submit", "--run", tf_run, "--out", out / "tf-run-under-jax.csv", "--no-calibrate")
step("folds", "train", "--data", data, *TINY, "--epochs", 1, "--fine-tune-epochs", 0, "--folds", 2,
     "--run-dir", out / "folds")
step("features", "train", "--data", data, "--method", "features", *TINY, "--head-epochs", 3, "--feature-views", 1,
     "--cache-dir", out / "cache", "--run-dir", out / "features")
step("airbench", "cifar", "--model", "airbench", "--data", cifar, "--epochs", 1, "--batch-size", 16,
     "--cache-dir", out / "cifar-cache", "--run-dir", out / "airbench")

# Lookahead with a pull of 0: whatever the optimizer does, fit ends on the weights it started from
# (under JAX the trainer holds the weights during an epoch; the callback must reach them).
import keras, numpy as np
from dogbreeds.cifar.airbench import Lookahead
model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
start = [w.copy() for w in model.get_weights()]
x = np.random.default_rng(0).normal(size=(12, 3)).astype("float32")
model.fit(x, np.ones((12, 2)), batch_size=2, epochs=2, verbose=0, callbacks=[Lookahead(every=2, decay=lambda _: 1.0)])
moved = max(float(np.abs(a - b).max()) for a, b in zip(model.get_weights(), start))
said["lookahead"] = {"rc": 0, "out": str(moved), "err": ""}
print(json.dumps(said))
"""


def jax_process(*args, devices: int = 1, timeout: int = 400) -> subprocess.CompletedProcess:
    pytest.importorskip("jax")
    env = {**os.environ, "KERAS_BACKEND": "jax", "DOGBREEDS_CPU_DEVICES": str(devices)}
    return subprocess.run([*args], env=env, capture_output=True, text=True, timeout=timeout)


def cifar_folders(root: Path) -> Path:
    """train/<class>/ and test/<class>/ of coloured 32 px squares, 16 and 4 a class."""
    rng = np.random.default_rng(0)
    for part, n in (("train", 16), ("test", 4)):
        for c in range(3):
            (root / part / f"colour{c}").mkdir(parents=True)
            for i in range(n):
                image = rng.integers(0, 80, (32, 32, 3), dtype=np.uint8)
                image[..., c] += 150
                Image.fromarray(image).save(root / part / f"colour{c}" / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def journey(competition, tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("jax")
    cifar = cifar_folders(out / "cifar")
    done = jax_process(sys.executable, "-c", JOURNEY, TESTS, competition, cifar, tiny_run, out, devices=2)
    assert done.returncode == 0, done.stderr[-3000:]
    steps = {k: SimpleNamespace(**v) for k, v in json.loads(done.stdout.strip().splitlines()[-1]).items()}
    return SimpleNamespace(out=out, steps=steps, competition=competition, tf_run=tiny_run)


def passed(journey, name):
    step = journey.steps[name]
    assert step.rc == 0, f"{name}: {step.err}"
    return step


@JAX
def test_a_run_trains_data_parallel_on_two_devices_resumes_and_says_its_backend(journey):
    train = passed(journey, "train")
    first = train.out.splitlines()[0]
    assert first.startswith("backend: JAX") and "devices: 2 cpu (DataParallel, 2 replicas); processes: 1" in first
    resumed = passed(journey, "resume")
    assert "resuming" in resumed.out and "after epoch 1 (fine_tune)" in resumed.out
    metrics = json.loads((journey.out / "run" / "metrics.json").read_text())
    assert metrics["strategy"] == "DataParallel, 2 replicas" and metrics["processes"] == 1
    assert metrics["global_batch_size"] == 16 and metrics["images_per_update"] == 32  # 8 a device, 2 batches
    assert metrics["epochs"] == 2 and np.isfinite(metrics["val_log_loss"])


@JAX
def test_runs_submit_alike_under_either_backend(journey, tmp_path):
    passed(journey, "submit")
    passed(journey, "tf_run")
    sample = pd.read_csv(journey.competition / "sample_submission.csv")
    for trained, under_jax in (("run", "jax.csv"), (journey.tf_run, "tf-run-under-jax.csv")):
        jax_csv = pd.read_csv(journey.out / under_jax)
        assert jax_csv.columns.tolist() == sample.columns.tolist() and jax_csv["id"].tolist() == sample["id"].tolist()
        csv = tmp_path / f"{under_jax}.tf.csv"  # evaluate calibrated the JAX run after its submission
        under_tf = dogbreeds("submit", "--run", journey.out / trained, "--out", csv, "--no-calibrate")
        assert under_tf.returncode == 0, under_tf.stderr
        tf_csv = pd.read_csv(csv)
        np.testing.assert_allclose(jax_csv.iloc[:, 1:], tf_csv.iloc[:, 1:], atol=1e-4)


@JAX
def test_evaluate_and_exports_of_a_jax_run_serve_under_tensorflow(journey):
    passed(journey, "evaluate")
    assert (journey.out / "run" / "calibration.json").is_file()
    passed(journey, "savedmodel")
    serve = tf.saved_model.load(str(journey.out / "savedmodel")).signatures["serving_default"]
    images = np.random.default_rng(0).integers(0, 256, (2, 48, 48, 3), dtype=np.uint8)
    probabilities = serve(images=tf.constant(images))["probabilities"].numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    passed(journey, "tflite")  # the converter cannot read jax2tf's SavedModel: TensorFlow exports it
    interpreter = tf.lite.Interpreter(model_path=str(journey.out / "tflite" / "model.tflite"))
    interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"], images.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], images)
    interpreter.invoke()
    np.testing.assert_allclose(
        interpreter.get_tensor(interpreter.get_output_details()[0]["index"]), probabilities, atol=1e-4
    )


@JAX
def test_folds_features_and_airbench_train_under_jax(journey):
    folds = passed(journey, "folds")
    assert "out-of-fold log loss" in folds.out and (journey.out / "folds" / "oof.csv").is_file()
    features = passed(journey, "features")
    assert "head on 64 features" in features.out
    assert float(passed(journey, "lookahead").out) < 1e-6  # Lookahead reaches the weights JAX trains
    passed(journey, "airbench")
    table = pd.read_csv(journey.out / "airbench" / "results.csv")
    assert table["model"].tolist() == ["airbench"] and table["test_accuracy"].between(0, 1).all()


class Device(SimpleNamespace):
    """What plan_devices reads of a jax.Device."""


def chips(platform: str, n: int) -> list[Device]:
    return [Device(platform=platform, id=i) for i in range(n)]


@pytest.mark.parametrize(
    "name, devices, processes, expected",
    [
        ("auto", chips("tpu", 8), 1, (8, True)),  # a Kaggle TPU v5e-8: found by itself, all data-parallel
        ("tpu", chips("tpu", 4), 1, (4, True)),
        ("auto", chips("gpu", 2), 1, (2, True)),
        ("auto", chips("cpu", 2), 1, (1, False)),  # split CPUs train data-parallel only when asked (mirrored)
        ("mirrored", chips("cpu", 2), 1, (2, True)),
        ("default", chips("gpu", 2), 1, (1, False)),
        ("auto", chips("cpu", 2), 2, (2, True)),  # several processes: always all devices of all
    ],
)
def test_the_devices_that_train_under_jax(name, devices, processes, expected):
    chosen, data_parallel = plan_devices(name, devices, processes)
    assert (len(chosen), data_parallel) == expected


@pytest.mark.parametrize(
    "name, devices, processes, message",
    [
        ("tpu", chips("cpu", 1), 1, "--strategy tpu: JAX finds no TPU, only cpu devices"),
        ("default", chips("cpu", 2), 2, "--strategy default trains on one device; 2 processes need auto"),
    ],
)
def test_impossible_device_choices_are_one_line(name, devices, processes, message):
    with pytest.raises(DogbreedsError, match=message):
        plan_devices(name, devices, processes)


def test_a_tpu_computes_in_bfloat16():
    assert auto_precision(True, [])[0] == "mixed_bfloat16"


@pytest.mark.parametrize(
    "flags, message",
    [
        (("--processes", 2), "--processes 2 needs --coordinator HOST:PORT"),
        (("--processes", 2, "--coordinator", "localhost:1234"), "--processes 2 needs --process-id (0 to 1)"),
        (("--processes", 2, "--coordinator", "h:1", "--process-id", 2), "--process-id must be 0 to 1, got 2"),
        (("--processes", 2, "--coordinator", "h:1", "--process-id", 0, "--folds", 2), "several --processes train"),
        (("--processes", 2, "--coordinator", "h:1", "--process-id", 0, "--method", "features"), "several --processes"),
    ],
)
def test_incomplete_or_unfit_process_options_are_one_line_before_anything_starts(competition, flags, message, tmp_path):
    result = dogbreeds("train", "--data", competition, *TINY, *flags, "--run-dir", tmp_path / "r")
    assert result.returncode != 0 and message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "r").exists()


def test_tensorflow_refuses_several_processes(competition, tmp_path):
    result = dogbreeds(
        "train", "--data", competition, *TINY, "--processes", 2, "--coordinator", "localhost:1", "--process-id", 0,
        "--run-dir", tmp_path / "r",
    )  # fmt: skip
    assert result.returncode != 0 and "under the JAX backend only" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "r").exists()


@pytest.mark.parametrize("required", [True, False])
def test_tensorflow_on_a_tpu_vm_says_to_set_keras_backend_jax(required, monkeypatch):
    """Kaggle's TPU image has tensorflow-cpu: its TPU resolver fails there, and the line says what to do."""
    from dogbreeds import distribute

    def no_tpu(**kwargs):
        raise ValueError("Could not find a TPU")

    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    monkeypatch.setattr(distribute, "tpu_machine", lambda: True)
    monkeypatch.setattr(tf.distribute.cluster_resolver.TPUClusterResolver, "connect", no_tpu)
    if required:
        with pytest.raises(DogbreedsError, match="set KERAS_BACKEND=jax before running dogbreeds"):
            distribute._tpu_resolver(required=True)
        return
    warned = []
    monkeypatch.setattr(distribute.log, "warning", warned.append)
    assert distribute._tpu_resolver(required=False) is None
    assert warned == [distribute.JAX_ON_TPU] and "KERAS_BACKEND=jax" in warned[0]
