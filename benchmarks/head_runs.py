"""Second training runs on cached features, against one frozen-backbone fine-tuning epoch.

    W=../shared/weights/mobilenetv2_1.00_160_dogs.weights.h5
    dogbreeds train --data /tmp/cifar-comp --backbone mobilenet_v2 --weights $W --image-size 160 \
        --epochs 2 --fine-tune-epochs 0 --run-dir /tmp/ft160
    python benchmarks/head_runs.py --data /tmp/cifar-comp --weights $W --image-size 160 --finetune-run /tmp/ft160

Runs `dogbreeds train --method features` once to fill the cache (or finds it filled), then
again with other head settings, as someone trying heads would, and reads each head's training
time from its run's metrics. The frozen epoch comes from the fine-tuning run's history: its
epochs after the first, which also builds and traces the model.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
from features_bench import backbone_arguments  # the script beside this one

SETTINGS = {
    "defaults": [],
    "defaults, again": [],
    "--dropout 0.3": ["--dropout", "0.3"],
    "--dropout 0.6": ["--dropout", "0.6"],
    "--learning-rate 0.0005": ["--learning-rate", "0.0005"],
    "--feature-views 1": ["--feature-views", "1"],
}


def frozen_epoch_seconds(run: Path) -> list[float]:
    history = pd.read_csv(run / "history.csv")
    seconds = history.loc[history["phase"] == "frozen", "seconds"].tolist()
    return seconds[1:] or seconds


def main(args) -> None:
    frozen = frozen_epoch_seconds(Path(args.finetune_run))
    common = ["--data", args.data, "--method", "features", "--backbone", args.backbone, "--weights", args.weights]
    common += ["--image-size", str(args.image_size), "--cache-dir", args.cache_dir]
    rows = []
    with tempfile.TemporaryDirectory() as runs:
        for i, (name, extra) in enumerate({"first (fills the cache)": [], **SETTINGS}.items()):
            run = Path(runs) / f"r{i}"
            command = [sys.executable, "-m", "dogbreeds", "train", *common, *extra, "--run-dir", str(run)]
            subprocess.run(command, check=True, capture_output=True)
            metrics = json.loads((run / "metrics.json").read_text())
            rows.append(
                {
                    "settings": name,
                    "head_s": metrics["head_seconds"],
                    "epochs": metrics["epochs"],
                    "val_log_loss": round(metrics["val_log_loss"], 4),
                    "val_accuracy": metrics["val_accuracy"],
                    "share_of_frozen_epoch": f"{metrics['head_seconds'] / statistics.median(frozen):.1%}",
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    second = [row["head_s"] for row in rows[1:]]
    print(pd.DataFrame(rows).to_string(index=False))
    print(
        f"frozen epoch: median {statistics.median(frozen):.1f} s of {frozen}; second runs' heads: "
        f"median {statistics.median(second):.2f} s ({statistics.median(second) / statistics.median(frozen):.1%}), "
        f"{min(second):.2f} to {max(second):.2f} s"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    backbone_arguments(parser)
    parser.add_argument("--cache-dir", default="cache")
    parser.add_argument("--finetune-run", required=True, help="a fine-tuning run on the same data and size")
    main(parser.parse_args())
