"""The dense head over several seeds on fixed cached vectors: validation log loss, accuracy, epochs, seconds.

    python benchmarks/head_seeds.py features.npz [--seeds 0 1 2 3 4] [--head dense]

features.npz holds x, y (the training rows: every view of each image), x_val, y_val (the
validation vectors, views averaged) and n_classes, as `train --method features` builds them
(`cache.head_inputs`). Every seed trains on the same arrays, so the spread is the head's own.
"""

import argparse
import json
import time

import numpy as np

from dogbreeds.config import TrainConfig
from dogbreeds.heads import HEADS
from dogbreeds.metrics import scores

parser = argparse.ArgumentParser()
parser.add_argument("npz")
parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
parser.add_argument("--head", default="dense", choices=list(HEADS))
args = parser.parse_args()
arrays = np.load(args.npz)
x, y, x_val, y_val, n_classes = (arrays[k] for k in ("x", "y", "x_val", "y_val", "n_classes"))
rows = []
for seed in args.seeds:
    config = TrainConfig(method="features", head=args.head, seed=seed)
    started = time.perf_counter()
    model, history = HEADS[args.head](config.head_settings, x, y, x_val, y_val, int(n_classes))
    seconds = time.perf_counter() - started
    found = scores(model.predict(x_val, batch_size=1024, verbose=0), y_val)
    rows.append({"seed": seed, **found, "epochs": len(history), "seconds": round(seconds, 2)})
    print(json.dumps(rows[-1]))
losses = np.array([r["log_loss"] for r in rows])
accuracies = np.array([r["accuracy"] for r in rows])
print(f"{args.head} head, {len(rows)} seeds: log loss {losses.mean():.4f} +- {losses.std(ddof=1):.4f}, "
      f"accuracy {accuracies.mean():.4f} +- {accuracies.std(ddof=1):.4f}")
