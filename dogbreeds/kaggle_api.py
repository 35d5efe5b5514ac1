"""Sending a written submission to Kaggle, and reading back its score, with the `kaggle` package.

The package is optional (`pip install "dogbreeds[kaggle]"`) and imported here only, only when a
file is sent. Importing it authenticates at once: where it finds no credentials, its 2.x
releases print a page of help and exit, its 1.7 releases raise. So the credentials are looked
for first, in the places the package reads them, and whatever the import prints, raises or exits
with becomes the one line of a `DogbreedsError`; so do the network's failures and Kaggle's
refusals (requests' errors are OSErrors). The line of a file not sent ends with the command
that sends it again: the file stays where it was written. A Kaggle kernel submits through its
notebook's output instead, which is said in one line.

`competition_submit` and `competition_submissions` are what `kaggle competitions submit` and
`kaggle competitions submissions` call, with the same arguments since 1.7. `connect` is the one
place the package is imported, and where the tests put a stand-in.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path

from dogbreeds.errors import DogbreedsError, Interrupted, log
from dogbreeds.files import starts_with
from dogbreeds.places import kaggle_root

INSTALL = 'pip install "dogbreeds[kaggle]"'
MAKE_TOKEN = "kaggle.com > Settings > API > Create New Token"
UPLOAD_FAILED = "Could not submit to competition"  # what competition_submit answers when the upload fails
TABLE_START = b"id,"  # every submission's header: id, then one column per breed (files.probability_table)


def url(competition: str, page: str = "submissions") -> str:
    return f"https://www.kaggle.com/competitions/{competition}/{page}"


def _again(path: Path, message: str) -> str:
    """How to send the file once the problem is fixed: the command, ready to paste."""
    return f"then: dogbreeds kaggle-submit {shlex.quote(str(path))} -m {shlex.quote(message)}"


def _config_dirs() -> list[Path]:
    """Where the kaggle package reads kaggle.json: $KAGGLE_CONFIG_DIR, else ~/.kaggle (2.x, on
    Linux where that folder does not exist: the XDG config folder's kaggle/)."""
    if os.environ.get("KAGGLE_CONFIG_DIR"):
        return [Path(os.environ["KAGGLE_CONFIG_DIR"])]
    home = Path.home()
    return [home / ".kaggle", Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config") / "kaggle"]


def _shown(path: Path) -> str:
    """A path under the home folder as ~/..., as the kaggle package's own help names them."""
    try:
        return "~/" + str(path.relative_to(Path.home()))
    except ValueError:
        return str(path)


def credentials() -> str:
    """Where the kaggle package will find its credentials (named in Kaggle's refusals), or the
    one line of what is missing. Every place the package reads is looked at (a token of 2.x,
    `kaggle auth login`'s file, $KAGGLE_USERNAME and $KAGGLE_KEY, kaggle.json), so nothing the
    package would accept is refused; whether Kaggle accepts them is Kaggle's to say."""
    if os.environ.get("KAGGLE_API_TOKEN"):
        return "$KAGGLE_API_TOKEN"
    for name in ("access_token", "access_token.txt", "credentials.json"):
        if (Path.home() / ".kaggle" / name).is_file():
            return _shown(Path.home() / ".kaggle" / name)
    given = {name for name in ("username", "key") if os.environ.get(f"KAGGLE_{name.upper()}")}
    if given == {"username", "key"}:
        return "$KAGGLE_USERNAME and $KAGGLE_KEY"
    file = next((d / "kaggle.json" for d in _config_dirs() if (d / "kaggle.json").is_file()), None)
    if file is None:
        if given:
            (have,), (lacking,) = given, {"username", "key"} - given
            raise DogbreedsError(
                f"$KAGGLE_{have.upper()} is set but not $KAGGLE_{lacking.upper()}: set both (they are the "
                f"username and key of kaggle.json: {MAKE_TOKEN})"
            )
        raise DogbreedsError(
            f"no Kaggle credentials: no {_shown(_config_dirs()[0] / 'kaggle.json')} and no $KAGGLE_USERNAME and "
            f"$KAGGLE_KEY; download kaggle.json ({MAKE_TOKEN}) into {_shown(_config_dirs()[0])}/ or set both variables"
        )
    try:
        stored = json.loads(file.read_text())
    except (OSError, ValueError) as error:
        reason = getattr(error, "strerror", None) or "not JSON"
        raise DogbreedsError(f"{file} cannot be read ({reason}): download it again ({MAKE_TOKEN})") from None
    lacking = [n for n in ("username", "key") if n not in given and not (isinstance(stored, dict) and stored.get(n))]
    if lacking:
        raise DogbreedsError(f"{file} has no {' and no '.join(lacking)}: download it again ({MAKE_TOKEN})")
    return _shown(file)


def connect():
    """The kaggle package's API (`kaggle.api`, authenticated by its import), or the one line of
    why not: the package missing, or its own refusal of the credentials. What the import prints
    is kept off the terminal; its warnings (a kaggle.json others may read) become ours."""
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            import kaggle
    except ModuleNotFoundError as error:
        if error.name != "kaggle":
            raise DogbreedsError(f"the kaggle package cannot be imported ({error}): reinstall it: {INSTALL}") from None
        raise DogbreedsError(f"the kaggle package is not installed: {INSTALL}") from None
    except SystemExit:  # 2.x: no credentials it accepts; the first line of its help says so
        said = next((line.strip() for line in printed.getvalue().splitlines() if line.strip()), "it exited")
        raise DogbreedsError(f"the kaggle package refused the credentials ({said.rstrip('.')})") from None
    except OSError as error:
        if hasattr(error, "response"):  # requests': a 2.x token checked online
            raise
        raise DogbreedsError(f"the kaggle package refused the credentials ({error})") from None  # 1.7: no kaggle.json
    for line in printed.getvalue().splitlines():
        if line.lower().startswith("warning"):
            log.warning(line.split(":", 1)[-1].strip())
    return kaggle.api


def _network(error: OSError) -> str:
    """A network error in a few words: requests nests urllib3's cause, which names what failed."""
    cause = error.args[0] if error.args else error
    text = " ".join(str(getattr(cause, "reason", cause)).split())
    text = re.sub(r"^\((<[^>]*>), '(.*)'\)$", r"\2", text)  # (<connection>, 'Connection to ... timed out')
    return re.sub(r"^(<[^>]*>|\w+\([^()]*\)): ", "", text)  # <connection>: / HTTPSConnection(host=...):


def _refused(error: OSError, competition: str, source: str) -> DogbreedsError:
    """What failed when Kaggle could not be reached, or what its refusal means and what to do."""
    response = getattr(error, "response", None)
    status = getattr(response, "status_code", None)
    if status is None:
        return DogbreedsError(f"could not reach Kaggle ({_network(error)}): check the internet connection")
    said = f"{status} {getattr(response, 'reason', '') or ''}".strip()
    if status == 401:
        return DogbreedsError(f"Kaggle refused the credentials of {source} ({said}): make a new token ({MAKE_TOKEN})")
    if status == 403:
        return DogbreedsError(
            f"Kaggle refused the submission ({said}): accept the rules of {competition} at "
            f"{url(competition, 'rules')} with the account of {source}"
        )
    if status == 404:
        return DogbreedsError(
            f"Kaggle has no competition {competition!r} taking submissions ({said}): --competition is the name in "
            "the competition's address, as dog-breed-identification"
        )
    return DogbreedsError(f"Kaggle answered {said}" + (": try again later" if status == 429 or status >= 500 else ""))


def _on_a_kernel(path: Path) -> DogbreedsError:
    working = kaggle_root() / "working"
    inside = working.resolve() in path.resolve().parents
    where = f"{path} is in it" if inside else f"copy {path} into {working} first"
    return DogbreedsError(
        f"a Kaggle kernel submits through its notebook's output, not the API: {where}; save a version, then "
        "Submit from the notebook's Output (or the competition's Submit Prediction)"
    )


@dataclass
class Sent:
    """A submission Kaggle took: enough to find it again in its list."""

    path: Path
    description: str
    competition: str
    ref: int  # Kaggle's number for it (0 if its answer left it out: then it is found by its description)
    answer: str  # what Kaggle said
    source: str  # where the credentials were
    api: object = field(repr=False, default=None)

    def text(self) -> str:
        number = f" as submission {self.ref}" if self.ref else ""
        said = f": {self.answer}" if self.answer else ""
        return f"sent {self.path} to {self.competition}{number}{said}"


def send(path: str | Path, message: str, competition: str) -> Sent:
    """Send a written submission to `competition` with `message` as its description."""
    path = Path(path)
    if kaggle_root() is not None:
        raise _on_a_kernel(path)
    if not path.is_file():
        raise DogbreedsError(f"{path} {'is a folder' if path.is_dir() else 'not found'}: pass the submission CSV")
    if not starts_with(TABLE_START)(path):
        raise DogbreedsError(
            f"{path} is not a submission (its header must start with id,): pass the CSV that submit or blend wrote"
        )
    source = "the credentials"
    try:
        source = credentials()
        api = connect()
        answer = api.competition_submit(
            file_name=str(path.resolve()), message=message, competition=competition, quiet=True
        )
    except DogbreedsError as error:
        raise DogbreedsError(f"{error}; {_again(path, message)}") from None
    except OSError as error:
        raise DogbreedsError(f"{_refused(error, competition, source)}; {_again(path, message)}") from None
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted sending {path}: whether Kaggle took it shows at {url(competition)}") from None
    said = answer if isinstance(answer, str) else str(getattr(answer, "message", "") or "")
    if said == UPLOAD_FAILED:
        raise DogbreedsError(f"Kaggle did not take {path} (the upload failed); {_again(path, message)}")
    return Sent(path, message, competition, int(getattr(answer, "ref", 0) or 0), said, source, api)


def _status(submission) -> str:
    """pending, complete or error: the name of kagglesdk's SubmissionStatus."""
    status = getattr(submission, "status", None)
    return str(getattr(status, "name", status) or "pending").lower()


def _score(submission, name: str) -> str | None:
    value = getattr(submission, f"{name}_score", None)
    return str(value) if value not in (None, "") else None


def _find(submissions, sent: Sent):
    """This submission in Kaggle's list (newest first), or None while it is not listed yet."""
    listed = [s for s in submissions or [] if s is not None]
    if sent.ref:
        return next((s for s in listed if getattr(s, "ref", None) == sent.ref), None)
    return next((s for s in listed if getattr(s, "description", None) == sent.description), None)


@dataclass
class Score:
    sent: Sent
    public: str | None  # None: not scored within the wait
    private: str | None
    status: str
    waited: float

    def text(self) -> str:
        if self.public is None:
            return (
                f"no score after {self.waited:g} s (still {self.status}); the submission is made: its score will "
                f"show at {url(self.sent.competition)}"
            )
        private = f", private {self.private}" if self.private else ""
        return f"public score {self.public}{private} ({self.sent.competition}, {self.sent.path.name})"


def wait_for_score(sent: Sent, wait: float, poll: float) -> Score:
    """Look at the submission every `poll` seconds until Kaggle has scored it, or `wait` seconds
    have passed. Ctrl-C stops the waiting, not the submission, which is said."""
    log.info(f"waiting up to {wait:g} s for the public score (Ctrl-C stops waiting; the submission stays)")
    deadline = time.monotonic() + wait
    try:
        while True:
            mine = _find(sent.api.competition_submissions(sent.competition), sent)
            status = _status(mine)
            if status == "complete":
                return Score(sent, _score(mine, "public"), _score(mine, "private"), status, wait)
            if status == "error":
                reason = getattr(mine, "error_description", None)
                raise DogbreedsError(
                    f"Kaggle could not score {sent.path} ({reason or 'no reason given'}): fix the file and send it "
                    f"again; {url(sent.competition)} shows the submission"
                )
            left = deadline - time.monotonic()
            if left <= 0:
                return Score(sent, None, None, status, wait)
            time.sleep(min(poll, left))
    except KeyboardInterrupt:
        raise Interrupted(
            f"interrupted while waiting for the score; the submission is made: its score will show at "
            f"{url(sent.competition)}"
        ) from None
    except OSError as error:
        raise DogbreedsError(
            f"the submission is made, but its score could not be read: {_refused(error, sent.competition, sent.source)}"
            f"; it will show at {url(sent.competition)}"
        ) from None
