"""A Kaggle kernel for Dog Breed Identification with dogbreeds: paste it into a notebook cell, or run it as a script.

Attach the competition ("Add data" -> Dog Breed Identification). Everything is found by itself
and written to /kaggle/working: the run (`runs/`), the feature cache and `submission.csv`.

Internet on: the first line installs the package and Keras downloads the ImageNet weights.
Internet off: attach two datasets, a wheel of this package and the backbone's Keras weights
file (`dogbreeds weights BACKBONE` names it; `--download DIR` fetches it where there is
internet), and install with `pip install /kaggle/input/<wheel dataset>/dogbreeds-*.whl
--no-deps`; `--weights imagenet` finds the file under /kaggle/input by its name.

A kernel session ends after 12 hours (or less): the time budget leaves room for submitting, and
a session that ends anyway leaves a run that the next session continues with RESUME.
"""

import os
import subprocess
import sys

BACKBONE = os.environ.get("DOGBREEDS_BACKBONE", "inception_resnet_v2")
WEIGHTS = os.environ.get("DOGBREEDS_WEIGHTS", "imagenet")  # offline too: found under /kaggle/input by name
BUDGET = os.environ.get("DOGBREEDS_BUDGET", "11h")  # of the session's 12 hours; submitting takes minutes
EXTRA = os.environ.get("DOGBREEDS_ARGS", "").split()  # e.g. --image-size 299 --batch-size 16
ROOT = os.environ.get("DOGBREEDS_KAGGLE_ROOT", "/kaggle")  # set only to try this kernel elsewhere
RUN = f"{ROOT}/working/runs/kernel"
RESUME = False  # True in a later session, with the earlier kernel's output attached and copied to RUN
PACKAGE = "git+https://github.com/<you>/dogbreeds"


def command(*args: str) -> None:
    """One dogbreeds command, its output shown as it comes; a failure stops the kernel with its message."""
    print("$ dogbreeds", *args, flush=True)
    subprocess.run(["dogbreeds", *args], check=True)


if __name__ == "__main__":
    try:
        import dogbreeds  # noqa: F401
    except ImportError:  # internet on: install it (off: install the attached wheel first, see above)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", PACKAGE], check=True)
    if RESUME:
        command("train", "--resume", RUN, "--time-budget", BUDGET)
    else:
        settings = ["--backbone", BACKBONE, "--weights", WEIGHTS, "--time-budget", BUDGET, "--run-dir", RUN]
        command("train", *settings, *EXTRA)
    command("evaluate", "--run", RUN)  # fits the calibration that submit applies
    command("submit", "--run", RUN, "--force")  # -> /kaggle/working/submission.csv
