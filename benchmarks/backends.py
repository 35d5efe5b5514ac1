"""TensorFlow against JAX (issue 28): the same commands on the same CIFAR competition, side by side.

    python benchmarks/backends.py ../shared/datasets/cifar10 ../shared/weights/mobilenetv2_1.00_160_dogs.weights.h5 \
        /tmp/backends --train 2000 --airbench-limit 10000

One CIFAR competition (`make_cifar_competition.py`: `--train` labelled images, 1,000 test images),
then under each backend, each command in a process of its own with KERAS_BACKEND set:
- finetune: `dogbreeds train` (mobilenet_v2 at 96 px, 1 frozen + 2 fine-tuning epochs, seed 42),
  `submit`, `score` on the hidden answers; seconds per epoch from the run's history.csv (the first
  epoch of each phase compiles);
- features: `dogbreeds train --method features` (dense head) from an empty feature cache, then
  submit and score; the wall time covers extraction (3 views of each image) and the head;
- airbench: `dogbreeds cifar --model airbench --epochs 1` on `--airbench-limit` CIFAR training
  images; its test accuracy and seconds per epoch from the run's results.csv.
A finished step is not run again (its result is kept in OUT/results.json); the table is printed
in markdown at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

HERE = Path(__file__).parent
BACKENDS = ("tensorflow", "jax")


def dogbreeds(backend: str, *args) -> tuple[str, float]:
    """`dogbreeds ARGS` under `backend`: its standard output and its wall seconds."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "dogbreeds", *map(str, args)],
        env={**os.environ, "KERAS_BACKEND": backend},
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        sys.exit(f"{backend}: dogbreeds {' '.join(map(str, args))} failed:\n{done.stderr[-3000:]}")
    return done.stdout, time.perf_counter() - started


def test_log_loss(backend: str, run: Path, data: Path) -> float:
    csv = run / "test-submission.csv"
    dogbreeds(backend, "submit", "--run", run, "--data", data, "--out", csv, "--force")
    text, _ = dogbreeds(backend, "score", csv, "--solution", data / "solution.csv")
    return float(re.search(r"log loss ([\d.]+)", text).group(1))


def finetune(backend: str, data: Path, weights: Path, out: Path, seed: int = 42) -> dict:
    run = out / f"{backend}-finetune" if seed == 42 else out / f"{backend}-finetune-seed{seed}"
    common = ("--backbone", "mobilenet_v2", "--weights", weights, "--image-size", 96, "--batch-size", 32)
    _, seconds = dogbreeds(
        backend, "train", "--data", data, *common, "--epochs", 1, "--fine-tune-epochs", 2, "--seed", seed,
        "--run-dir", run, "--no-tta",
    )  # fmt: skip
    history = pd.read_csv(run / "history.csv")
    metrics = json.loads((run / "metrics.json").read_text())
    return {
        "val_log_loss": metrics["val_log_loss"],
        "test_log_loss": test_log_loss(backend, run, data),
        "frozen_epoch_s": float(history["seconds"].iloc[0]),
        "fine_tune_epochs_s": [float(s) for s in history["seconds"].iloc[1:]],
        "train_wall_s": round(seconds, 1),
    }


def features(backend: str, data: Path, weights: Path, out: Path) -> dict:
    run = out / f"{backend}-features"
    _, seconds = dogbreeds(
        backend, "train", "--data", data, "--method", "features", "--backbone", "mobilenet_v2", "--weights", weights,
        "--image-size", 96, "--seed", 42, "--cache-dir", out / f"{backend}-cache", "--run-dir", run,
    )  # fmt: skip
    metrics = json.loads((run / "metrics.json").read_text())
    return {
        "val_log_loss": metrics["val_log_loss"],
        "test_log_loss": test_log_loss(backend, run, data),
        "train_wall_s": round(seconds, 1),
    }


def airbench(backend: str, source: Path, out: Path, limit: int) -> dict:
    run = out / f"{backend}-airbench"
    _, seconds = dogbreeds(
        backend, "cifar", "--model", "airbench", "--epochs", 1, "--data", source, "--limit", limit,
        "--cache-dir", out / "cifar-cache", "--run-dir", run,
    )  # fmt: skip
    row = pd.read_csv(run / "results.csv").iloc[0]
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()} | {"wall_s": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="CIFAR-10 JPEG folders (train/<class>/, test/<class>/)")
    parser.add_argument("weights", type=Path, help="MobileNetV2 weights without the top (.h5)")
    parser.add_argument("out", type=Path)
    parser.add_argument("--train", type=int, default=2000, help="labelled images of the competition")
    parser.add_argument("--airbench-limit", type=int, default=10000, help="CIFAR training images for airbench")
    parser.add_argument("--steps", default="finetune,features,airbench")
    parser.add_argument("--seeds", default="42", help="fine-tuning's seeds: the spread that says what noise is")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    data = args.out / f"comp-{args.train}"
    if not (data / "solution.csv").is_file():
        maker = [sys.executable, str(HERE / "make_cifar_competition.py"), str(args.source), str(data)]
        subprocess.run([*maker, "--train", str(args.train), "--test", "1000"], check=True, capture_output=True)
    results_file = args.out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    steps = {
        "finetune": lambda backend: finetune(backend, data, args.weights, args.out),
        "features": lambda backend: features(backend, data, args.weights, args.out),
        "airbench": lambda backend: airbench(backend, args.source, args.out, args.airbench_limit),
    }
    for seed in [s for s in map(int, args.seeds.split(",")) if s != 42]:  # 42: the finetune step
        steps[f"finetune-seed{seed}"] = lambda backend, seed=seed: finetune(backend, data, args.weights, args.out, seed)
    for step in [*args.steps.split(","), *(s for s in steps if s.startswith("finetune-seed"))]:
        for backend in BACKENDS:  # one after the other, each step: the two backends see the same machine load
            key = f"{step}/{backend}"
            if key not in results:
                results[key] = steps[step](backend)
                results_file.write_text(json.dumps(results, indent=1))
            print(key, json.dumps(results[key]), flush=True)
    print("\n| step | backend | figures |\n| --- | --- | --- |")
    for key, found in results.items():
        step, backend = key.split("/")
        shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in found.items())
        print(f"| {step} | {backend} | {shown} |")


if __name__ == "__main__":
    main()
