"""Which KerasHub families export to which format, and whether each export gives what
`dogbreeds predict --no-tta --no-calibrate` gives: the export table of docs/backbones.md.

For each family, a tiny random preset (KerasHub's own classes, `save_to_preset`), a features run
on a generated competition through the CLI, then `dogbreeds export` in each format, served as a
user would (SavedModel signature, tf.lite.Interpreter, keras.models.load_model) on the test images.

    python benchmarks/hub_export.py [--families dinov2,siglip] [--folder /tmp/hub-export]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import tensorflow as tf
from export_agreement import DOGBREEDS, predicted, served  # benchmarks/ is on the path when run as a script

from dogbreeds.calibration import DEFAULT_FLOOR
from dogbreeds.hub import TINY, save_tiny_preset
from dogbreeds.metrics import clip
from dogbreeds.pipeline import decode
from dogbreeds.synthetic import make_competition


def dogbreeds(*args) -> subprocess.CompletedProcess:
    return subprocess.run([*DOGBREEDS, *map(str, args)], capture_output=True, text=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default=",".join(TINY))
    parser.add_argument("--folder", type=Path, default=Path(tempfile.mkdtemp(prefix="hub-export-")))
    args = parser.parse_args()
    data = make_competition(args.folder / "competition", n_classes=3, train_per_class=8, n_test=6, image_size=64)
    paths = sorted((data / "test").glob("*.jpg"))
    print("| family | backbone | format | exported | size MB | max difference from predict |")
    print("| --- | --- | --- | --- | --- | --- |")
    for family in args.families.split(","):
        name, size, _ = TINY[family]
        preset = args.folder / "presets" / family
        save_tiny_preset(family, preset)
        run = args.folder / "runs" / family
        trained = dogbreeds(
            "train", "--data", data, "--method", "features", "--backbone", name, "--weights", preset,
            "--image-size", size, "--feature-views", 1, "--head-epochs", 2, "--run-dir", run,
            "--cache-dir", args.folder / "cache",
        )  # fmt: skip
        if trained.returncode:
            print(f"| {family} | {name} | (train failed: {trained.stderr.strip()[-200:]}) | | | |")
            continue
        classes = json.loads((run / "classes.json").read_text())
        expected = predicted(run, paths, classes)  # --no-tta; a run without calibration.json is not calibrated
        images = np.stack([decode(tf.constant(str(p)), None, size).numpy() for p in paths])
        for format in ("savedmodel", "tflite", "keras"):
            target = args.folder / "exports" / f"{family}-{format}"
            result = dogbreeds("export", "--run", run, "--format", format, "--out", target)
            if result.returncode:
                said = (result.stderr.strip().splitlines() or ["?"])[-1][:160]
                print(f"| {family} | {name} | {format} | no: {said} | | |", flush=True)
                continue
            megabytes = sum(f.stat().st_size for f in target.rglob("*") if f.is_file()) / 2**20
            difference = np.abs(
                clip(served(target, format, images), DEFAULT_FLOOR) - expected
            ).max()  # as predict clips
            print(f"| {family} | {name} | {format} | yes | {megabytes:.1f} | {difference:.1e} |", flush=True)


if __name__ == "__main__":
    main()
