"""Forward images/s and peak memory of every KerasHub backbone at its native size, with
inception_resnet_v2 beside them, on this machine's CPU: the numbers of docs/backbones.md.

Each backbone runs in a process of its own (peak RSS is a process's figure), built by the package's
own `build_backbone` with random weights (a forward pass costs the same as with the published
ones, which cannot be downloaded here), in float32. A warm-up batch first (tracing), then batches
until `--seconds` have passed and three have run; the rate is images over the time of those batches. The extraction
time of the full competition (10,222 labelled + 10,357 test = 20,579 images, each twice for
flip TTA) follows from the rate.

    python benchmarks/hub_backbones.py --out docs/hub_backbones.csv
    python benchmarks/hub_backbones.py --only dinov2_small,inception_resnet_v2 --seconds 5
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

IMAGES = 20_579  # the competition's labelled and test images
VIEWS = 2  # the cache's plain and mirrored views (flip TTA)


# Effective throughput assumed for the GPU estimates (FLOP/s, 1 MAC = 2 FLOPs): about a third of
# each card's fp16 peak (T4: 65 TFLOPS with tensor cores; P100: 18.7 TFLOPS, none), what
# transformer inference commonly reaches; an assumption, not a measurement.
EFFECTIVE = {"T4": 65e12 / 3, "P100": 18.7e12 / 3, "2xT4": 2 * 65e12 / 3}


def gmacs(name: str) -> float:
    """Multiply-accumulates per image at the native size, counted from the architecture: per
    layer, N tokens x (4 d^2 attention projections + 2 d m MLP) + 2 N^2 d attention, plus the patch
    embedding; Swin: the same per stage, with attention inside 12x12 windows."""
    from dogbreeds.hub import PRESETS

    preset = PRESETS[name]
    a, size = preset.architecture, preset.native_size
    if preset.family.name == "swin":
        total, side, width = 0.0, size // 4, a["embed_dim"]
        total += side * side * 48 * width  # 4x4 patches of 3 channels
        window = a["window_size"] ** 2
        for stage, depth in enumerate(a["depths"]):
            n = side * side
            total += depth * (n * 12 * width * width + 2 * n * window * width)
            if stage < len(a["depths"]) - 1:
                total += (n // 4) * 4 * width * 2 * width  # patch merging
                side, width = side // 2, width * 2
        return total / 1e9
    patch, width = a["patch_size"], a["hidden_dim"]
    mlp = a.get("intermediate_dim") or a["mlp_dim"]
    if a.get("use_swiglu_ffn"):
        mlp = 1.5 * ((int(mlp * 2 / 3) + 7) // 8 * 8)  # three matrices of 2/3 the width
    n = (size // patch) ** 2 + preset.prefix_tokens
    per_layer = n * (4 * width * width + 2 * width * mlp) + 2 * n * n * width
    return (a["num_layers"] * per_layer + (size // patch) ** 2 * 3 * patch * patch * width) / 1e9


def measure(name: str, batch: int, seconds: float) -> dict:
    """In this process: build, warm up, time; returns the row."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np

    from dogbreeds.models import build_backbone, get_backbone

    spec = get_backbone(name)
    size = spec.size
    started = time.perf_counter()
    model = build_backbone(name, "none", size)
    built = time.perf_counter() - started
    pixels = np.random.default_rng(0).uniform(0, 255, (batch, size, size, 3)).astype("float32")
    x = spec.preprocess(pixels)
    model.predict(x, batch_size=batch, verbose=0)  # warm-up: tracing
    done, started = 0, time.perf_counter()
    while True:
        model.predict(x, batch_size=batch, verbose=0)
        done += batch
        elapsed = time.perf_counter() - started
        if elapsed >= seconds and done >= 3 * batch:  # three batches at least: a rate, not one batch's time
            break
    rate = done / elapsed
    row = {
        "backbone": name,
        "library": spec.library,
        "size": size,
        "parameters_m": round(model.count_params() / 1e6, 1),
        "vector": int(model.output_shape[-1]) if len(model.output_shape) == 2 else int(model.output_shape[-1]),
        "images_per_s": round(rate, 2),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "build_s": round(built, 1),
        "competition_extraction_h": round(IMAGES * VIEWS / rate / 3600, 1),
    }
    if spec.preset:
        macs = gmacs(name)
        row["gmacs"] = round(macs, 1)
        for card, flops in EFFECTIVE.items():  # estimates: see EFFECTIVE
            row[f"est_{card}_extraction_h"] = round(IMAGES * VIEWS * 2 * macs * 1e9 / flops / 3600, 2)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated backbones (default: inception_resnet_v2 and the KerasHub ones)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=15.0, help="time each backbone at least this long")
    parser.add_argument("--out", help="write the table as CSV here too")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # the child process's backbone
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.batch, args.seconds)))
        return

    from dogbreeds.hub import PRESETS

    names = args.only.split(",") if args.only else ["inception_resnet_v2", *PRESETS]
    rows = []
    for name in names:
        child = subprocess.run(
            [sys.executable, __file__, "--one", name, "--batch", str(args.batch), "--seconds", str(args.seconds)],
            capture_output=True,
            text=True,
        )
        if child.returncode:
            print(f"{name}: failed\n{child.stderr[-2000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(child.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    import pandas as pd

    table = pd.DataFrame(rows)
    print(table.to_markdown(index=False))
    if args.out:
        table.to_csv(args.out, index=False)


if __name__ == "__main__":
    main()
