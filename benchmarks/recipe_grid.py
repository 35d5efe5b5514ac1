"""The grid of issue 25: `classic` against the default recipe over data sizes, budgets and seeds.

    python benchmarks/recipe_grid.py ../shared/datasets/cifar10 ../shared/weights/mobilenetv2_1.00_160_dogs.weights.h5 \
        /tmp/grid --sizes 1000,1500,2500,8000 --budgets 2+4,3+0,2+12,5+5 --seeds 42,1,2

For each size, a CIFAR competition of that many labelled images (`make_cifar_competition.py`,
the same 1,000 test images for every size), then for each budget (frozen + fine-tuning epochs)
and seed, `benchmarks/recipes.py`'s run of each recipe (mobilenet_v2, 96 px): train, submit, score
on the hidden test answers. A finished cell is not trained again, so the grid resumes and grows.
Prints one row per cell, recipe and seed, then each cell's three-seed means and their ratio to the
first recipe's (classic's).
"""

from __future__ import annotations

import argparse
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
                    rows.append({"images": size, "budget": budget, "seed": seed, "recipe": recipe, "log_loss": loss,
                                 "train_s": found["train_seconds"]})  # fmt: skip
                    print(
                        f"| {size} | {budget} | {seed} | {recipe} | {loss:.4f} | {found['train_seconds']} |", flush=True
                    )
    table = pd.DataFrame(rows).pivot_table(index=["images", "budget"], columns="recipe", values="log_loss")
    base, *others = args.recipes.split(",")
    for other in others:  # the three-seed mean of each against classic's
        table[f"{other} / {base}"] = table[other] / table[base]
    print(table.round(4).to_markdown())

if __name__ == "__main__":
    main()
