"""Exported models against `dogbreeds predict --no-tta`: top-1 agreement and the largest probability gap.

    python benchmarks/export_agreement.py RUN [RUN...] --photos ../shared/datasets/dog-photos --out /tmp/exports

Each run is exported as a SavedModel and as TFLite (`dogbreeds export`), `dogbreeds predict
--no-tta --json` gives its probabilities for every photo, and the exported models get the same
photos decoded as the loader decodes them (`pipeline.decode`, turned upright by their EXIF
orientation), as uint8 at the run's size. Prints a Markdown table; the second difference is
with the exported probabilities clipped at 1e-6 and renormalised, as `predict` writes them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from dogbreeds.calibration import DEFAULT_FLOOR
from dogbreeds.images import inspect_images
from dogbreeds.metrics import clip
from dogbreeds.pipeline import decode
from dogbreeds.prediction import image_paths

DOGBREEDS = [sys.executable, "-m", "dogbreeds"]


def predicted(run: Path, photos: list[Path], classes: list[str]) -> np.ndarray:
    command = [*DOGBREEDS, "predict", *map(str, photos), "--run", str(run), "--no-tta", "--json", "--top", "1000"]
    lines = subprocess.run(command, capture_output=True, text=True, check=True).stdout.splitlines()
    rows = [{p["breed"]: p["probability"] for p in json.loads(line)["predictions"]} for line in lines]
    return np.array([[row[c] for c in classes] for row in rows])


def served(target: Path, format: str, images: np.ndarray) -> np.ndarray:
    """The exported model run as a user would, without dogbreeds."""
    if format == "keras":
        import keras

        try:
            import keras_hub  # noqa: F401  a KerasHub backbone's classes
        except ImportError:
            pass
        return keras.models.load_model(target / "model.keras", safe_mode=True).predict(images, verbose=0)
    if format == "savedmodel":
        signature = tf.saved_model.load(str(target)).signatures["serving_default"]
        batches = np.array_split(images, 10)
        return np.concatenate([signature(images=tf.constant(b))["probabilities"].numpy() for b in batches])
    interpreter = tf.lite.Interpreter(model_path=str(target / "model.tflite"), num_threads=2)
    given, answer = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    interpreter.resize_tensor_input(given["index"], images.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(given["index"], images)
    interpreter.invoke()
    return interpreter.get_tensor(answer["index"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--photos", type=Path, required=True, help="a folder of photos (searched with sub-folders)")
    parser.add_argument("--out", type=Path, required=True, help="where the exports go")
    args = parser.parse_args()
    photos = image_paths([args.photos])
    orientations = inspect_images([str(p) for p in photos])["orientation"].to_numpy()
    print("| run | format | photos | top-1 agreement | largest difference | clipped as predict | export time |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for run in args.runs:
        classes = json.loads((run / "classes.json").read_text())
        size = json.loads((run / "config.json").read_text())["image_size"]
        expected = predicted(run, photos, classes)
        images = np.stack(
            [decode(tf.constant(str(p)), tf.constant(o), size).numpy() for p, o in zip(photos, orientations)]
        )
        for format in ("savedmodel", "tflite"):
            target = args.out / f"{run.name}-{format}"
            started = time.perf_counter()
            command = [*DOGBREEDS, "export", "--run", str(run), "--format", format, "--out", str(target), "--force"]
            subprocess.run(command, capture_output=True, text=True, check=True)
            seconds = time.perf_counter() - started
            probabilities = served(target, format, images)
            agree = np.mean(probabilities.argmax(1) == expected.argmax(1))
            gap = np.abs(probabilities - expected).max()
            clipped = np.abs(clip(probabilities, DEFAULT_FLOOR) - expected).max()  # as predict clips and renormalises
            figures = f"{agree:.1%} | {gap:.2e} | {clipped:.2e} | {seconds:.0f} s"
            print(f"| {run.name} | {format} | {len(photos)} | {figures} |")


if __name__ == "__main__":
    main()
