"""The exceptions the command line turns into a single clear line, and the package's logger."""

import logging

log = logging.getLogger("dogbreeds")


class DogbreedsError(Exception):
    """A problem the user can fix: the message says what, where, and what to do.

    The CLI prints it as one line and exits with `exit_code`; anything else is a bug and
    keeps its traceback.
    """

    exit_code = 2


class Interrupted(DogbreedsError):
    """Ctrl-C or SIGTERM during a command; the message says how to continue."""

    exit_code = 130
