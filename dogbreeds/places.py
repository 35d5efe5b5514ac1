"""Where runs, submissions, caches and the competition are: the working directory, or a Kaggle kernel's folders.

A Kaggle kernel is recognised by its `/kaggle/working` folder (`$DOGBREEDS_KAGGLE_ROOT` stands in
for `/kaggle`, for tests and checks). There only `/kaggle/working` is writable and kept as the
kernel's output, so runs, submissions and the feature cache go there, whatever the current
directory: a later kernel that attaches this one's output finds its runs and vectors. Decoded
images (`--cache-images disk`) are large and quick to remake, so they go to the temporary folder,
which is not kept.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from dogbreeds.errors import DogbreedsError

KAGGLE_ROOT_VARIABLE = "DOGBREEDS_KAGGLE_ROOT"
COMPETITION = "dog-breed-identification"


def kaggle_root() -> Path | None:
    """The Kaggle root (`/kaggle`) when this is a Kaggle kernel, else None."""
    root = Path(os.environ.get(KAGGLE_ROOT_VARIABLE) or "/kaggle")
    return root if (root / "working").is_dir() else None


def _working(name: str) -> Path:
    root = kaggle_root()
    return root / "working" / name if root else Path(name)


def runs_dir() -> Path:
    """runs/, or /kaggle/working/runs on a kernel."""
    return _working("runs")


def submissions_dir() -> Path:
    """submissions/, or /kaggle/working/submissions on a kernel."""
    return _working("submissions")


def explain_dir() -> Path:
    """explain/, or /kaggle/working/explain on a kernel: `dogbreeds explain`'s pictures."""
    return _working("explain")


def kaggle_submission() -> Path | None:
    """/kaggle/working/submission.csv on a kernel: the file a kernel submits."""
    root = kaggle_root()
    return root / "working" / "submission.csv" if root else None


def feature_cache(given: str | Path) -> Path:
    """--cache-dir as given; its default, `cache`, is /kaggle/working/cache on a kernel."""
    return _working("cache") if str(given) == "cache" else Path(given)


def image_cache() -> Path:
    """Where --cache-images disk keeps decoded images: $DOGBREEDS_CACHE, a kernel's temporary folder, or ./cache."""
    if os.environ.get("DOGBREEDS_CACHE"):
        return Path(os.environ["DOGBREEDS_CACHE"])
    return Path(tempfile.gettempdir()) / "dogbreeds-images" if kaggle_root() else Path("cache")


def kaggle_competition() -> Path | None:
    """The competition attached to a kernel: input/dog-breed-identification, or the one input folder
    (or input/competitions/ folder) holding labels.csv and train/; two of those are one error."""
    root = kaggle_root()
    if root is None:
        return None
    if (root / "input" / COMPETITION).is_dir():
        return root / "input" / COMPETITION
    found = sorted(
        folder
        for pattern in ("*", "competitions/*")
        for folder in (root / "input").glob(pattern)
        if (folder / "labels.csv").is_file() and (folder / "train").is_dir()
    )
    if len(found) > 1:
        raise DogbreedsError(
            f"two competitions are attached: {found[0]} and {found[1]}; pass the one to use with --data"
        )
    return found[0] if found else None
