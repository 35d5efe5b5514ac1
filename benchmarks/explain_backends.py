"""Grad-CAM under Keras' TensorFlow and JAX backends: the same layer and the same maps, per family.

    python benchmarks/explain_backends.py > explain_backends.md

Builds a classifier on each family's tiny KerasHub preset and on tiny_cnn and mobilenet_v2
(random weights, 64 px for the CNNs), saves each as .keras under TensorFlow, then maps one random
photo for each of 3 breeds under each backend, each in a process of its own (Keras picks its
backend at import), and prints a Markdown table: where each backend takes the map, its grid, the
largest difference between the two backends' maps, and each backend's time for all families
(including the start of the process and, under JAX, compiling each operation the first time).
Needs keras-hub (the `hub` extra) and jax.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def build(folder: Path) -> None:
    import keras

    from dogbreeds.hub import TINY, save_tiny_preset
    from dogbreeds.models import build_backbone, build_classifier

    for family in ["tiny_cnn", "mobilenet_v2", *TINY]:
        name, size, weights = family, 64, "none"
        if family in TINY:
            name, size, weights = TINY[family][0], TINY[family][1], str(folder / family)
            save_tiny_preset(family, weights)
        keras.utils.set_random_seed(0)
        build_classifier(build_backbone(name, weights, size), 3, pretrained=False).save(folder / f"{family}.keras")


def explain(folder: Path) -> None:
    import keras
    import pandas as pd
    from PIL import Image

    from dogbreeds.explain import GradCam, at_map, prefix_tokens
    from dogbreeds.hub import TINY
    from dogbreeds.inference import make_loader
    from dogbreeds.settings import Loading

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (70, 90, 3), dtype=np.uint8)).save(folder / "photo.png")
    images = pd.DataFrame({"path": [str(folder / "photo.png")] * 3})  # one photo, a map per breed
    found = {}
    for family in ["tiny_cnn", "mobilenet_v2", *TINY]:
        name, size = TINY[family][:2] if family in TINY else (family, 64)
        model, layer = at_map(keras.models.load_model(folder / f"{family}.keras"), prefix_tokens(name), scores=True)
        loader = make_loader(Loading(backbone=name, image_size=size, batch_size=8))
        maps = GradCam(model, [prefix_tokens(name)], [loader], [layer]).maps(images, np.arange(3))
        found[family] = {"layer": layer, "maps": maps.tolist()}
    print(json.dumps(found))


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="explain-backends-"))
    results, seconds = {}, {}
    for step, backend in (("build", "tensorflow"), ("explain", "tensorflow"), ("explain", "jax")):
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, __file__, step, str(folder)],
            env={**os.environ, "KERAS_BACKEND": backend},
            capture_output=True,
            text=True,
            check=True,
        )
        if step == "explain":
            results[backend] = json.loads(done.stdout.strip().splitlines()[-1])
            seconds[backend] = time.perf_counter() - start
    tf, jax = results["tensorflow"], results["jax"]
    print("| family | layer (TensorFlow) | layer (JAX) | grid | max abs difference of the maps |")
    print("| --- | --- | --- | --- | --- |")
    for family in tf:
        a, b = np.array(tf[family]["maps"]), np.array(jax[family]["maps"])
        rows, columns = a.shape[1:]
        difference = np.abs(a - b).max()
        print(f"| {family} | {tf[family]['layer']} | {jax[family]['layer']} | {rows}x{columns} | {difference:.1e} |")
    took = f"TensorFlow {seconds['tensorflow']:.1f} s, JAX {seconds['jax']:.1f} s"
    print(f"\nAll families: {took} (each a process of its own).")


if __name__ == "__main__":
    if len(sys.argv) == 3:
        {"build": build, "explain": explain}[sys.argv[1]](Path(sys.argv[2]))
    else:
        main()
