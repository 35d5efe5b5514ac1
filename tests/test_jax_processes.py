"""Two processes training one model under JAX (`pytest -m jax`): jax.distributed on localhost,
each process one CPU device, as two machines would run it. A module of its own, so that xdist
runs it beside test_jax.py's journey."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from helpers import TINY

pytestmark = pytest.mark.jax


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def two_processes(competition, run, scratch, other: tuple[str, ...] = ()) -> list[tuple[int, str, str]]:
    """`dogbreeds train` as processes 0 and 1 of two, process 1 with the `other` options too:
    (exit status, stdout, stderr) of each."""
    pytest.importorskip("jax")
    command = [sys.executable, "-m", "dogbreeds", "train", "--data", str(competition), *map(str, TINY)]
    command += ["--epochs", "1", "--fine-tune-epochs", "1", "--run-dir", str(run)]
    command += ["--coordinator", f"localhost:{free_port()}", "--processes", "2"]
    scratch.mkdir()
    env = {**os.environ, "KERAS_BACKEND": "jax", "TMPDIR": str(scratch)}  # one CPU device each
    env.pop("DOGBREEDS_CPU_DEVICES", None)
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    processes = [subprocess.Popen([*command, "--process-id", "0"], env=env, **pipes)]
    processes.append(subprocess.Popen([*command, "--process-id", "1", *other], env=env, **pipes))
    said = [p.communicate(timeout=300) for p in processes]
    return [(p.returncode, out, err) for p, (out, err) in zip(processes, said)]


def test_two_processes_train_one_model_and_only_process_0_writes_the_run(competition, tmp_path):
    run, scratch = tmp_path / "run", tmp_path / "tmp"
    (rc0, out0, err0), (rc1, out1, err1) = two_processes(competition, run, scratch)
    assert (rc0, rc1) == (0, 0), err0[-2000:] + err1[-2000:]
    # Both end with the same weights (train compares their sums across processes, or fails), process 0 speaks.
    assert "processes: 2, this is 0" in out0 and f"run {run}: validation log loss" in out0
    assert "validation log loss" not in out1 and "backend:" not in out1
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["strategy"] == "DataParallel, 2 replicas"
    assert metrics["global_batch_size"] == 16  # 8 on each process's device
    assert not list(scratch.glob("dogbreeds-process-*"))  # process 1's own folder is gone


@pytest.mark.parametrize(
    "other", [("--seed", "7"), ("--learning-rate", "0.05")], ids=["other first weights", "other updates"]
)
def test_processes_that_train_different_models_fail_in_one_line(competition, tmp_path, other):
    """Process 1 with another --seed starts from other weights (JAX refuses to place them); with
    another rate it makes other updates (train's check at the end tells). No run is left as done."""
    run = tmp_path / "run"
    for rc, _, err in two_processes(competition, run, tmp_path / "tmp", other=other):
        assert rc != 0 and "error: the processes hold different weights" in err, err[-2000:]
        assert "Traceback" not in err
    assert not (run / "metrics.json").exists()
