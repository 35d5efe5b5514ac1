"""Run tracking as a user checks it: TensorBoard's event files hold the epochs of history.csv (a
resumed run appending to them) and evaluate's pictures; `--track mlflow` puts the settings, the
epochs, the figures and the files in an MLflow run, which `--resume`, `evaluate` and `blend` go
on logging to."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest
import tensorflow as tf
from mlflow.tracking import MlflowClient

from helpers import TINY, dogbreeds

EPOCH_SCALARS = {"train": ("loss", "accuracy", "learning_rate"), "validation": ("loss", "accuracy")}


@pytest.fixture(scope="module", autouse=True)
def store(tmp_path_factory):
    """A local MLflow store of the module's own: the file store, which MLflow 3 opens only when asked."""
    place = tmp_path_factory.mktemp("mlflow") / "mlruns"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", place.as_uri())
        patch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
        patch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
        patch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
        yield place


@pytest.fixture(scope="module")
def tracked(competition, tmp_path_factory):
    """A tracked run stopped by its time budget after its first epoch, then resumed to its end."""
    run = tmp_path_factory.mktemp("tracked") / "run"
    train = ("train", "--data", competition, *TINY, "--epochs", 1, "--fine-tune-epochs", 1, "--track", "mlflow")
    result = dogbreeds(*train, "--time-budget", "1s", "--run-dir", run)
    assert result.returncode == 0 and "stopped by --time-budget" in result.stdout, result.stderr
    assert len(pd.read_csv(run / "history.csv")) == 1
    result = dogbreeds("train", "--resume", run)
    assert result.returncode == 0, result.stderr
    return run


def events(folder: Path) -> dict[str, dict[int, list]]:
    """Every value of the event files in `folder`, by tag and step (a list: a step written twice shows)."""
    found: dict[str, dict[int, list]] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                found.setdefault(value.tag, {}).setdefault(event.step, []).append(tf.make_ndarray(value.tensor))
    return found


def assert_board_holds_history(run: Path) -> None:
    history = pd.read_csv(run / "history.csv")
    for part, names in EPOCH_SCALARS.items():
        found = events(run / "tensorboard" / part)
        for name in names:
            column = name if part == "train" or name == "learning_rate" else f"val_{name}"
            steps = found[f"epoch_{name}"]
            assert sorted(steps) == history["epoch"].tolist(), (part, name)
            assert all(len(values) == 1 for values in steps.values()), (part, name, steps)  # each epoch once
            logged = [float(steps[epoch][0]) for epoch in history["epoch"]]
            assert logged == pytest.approx(history[column].tolist(), rel=1e-6), (part, name)


def mlflow_run(run: Path):
    recorded = json.loads((run / "tracking.json").read_text())["mlflow"]
    client = MlflowClient(recorded["uri"])
    return client, client.get_run(recorded["run_id"])


def test_every_run_writes_its_epochs_to_tensorboard(tiny_run):
    assert not (tiny_run / "tracking.json").exists()  # not tracked in MLflow: TensorBoard all the same
    assert_board_holds_history(tiny_run)


def test_a_resumed_run_appends_to_its_tensorboard_logs(tracked):
    assert len(list((tracked / "tensorboard" / "train").glob("events.out.tfevents.*"))) == 2  # one per command
    assert_board_holds_history(tracked)


def test_track_mlflow_logs_the_settings_every_epoch_the_figures_and_the_files(tracked):
    client, found = mlflow_run(tracked)
    assert found.info.status == "FINISHED" and found.info.run_name == "run"
    config = json.loads((tracked / "config.json").read_text())
    params = found.data.params
    assert params["backbone"] == "tiny_cnn" and params["batch_size"] == "8" and params["track"] == "mlflow"
    assert params["augmentation.flip"] == "true" and params["limit"] == "null"
    leaves = sum(len(v) if isinstance(v, dict) else 1 for v in config.values())
    assert len(params) == leaves

    history = pd.read_csv(tracked / "history.csv")
    for column in ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "seconds"):
        logged = sorted((m.step, m.value) for m in client.get_metric_history(found.info.run_id, column))
        assert [step for step, _ in logged] == history["epoch"].tolist(), column
        assert [value for _, value in logged] == pytest.approx(history[column].tolist(), rel=1e-12), column
    metrics = json.loads((tracked / "metrics.json").read_text())
    assert found.data.metrics["final/val_log_loss"] == pytest.approx(metrics["val_log_loss"])
    assert found.data.metrics["final/stopped_by_time_budget"] == 0.0  # the resumed command's figures, last

    artifacts = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert {"config.json", "history.csv", "metrics.json", "model.keras", "val_predictions.csv"} <= artifacts
    assert "tensorboard" in artifacts and not artifacts & {"last.keras", "progress.json", "dogbreeds.lock"}


def test_evaluate_adds_its_figures_and_pictures_to_tensorboard_and_mlflow(tracked):
    for _ in range(2):  # a second evaluation replaces the first's logs, as it does its pictures
        result = dogbreeds("evaluate", "--run", tracked)
        assert result.returncode == 0, result.stderr
    report = json.loads((tracked / "evaluation.json").read_text())
    board = tracked / "tensorboard" / "evaluation"
    assert len(list(board.glob("events.out.tfevents.*"))) == 1
    found = events(board)
    assert float(found["evaluation/log_loss"][0][0]) == pytest.approx(report["log_loss"], rel=1e-6)
    for picture in ("confusion", "examples", "reliability"):
        width, height, png = found[f"evaluation/{picture}"][0][0]  # TensorBoard's image: size, then the PNG
        assert png.startswith(b"\x89PNG") and int(width) > 100 and int(height) > 100, picture

    client, run = mlflow_run(tracked)
    assert run.data.metrics["evaluation/log_loss"] == pytest.approx(report["log_loss"])
    assert run.data.metrics["evaluation/temperature"] == pytest.approx(report["calibration"]["temperature"])
    logged = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert {"evaluation.md", "calibration.json", "confusion.png", "examples.png"} <= logged


def test_blend_logs_its_figures_to_each_tracked_run(tracked, tiny_run, competition, tmp_path):
    out = tmp_path / "blend.csv"
    result = dogbreeds("blend", tracked, tiny_run, "--data", competition, "--out", out)
    assert result.returncode == 0, result.stderr
    record = json.loads(out.with_suffix(".json").read_text())
    client, run = mlflow_run(tracked)
    assert run.data.metrics["blend/log_loss"] == pytest.approx(record["figures"]["blend_log_loss"])
    assert run.data.metrics["blend/weight"] == pytest.approx(record["weights"][0])
    assert [a.path for a in client.list_artifacts(run.info.run_id, "blends")] == ["blends/blend.json"]


def test_track_mlflow_without_mlflow_is_one_line_and_no_run(competition, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` fails, as where it is not installed
    result = dogbreeds("train", "--data", competition, *TINY, "--track", "mlflow", "--run-dir", tmp_path / "run")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip() == (
        'error: --track mlflow needs MLflow, which is not installed here: pip install "dogbreeds[mlflow]"'
    )
    assert not (tmp_path / "run").exists()


def test_evaluate_of_a_tracked_run_without_mlflow_warns_and_writes_its_report(tracked, tmp_path, monkeypatch):
    run = shutil.copytree(tracked, tmp_path / "run")
    monkeypatch.setitem(sys.modules, "mlflow", None)
    result = dogbreeds("evaluate", "--run", run)
    assert result.returncode == 0, result.stderr
    assert "not logged there: --track mlflow needs MLflow" in result.stderr and (run / "evaluation.md").is_file()


def test_a_store_mlflow_cannot_open_is_one_line_and_no_run(competition, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "nosuchstore://anywhere")
    result = dogbreeds("train", "--data", competition, *TINY, "--track", "mlflow", "--run-dir", tmp_path / "run")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1 and "MLflow cannot open its tracking store nosuchstore://anywhere" in errors[0]
    assert not (tmp_path / "run").exists()


def test_a_store_that_fails_during_training_is_said_once_and_the_run_trains(competition, tmp_path, monkeypatch):
    calls = []

    def refuse(self, *args, **kwargs):
        calls.append(args)
        raise ConnectionError("the tracking server went away")

    monkeypatch.setattr(MlflowClient, "log_batch", refuse)
    run = tmp_path / "run"
    result = dogbreeds("train", "--data", competition, *TINY, "--epochs", 2, "--fine-tune-epochs", 0,
                       "--track", "mlflow", "--run-dir", run)  # fmt: skip
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "MLflow" in line]
    assert len(warnings) == 1 and "the tracking server went away" in warnings[0], result.stderr
    assert "no more is logged there" in warnings[0] and len(calls) == 1  # the settings; no epoch tried after
    assert len(pd.read_csv(run / "history.csv")) == 2 and (run / "model.keras").is_file()
