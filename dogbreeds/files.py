"""Writing files so that a reader never sees half of one, and claiming an output path once.

Every file the package writes (a run's files, a submission, the feature cache's progress, a
picture) goes through here: written beside its place, then renamed into it. A temporary name
carries the writer's process id (`.NAME.PID.tmp`), so that what a killed process left behind is
known as such and swept by the next command writing there (`sweep`). The probability table (id,
then one column per class, in the sample submission's order) is the one format of every
predictions file and submission, so it is built here too.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import pandas as pd

from dogbreeds.errors import DogbreedsError

_UMASK = os.umask(0)
os.umask(_UMASK)
FLOAT_FORMAT = "%.8g"  # probabilities in a CSV: enough digits for any log loss, a third of the bytes of repr


def write_atomic(path: Path, data: str | bytes) -> Path:
    """Write to a temporary file beside `path`, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "wb" if isinstance(data, bytes) else "w"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; a plain file is what the user expects
        os.replace(tmp, path)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(error, OSError) and error.filename is None:  # a full disk names no file
            error.filename = str(path)
        raise
    return path


def temporary_sibling(path: Path, kind: str = "tmp") -> Path:
    """A fresh name beside `path` for writers that need a file name (Keras, matplotlib: its
    suffix kept) or a folder (an export; `kind="old"`: a previous one moved aside)."""
    return path.with_name(f".{path.stem}.{os.getpid()}.{kind}{path.suffix}")


def replace_folder(folder: Path, target: Path) -> None:
    """`folder`, written whole under a temporary name, renamed to `target`; a previous target is
    moved aside first and removed after, so a reader finds the old folder or the new one."""
    aside = temporary_sibling(target, "old")
    if target.exists():
        os.replace(target, aside)
    os.replace(folder, target)
    shutil.rmtree(aside, ignore_errors=True)


# .NAME.PID.tmp[.SUFFIX], .NAME.PID.RANDOM.tmp (write_atomic) and .NAME.PID.old[.SUFFIX]
_TEMPORARY = re.compile(r"\.(?P<of>.+?)\.(?P<pid>\d+)\.(?:[a-z0-9_]+\.)?(?:tmp|old)(?:\.\w+)?")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: alive
        pass
    return True


def sweep(folder: Path, of: list[str] | None = None) -> int:
    """Remove the temporaries that processes no longer running left in `folder` (a kill, a full
    disk): all of them, or only those of the files named in `of`. A folder that cannot be
    written (a read-only run) is left as it is. Returns how many were removed."""
    stems = None if of is None else {Path(name).stem for name in of} | set(of)
    removed = 0
    try:
        entries = list(folder.iterdir())
    except OSError:
        return 0
    for entry in entries:
        found = _TEMPORARY.fullmatch(entry.name)
        if not found or (stems is not None and found["of"] not in stems) or _alive(int(found["pid"])):
            continue
        try:
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
            removed += 1
        except OSError:
            pass
    return removed


def claim_output(path: Path, *, force: bool, ours: Callable[[Path], bool], what: str, folder: bool = False) -> Path:
    """`--out`: a path that may be written, or the one-line refusal. `--force` replaces only what
    the same command wrote before (`ours(path)` says whether it did: `what`), never a run folder
    or anything else."""
    wanted = "folder" if folder else "file"
    if path.exists() and path.is_dir() != folder:
        raise DogbreedsError(f"--out {path} is a {'folder' if path.is_dir() else 'file'}; pass a {wanted} path")
    if path.exists() and not force:
        raise DogbreedsError(f"{path} exists; pass --force to overwrite it or --out another {wanted}")
    if path.exists() and not ours(path):
        raise DogbreedsError(f"{path} is not {what}: --force replaces only that; pass --out another path")
    above = next((p for p in path.parents if p.exists()), None)
    if above is not None and not above.is_dir():
        raise DogbreedsError(f"--out {path}: {above} is a file, not a folder; pass --out another path")
    sweep(path.parent, of=[path.name])
    return path


def starts_with(prefix: bytes) -> Callable[[Path], bool]:
    """Whether a file's first bytes are `prefix`: how a command knows a file it wrote before."""

    def check(path: Path) -> bool:
        try:
            with open(path, "rb") as f:
                return path.is_file() and f.read(len(prefix)) == prefix
        except OSError:
            return False

    return check


def probability_table(ids, classes: list[str], probabilities) -> pd.DataFrame:
    """id, then the classes in order: a submission's layout, and that of every predictions file."""
    frame = pd.DataFrame(probabilities, columns=classes)
    frame.insert(0, "id", list(ids))
    return frame


def table_csv(frame: pd.DataFrame) -> str:
    return frame.to_csv(index=False, float_format=FLOAT_FORMAT)
