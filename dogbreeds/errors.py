"""The one exception type the command line turns into a single clear line."""


class DogbreedsError(Exception):
    """A problem the user can fix: the message says what, where, and what to do.

    The CLI prints it as one line and exits with status 2; anything else is a bug
    and keeps its traceback.
    """
