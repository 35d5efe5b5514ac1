"""The exceptions the command line turns into a single clear line, and the package's logger."""

import errno
import logging
import os
import tempfile
from contextlib import contextmanager

log = logging.getLogger("dogbreeds")


@contextmanager
def native_stderr():
    """What native code (TensorFlow's C++ logging, the TFLite converter's MLIR dumps) writes to
    file descriptor 2 while the block runs, kept off the terminal: a list of lines, filled on exit."""
    lines: list[str] = []
    with tempfile.TemporaryFile() as captured:
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines.extend(captured.read().decode(errors="replace").splitlines())


class DogbreedsError(Exception):
    """A problem the user can fix: the message says what, where, and what to do.

    The CLI prints it as one line and exits with `exit_code`; anything else is a bug and
    keeps its traceback.
    """

    exit_code = 2


class Interrupted(DogbreedsError):
    """Ctrl-C or SIGTERM during a command; the message says how to continue."""

    exit_code = 130


def from_environment(error: OSError, then: str = "then run the command again") -> DogbreedsError | None:
    """A full disk or a folder that cannot be written, as the one line a user can act on (`then`:
    how to go on); None for any other OSError, which stays a bug with its traceback."""
    where = f" writing {error.filename}" if error.filename else ""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return DogbreedsError(f"no space left on the device{where}: free some space, {then}")
    if error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        what = error.filename or "a file"
        return DogbreedsError(f"{what} cannot be written ({error.strerror}): choose a writable place")
    return None


def damaged(path, why: str, then: str = "restore it from a copy of the run, or train the run again") -> DogbreedsError:
    """A file the package wrote that cannot be read back as it wrote it (cut short, edited, another
    run's): named, with what is wrong and how to go on."""
    return DogbreedsError(f"{path} is damaged ({why}); {then}")
