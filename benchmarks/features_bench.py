"""Feature extraction against the backbone's own speed, and its peak memory.

    python benchmarks/features_bench.py --data /tmp/cifar-comp \
        --weights ../shared/weights/mobilenetv2_1.00_160_dogs.weights.h5 --image-size 160 --images 2000

1. the backbone's `predict` on images already decoded, resized and preprocessed in memory;
2. `FeatureCache` extraction of the same images from their files (a fresh cache);
3. peak resident memory of extraction, in a child process, for N images and for 3N.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def frame(data: str, n: int) -> pd.DataFrame:
    labels = pd.read_csv(f"{data}/labels.csv")
    paths = [f"{data}/train/{i}.jpg" for i in labels["id"]]
    paths += sorted(f"{data}/test/{p}" for p in os.listdir(f"{data}/test"))
    return pd.DataFrame({"path": (paths * (n // len(paths) + 1))[:n]})


def child(args) -> None:
    """Extract args.images images into a fresh cache and report peak memory."""
    from dogbreeds.cache import FeatureCache, FeatureSpec

    spec = FeatureSpec(args.backbone, args.weights, args.image_size)
    images = frame(args.data, args.images)
    with tempfile.TemporaryDirectory() as cache:
        FeatureCache(cache, args.batch_size).features(spec, images)
    # VmHWM belongs to this process's own memory map; ru_maxrss would carry the parent's peak over exec.
    peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    print(json.dumps({"images": args.images, "peak_rss_mb": peak_kb / 1024}))


def main(args) -> None:
    from dogbreeds.cache import FeatureCache, FeatureSpec
    from dogbreeds.models import get_backbone
    from dogbreeds.pipeline import TFDataLoader

    spec = FeatureSpec(args.backbone, args.weights, args.image_size)
    images = frame(args.data, args.images)
    results = {"load_average_before": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory() as cache_dir:
        cache = FeatureCache(cache_dir, args.batch_size)
        model, _ = cache._extractor(spec)
        loader = TFDataLoader(args.image_size, args.batch_size, get_backbone(args.backbone).preprocess)
        in_memory = np.concatenate([np.asarray(x) for x in loader.prediction(images)])
        model.predict(in_memory[: args.batch_size * 2], batch_size=args.batch_size, verbose=0)  # warm up
        started = time.perf_counter()
        model.predict(in_memory, batch_size=args.batch_size, verbose=0)
        results["predict_in_memory_images_per_s"] = len(images) / (time.perf_counter() - started)
        del in_memory
        cache.features(spec, images.head(args.batch_size * 2))  # warm up the compiled forward pass
        started = time.perf_counter()
        cache.features(spec, images)
        results["extraction_images_per_s"] = len(images) / (time.perf_counter() - started)
    speeds = results["extraction_images_per_s"], results["predict_in_memory_images_per_s"]
    results["extraction_share_of_predict"] = speeds[0] / speeds[1]
    for n in (args.images, 3 * args.images):
        command = [sys.executable, __file__, "--child", "--images", str(n)]
        command += ["--data", args.data, "--weights", args.weights, "--image-size", str(args.image_size)]
        command += ["--backbone", args.backbone, "--batch-size", str(args.batch_size)]
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        results[f"peak_rss_mb_{n}_images"] = json.loads(out)["peak_rss_mb"]
    results["load_average_after"] = os.getloadavg()[0]
    print(json.dumps(results, indent=2))


def backbone_arguments(parser: argparse.ArgumentParser) -> None:
    """The competition and backbone options both feature benchmarks take."""
    parser.add_argument("--data", required=True)
    parser.add_argument("--backbone", default="mobilenet_v2")
    parser.add_argument("--weights", required=True)
    parser.add_argument("--image-size", type=int, default=160)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    backbone_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--child", action="store_true")
    arguments = parser.parse_args()
    child(arguments) if arguments.child else main(arguments)
