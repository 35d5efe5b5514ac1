"""The grid of issue 25: `classic` against the default recipe over data sizes, budgets and seeds.

    python benchmarks/recipe_grid.py ../shared/datasets/cifar10 ../shared/weights/mobilenetv2_1.00_160_dogs.weights.h5 \
        /tmp/grid --sizes 1000,1500,2500,8000 --budgets 2+4,3+0,2+12,5+5 --seeds 42,1,2

For each size, a CIFAR competition of that many labelled images (`make_cifar_competition.py`,
the same 1,000 test images for every size), then for each budget (frozen + fine-tuning epochs)
and seed, `benchmarks/recipes.py`'s run of each recipe (mobilenet_v2, 96 px): train, submit, score
on the hidden test answers. A finished cell is not trained again, so the grid resumes and grows.
Prints one row per cell, recipe and seed, then each cell's three-seed means and their ratio to the
first recipe's (classic's). `--image-size` sets the size of every cell of one call (the cells say
it in their folder names). `--calibrated` also runs `evaluate` on each run (its temperature and
floor, fitted on the held-out images) and scores the calibrated submission: what a user who runs
evaluate before submit gets.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
from recipes import VARIANTS, run  # benchmarks/ is on the path when run as a script

HERE = Path(__file__).parent


def competition(source: Path, out: Path, size: int) -> Path:
    folder = out / f"comp-{size}"
    if not (folder / "solution.csv").is_file():
        maker = [sys.executable, str(HERE / "make_cifar_competition.py"), str(source), str(folder)]
        subprocess.run([*maker, "--train", str(size), "--test", "1000"], check=True, capture_output=True)
    return folder


def calibrated(folder: Path, data: Path) -> tuple[float, float]:
    """The run's test log loss after `evaluate` fitted its calibration on the held-out images
    (which `submit` then applies), and the temperature it kept; kept in ablation.json."""
    result_file = folder / "ablation.json"
    found = json.loads(result_file.read_text())
    if "calibrated" not in found:
        subprocess.run(["dogbreeds", "evaluate", "--run", str(folder)], check=True, capture_output=True)
        csv = folder / f"submission-{data.name}-calibrated.csv"
        submit = ["dogbreeds", "submit", "--run", str(folder), "--data", str(data), "--out", str(csv), "--force"]
        subprocess.run(submit, check=True, capture_output=True)
        score = ["dogbreeds", "score", str(csv), "--solution", str(data / "solution.csv")]
        text = subprocess.run(score, check=True, capture_output=True, text=True).stdout
        temperature = json.loads((folder / "calibration.json").read_text())["temperature"]
        found["calibrated"] = {"log_loss": float(re.search(r"log loss ([\d.]+)", text).group(1)), "T": temperature}
        result_file.write_text(json.dumps(found))
    return found["calibrated"]["log_loss"], found["calibrated"]["T"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="CIFAR-10 JPEG folders (train/<class>/, test/<class>/)")
    parser.add_argument("weights")
    parser.add_argument("out", type=Path)
    parser.add_argument("--sizes", default="1000,2500,8000")
    parser.add_argument("--budgets", default="2+4,2+12,5+5")
    parser.add_argument("--seeds", default="42,1,2")
    parser.add_argument("--recipes", default="classic,strong", help="names in recipes.py's VARIANTS")
    parser.add_argument("--image-size", default="96")
    parser.add_argument("--calibrated", action="store_true", help="also score each run after evaluate's calibration")
    args = parser.parse_args()
    rows = []
    for size in map(int, args.sizes.split(",")):
        data = competition(args.source, args.out, size)
        for budget in args.budgets.split(","):
            frozen, fine = budget.split("+")
            for seed in args.seeds.split(","):
                common = ["--backbone", "mobilenet_v2", "--image-size", args.image_size, "--epochs", frozen,
                          "--fine-tune-epochs", fine, "--seed", seed]  # fmt: skip
                cell = args.out / f"{size}-{args.image_size}px-{frozen}+{fine}-seed{seed}"
                cell.mkdir(parents=True, exist_ok=True)
                for recipe in args.recipes.split(","):
                    found = run(recipe, VARIANTS[recipe], data, data, args.weights, cell, common)
                    loss = float(re.search(r"log loss ([\d.]+)", found["test"]).group(1))
                    row = {"images": size, "budget": budget, "seed": seed, "recipe": recipe, "log_loss": loss}
                    line = f"| {size} | {budget} | {seed} | {recipe} | {loss:.4f} | {found['train_seconds']} |"
                    if args.calibrated:
                        row["calibrated"], temperature = calibrated(cell / recipe, data)
                        line += f" {row['calibrated']:.4f} (T {temperature:.3f}) |"
                    rows.append(row)
                    print(line, flush=True)
    base, *others = args.recipes.split(",")
    for values in ["log_loss", "calibrated"] if args.calibrated else ["log_loss"]:
        table = pd.DataFrame(rows).pivot_table(index=["images", "budget"], columns="recipe", values=values)
        for other in others:  # the three-seed mean of each against classic's
            table[f"{other} / {base}"] = table[other] / table[base]
        print(f"\n{values}, three-seed means:\n{table.round(4).to_markdown()}")

if __name__ == "__main__":
    main()
