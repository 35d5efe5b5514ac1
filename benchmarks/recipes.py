"""The recipe ablation of docs/recipes.md: `classic`, `strong`, and each option alone added to
`classic`, trained with the same seed and epochs, then scored on the test images.

    python benchmarks/make_cifar_competition.py ../shared/datasets/cifar10 /tmp/recipe-comp --train 2500 --test 1000
    python benchmarks/recipes.py /tmp/recipe-comp ../shared/weights/mobilenetv2_1.00_160_dogs.weights.h5 /tmp/recipes

Each variant is `dogbreeds train` (mobilenet_v2, 96 px, 2 frozen + 4 fine-tuning epochs), then
`dogbreeds submit` and `dogbreeds score` against solution.csv; a finished variant is not trained
again, and `--test-data OTHER` scores the same runs on another competition's test images (the
same classes; more of them, for a smaller standard error). Prints the table as markdown;
`--only NAME` runs some variants.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

VARIANTS = {
    "classic": ["--recipe", "classic"],
    "strong": ["--recipe", "strong"],
    "+ mixup 0.2": ["--recipe", "classic", "--mixup", "0.2"],
    "+ cutmix 1.0": ["--recipe", "classic", "--cutmix", "1.0"],
    "+ randaugment 2": ["--recipe", "classic", "--randaugment", "2"],
    "+ random erasing 0.25": ["--recipe", "classic", "--random-erasing", "0.25"],
    "+ label smoothing 0.1": ["--recipe", "classic", "--label-smoothing", "0.1"],
    "+ cosine, warm-up 1": ["--recipe", "classic", "--schedule", "cosine", "--warmup-epochs", "1"],
    "+ ema": ["--recipe", "classic", "--ema"],
    # Towards `strong`: fine-tuning at a tenth of --learning-rate instead of a hundredth, then more on top.
    "+ fine-tune rate 1e-4": ["--recipe", "classic", "--fine-tune-learning-rate", "1e-4"],
    "+ 1e-4, cosine, ema": ["--recipe", "classic", "--fine-tune-learning-rate", "1e-4", "--schedule", "cosine",
                            "--warmup-epochs", "1", "--ema"],
    "+ 1e-4, cosine, ema, smoothing 0.1": ["--recipe", "classic", "--fine-tune-learning-rate", "1e-4",
                                           "--schedule", "cosine", "--warmup-epochs", "1", "--ema",
                                           "--label-smoothing", "0.1"],
    "+ 1e-4, cosine, ema, mixup 0.2": ["--recipe", "classic", "--fine-tune-learning-rate", "1e-4",
                                       "--schedule", "cosine", "--warmup-epochs", "1", "--ema", "--mixup", "0.2"],
}  # fmt: skip


def run(name: str, extra: list[str], data: Path, test_data: Path, weights: str, out: Path, common: list[str]) -> dict:
    """Train the variant once (kept in its folder), then score it on test_data's test images once."""
    folder = out / name.replace(" ", "_").replace("+", "plus").replace(",", "").replace(".", "")
    result_file = folder / "ablation.json"
    found = json.loads(result_file.read_text()) if result_file.is_file() else {}
    if not found:
        started = time.perf_counter()
        train = ["dogbreeds", "train", "--data", str(data), "--weights", weights, *common, *extra,
                 "--run-dir", str(folder)]  # fmt: skip
        subprocess.run(train, check=True, capture_output=True, text=True)
        metrics = json.loads((folder / "metrics.json").read_text())
        found = {
            "variant": name,
            "val_log_loss": metrics["val_log_loss"],
            "train_seconds": metrics["train_seconds"],
            "command_seconds": round(time.perf_counter() - started, 1),
        }
    key = f"test {test_data}"
    if key not in found:
        csv = folder / f"submission-{test_data.name}.csv"
        submit = ["dogbreeds", "submit", "--run", str(folder), "--data", str(test_data), "--out", str(csv), "--force"]
        subprocess.run(submit, check=True, capture_output=True)
        found[key] = subprocess.run(
            ["dogbreeds", "score", str(csv), "--solution", str(test_data / "solution.csv")],
            check=True, capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip
    result_file.write_text(json.dumps(found))
    return found | {"test": found[key]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path)
    parser.add_argument("weights")
    parser.add_argument("out", type=Path)
    parser.add_argument("--test-data", type=Path, help="Score on this competition's test images (default: data's).")
    parser.add_argument("--only", action="append", help="Variant names to run (default: all).")
    parser.add_argument("--image-size", default="96")
    parser.add_argument("--epochs", default="2")
    parser.add_argument("--fine-tune-epochs", default="4")
    parser.add_argument("--seed", default="42")
    args = parser.parse_args()
    common = ["--backbone", "mobilenet_v2", "--image-size", args.image_size, "--epochs", args.epochs,
              "--fine-tune-epochs", args.fine_tune_epochs, "--seed", args.seed]  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    print("| variant | test log loss, accuracy | validation log loss | training s |")
    print("| --- | --- | --- | --- |")
    for name, extra in VARIANTS.items():
        if args.only and name not in args.only:
            continue
        found = run(name, extra, args.data, args.test_data or args.data, args.weights, args.out, common)
        print(f"| {name} | {found['test']} | {found['val_log_loss']:.4f} | {found['train_seconds']} |", flush=True)


if __name__ == "__main__":
    main()
