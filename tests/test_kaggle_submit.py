"""`submit --kaggle` and `kaggle-submit`: what is sent to the kaggle package's API, the score read
back, and the one line of each failure (no credentials, no network, Kaggle's refusals, a kernel).

No test reaches the network: the API is a stand-in put where `kaggle_api.connect` hands out
the kaggle package's, except in the last tests, which import the installed package itself
with made-up credentials (no request is made) to check that it takes the calls made here.
"""

from __future__ import annotations

import enum
import importlib.util
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from urllib.parse import urlsplit

import pandas as pd
import pytest
import requests
from urllib3.connection import HTTPSConnection
from urllib3.exceptions import MaxRetryError, NameResolutionError

from dogbreeds import kaggle_api
from dogbreeds.errors import DogbreedsError

from helpers import dogbreeds

CSV = "id,affenpinscher,beagle\nx1,0.25,0.75\nx2,0.5,0.5\n"


class Status(enum.Enum):  # kagglesdk's SubmissionStatus
    PENDING = 0
    COMPLETE = 1
    ERROR = 2


def listed(ref, status, public=None, private=None, description="first try", error=None):
    """A submission as kagglesdk's ApiSubmission carries it."""
    return SimpleNamespace(
        ref=ref, status=status, public_score=public, private_score=private, description=description,
        error_description=error,
    )  # fmt: skip


OLDER = listed(6, Status.COMPLETE, "0.91000", "0.92000", description="older")


class StandIn:
    """The kaggle package's API as far as dogbreeds uses it: what it was asked, and Kaggle's list
    of submissions, one answer per look (the last one repeated)."""

    def __init__(self, lists=((OLDER,),), fail=None):
        self.sent, self.looked, self.lists, self.fail = [], [], list(lists), fail

    def competition_submit(self, file_name, message, competition, quiet=False):
        if self.fail is not None:
            raise self.fail
        self.sent.append(SimpleNamespace(file_name=file_name, message=message, competition=competition))
        return SimpleNamespace(ref=7, message="Successfully submitted to Dog Breed Identification")

    def competition_submissions(self, competition):
        self.looked.append(competition)
        answer = self.lists.pop(0) if len(self.lists) > 1 else self.lists[0]
        if isinstance(answer, BaseException):
            raise answer
        return list(answer)


@pytest.fixture
def nowhere(tmp_path, monkeypatch):
    """No Kaggle credentials anywhere: no KAGGLE_* variable, an empty home folder; not a kernel."""
    for name in [n for n in os.environ if n.startswith("KAGGLE_")] + ["XDG_CONFIG_HOME"]:
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("DOGBREEDS_KAGGLE_ROOT", str(tmp_path / "not-kaggle"))
    return home


@pytest.fixture
def csv(tmp_path):
    path = tmp_path / "blend.csv"
    path.write_text(CSV)
    return path


@pytest.fixture
def client(nowhere, monkeypatch):
    """Credentials in the environment, and the stand-in where the kaggle package's API would be."""
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "0123456789abcdef")
    stand_in = StandIn()
    monkeypatch.setattr(kaggle_api, "connect", lambda: stand_in)
    return stand_in


def one_error_line(result, code: int = 2) -> str:
    """The one `error:` line the command ended with (after submit's progress bar, if any)."""
    assert result.returncode == code, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("test images:")]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


# -- without credentials, or on a kernel: one line, and the CSV stays --------------------------------


def test_without_credentials_one_line_names_them_and_the_csv_stays(nowhere, csv):
    line = one_error_line(dogbreeds("kaggle-submit", csv, "-m", "first try"))
    assert "no Kaggle credentials" in line and "~/.kaggle/kaggle.json" in line
    assert "$KAGGLE_USERNAME" in line and "$KAGGLE_KEY" in line
    assert f"then: dogbreeds kaggle-submit {csv} -m 'first try'" in line  # how to send it once fixed
    assert csv.read_text() == CSV


def test_credentials_are_looked_for_where_the_kaggle_package_reads_them(nowhere, monkeypatch, tmp_path):
    (nowhere / ".kaggle").mkdir()
    token = nowhere / ".kaggle" / "kaggle.json"
    token.write_text('{"username": "someone"}')
    with pytest.raises(DogbreedsError, match=f"{token} has no key: download it again"):
        kaggle_api.credentials()
    monkeypatch.setenv("KAGGLE_KEY", "0123")  # the package fills what the file lacks from the environment
    assert kaggle_api.credentials() == "~/.kaggle/kaggle.json"
    monkeypatch.delenv("KAGGLE_KEY")
    token.unlink()
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    with pytest.raises(DogbreedsError, match=r"\$KAGGLE_USERNAME is set but not \$KAGGLE_KEY"):
        kaggle_api.credentials()
    elsewhere = tmp_path / "config"
    elsewhere.mkdir()
    (elsewhere / "kaggle.json").write_text('{"username": "someone", "key": "0123"}')
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(elsewhere))
    assert kaggle_api.credentials() == str(elsewhere / "kaggle.json")


def test_submit_kaggle_writes_the_csv_first_then_says_what_is_missing(nowhere, tiny_run, competition, tmp_path):
    out = tmp_path / "tiny.csv"
    result = dogbreeds("submit", "--run", tiny_run, "--data", competition, "--out", out, "--kaggle", "first try")
    line = one_error_line(result)
    assert f"wrote {out}" in result.stdout
    assert "no Kaggle credentials" in line and f"kaggle-submit {out} -m 'first try'" in line
    assert len(pd.read_csv(out)) == 9  # the whole submission, kept


def test_on_a_kernel_one_line_says_the_notebook_output_submits(client, csv, tmp_path, monkeypatch):
    root = tmp_path / "kaggle"
    (root / "working").mkdir(parents=True)
    monkeypatch.setenv("DOGBREEDS_KAGGLE_ROOT", str(root))
    line = one_error_line(dogbreeds("kaggle-submit", csv, "-m", "first try"))
    assert "a Kaggle kernel submits through its notebook's output" in line
    assert f"copy {csv} into {root / 'working'}" in line
    output = root / "working" / "submission.csv"
    output.write_text(CSV)
    assert f"{output} is in it" in one_error_line(dogbreeds("kaggle-submit", output, "-m", "first try"))
    assert not client.sent and csv.read_text() == CSV


# -- what is sent, and the score read back --------------------------------------------------------


def test_submit_kaggle_sends_the_written_csv_and_prints_its_public_score(client, tiny_run, competition, tmp_path):
    client.lists = [(listed(7, Status.COMPLETE, "0.41230"), OLDER)]
    out = tmp_path / "tiny.csv"
    result = dogbreeds("submit", "--run", tiny_run, "--data", competition, "--out", out, "--kaggle", "tiny run")
    assert result.returncode == 0, result.stderr
    (request,) = client.sent
    assert os.path.samefile(request.file_name, out) and os.path.isabs(request.file_name)
    assert request.message == "tiny run" and request.competition == "dog-breed-identification"
    assert f"sent {out} to dog-breed-identification as submission 7" in result.stdout
    assert "public score 0.41230" in result.stdout and "0.91000" not in result.stdout


def test_kaggle_submit_passes_the_file_the_message_and_the_competition(client, csv):
    result = dogbreeds("kaggle-submit", csv, "-m", "blend of two", "--competition", "other-comp", "--wait", 0)
    assert result.returncode == 0, result.stderr
    (request,) = client.sent
    assert os.path.samefile(request.file_name, csv)
    assert (request.message, request.competition) == ("blend of two", "other-comp")
    assert not client.looked  # --wait 0: sent, not waited for
    assert "Successfully submitted" in result.stdout


def test_the_poll_prints_the_public_score_when_it_arrives(client, csv):
    client.lists = [
        (OLDER,),  # not listed yet
        (listed(7, Status.PENDING), OLDER),
        (listed(7, Status.COMPLETE, "0.41230", "0.40911"), OLDER),
    ]
    result = dogbreeds("kaggle-submit", csv, "-m", "first try", "--poll", 0.01)
    assert result.returncode == 0, result.stderr
    assert client.looked == ["dog-breed-identification"] * 3
    last = result.stdout.strip().splitlines()[-1]
    assert last == "public score 0.41230, private 0.40911 (dog-breed-identification, blend.csv)"


def test_no_score_within_the_wait_says_the_submission_is_made(client, csv):
    client.lists = [(listed(7, Status.PENDING), OLDER)]
    result = dogbreeds("kaggle-submit", csv, "-m", "first try", "--wait", 0.05, "--poll", 0.01)
    assert result.returncode == 0, result.stderr
    assert "no score after 0.05 s (still pending); the submission is made" in result.stdout
    assert len(client.looked) >= 2


def test_a_file_kaggle_cannot_score_is_one_line_with_its_reason(client, csv):
    client.lists = [(listed(7, Status.ERROR, error="Submission must have 10357 rows"), OLDER)]
    line = one_error_line(dogbreeds("kaggle-submit", csv, "-m", "first try"))
    assert f"Kaggle could not score {csv} (Submission must have 10357 rows)" in line


def test_ctrl_c_while_waiting_leaves_the_submission_made_and_says_so(client, csv):
    client.lists = [(listed(7, Status.PENDING), OLDER), KeyboardInterrupt()]
    line = one_error_line(dogbreeds("kaggle-submit", csv, "-m", "first try", "--poll", 0.01), code=130)
    assert "the submission is made" in line and "dog-breed-identification/submissions" in line
    assert len(client.sent) == 1


# -- the network and Kaggle's refusals ------------------------------------------------------------


def test_no_network_is_one_line_naming_what_failed(client, csv):
    host = HTTPSConnection("api.kaggle.com", 443)
    unresolved = NameResolutionError("api.kaggle.com", host, socket.gaierror(-2, "Name or service not known"))
    client.fail = requests.ConnectionError(MaxRetryError(None, "/v1/StartSubmissionUpload", unresolved))
    line = one_error_line(dogbreeds("kaggle-submit", csv, "-m", "first try"))
    assert "could not reach Kaggle (Failed to resolve 'api.kaggle.com' ([Errno -2] Name or service not known))" in line
    assert f"kaggle-submit {csv} -m 'first try'" in line and csv.read_text() == CSV


@pytest.mark.parametrize(
    "status, says",
    [(401, "refused the credentials of $KAGGLE_USERNAME and $KAGGLE_KEY (401"), (403, "accept the rules of"),
     (404, "no competition 'dog-breed-identification' taking submissions (404")],
)  # fmt: skip
def test_kaggles_refusals_say_what_to_do(client, csv, status, says):
    response = requests.Response()
    response.status_code = status
    client.fail = requests.HTTPError(f"{status} Client Error", response=response)
    line = one_error_line(dogbreeds("kaggle-submit", csv, "-m", "first try"))
    assert says in line, line


def test_a_file_that_is_not_a_submission_is_refused_before_sending(client, tmp_path):
    record = tmp_path / "blend.json"
    record.write_text('{"runs": []}')
    line = one_error_line(dogbreeds("kaggle-submit", record, "-m", "first try"))
    assert "is not a submission (its header must start with id,)" in line and not client.sent
    assert "not found" in one_error_line(dogbreeds("kaggle-submit", tmp_path / "missing.csv", "-m", "x"))


# -- the installed kaggle package, imported for real ----------------------------------------------

REAL = """
import inspect, io, contextlib, os, sys
from dogbreeds import kaggle_api
from dogbreeds.errors import DogbreedsError
from dogbreeds.errors import DogbreedsError
printed = io.StringIO()
with contextlib.redirect_stdout(printed):
    try:
        kaggle_api.connect()
    except DogbreedsError as error:
        refused = str(error)
print(refused)
print(repr(printed.getvalue()))
os.environ.update(KAGGLE_USERNAME="someone", KAGGLE_KEY="0123456789abcdef")
api = kaggle_api.connect()
inspect.signature(api.competition_submit).bind(file_name="s.csv", message="m", competition="c", quiet=True)
inspect.signature(api.competition_submissions).bind("c")
print("tensorflow" in sys.modules)
"""


def without_kaggle_variables(**more) -> dict:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_")}, **more}


@pytest.mark.skipif(importlib.util.find_spec("kaggle") is None, reason="the kaggle extra is not installed")
def test_the_installed_package_refuses_in_one_line_and_takes_the_calls_made_here(tmp_path):
    env = without_kaggle_variables(HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path / "xdg"))
    found = subprocess.run([sys.executable, "-c", REAL], env=env, capture_output=True, text=True, timeout=120)
    assert found.returncode == 0, found.stderr
    refused, printed, tensorflow = found.stdout.strip().splitlines()
    assert refused.startswith("the kaggle package refused the credentials (") and "\n" not in refused
    assert printed == "''"  # its page of help kept off the terminal
    assert tensorflow == "False"


LIGHT = """
import sys
from typer.testing import CliRunner
from dogbreeds.cli import app
result = CliRunner().invoke(app, sys.argv[1:])
print(result.exit_code, "tensorflow" in sys.modules, "kaggle" in sys.modules)
"""


def test_kaggle_submit_answers_without_tensorflow(tmp_path, csv):
    env = without_kaggle_variables(HOME=str(tmp_path), DOGBREEDS_KAGGLE_ROOT=str(tmp_path / "not-kaggle"))
    command = [sys.executable, "-c", textwrap.dedent(LIGHT), "kaggle-submit", str(csv), "-m", "x"]
    found = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert found.stdout.split() == ["2", "False", "False"], found.stderr


class FakeKaggle(BaseHTTPRequestHandler):
    """Kaggle's API on the loopback, as the kaggle package calls it through an HTTP proxy (the
    request line holds the whole address): the upload, the submission, then its list, pending
    at the first look and scored after."""

    def do_POST(self):
        name = urlsplit(self.path).path.rsplit("/", 1)[-1]
        self.server.calls.append((name, json.loads(self.body() or b"{}")))
        looks = sum(call == "ListSubmissions" for call, _ in self.server.calls)
        mine = {"ref": 4242, "description": "first try", "status": "PENDING" if looks < 2 else "COMPLETE"}
        answer = {
            "StartSubmissionUpload": {"token": "blob-token", "createUrl": "http://localhost/upload/blend.csv"},
            "CreateSubmission": {"message": "Successfully submitted to Dog Breed Identification", "ref": 4242},
            "ListSubmissions": {"submissions": [{**mine, "publicScore": "0.41230"} if looks >= 2 else mine]},
        }[name]
        self.reply(json.dumps(answer).encode(), "application/json")

    def do_PUT(self):
        self.server.uploaded = self.body()
        self.reply(b"", "text/plain")

    def body(self) -> bytes:
        if self.headers.get("Transfer-Encoding") != "chunked":
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))
        data = b""
        while size := int(self.rfile.readline().split(b";")[0], 16):
            data += self.rfile.read(size)
            self.rfile.readline()
        self.rfile.readline()
        return data

    def reply(self, data: bytes, kind: str):
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *_):
        pass


@pytest.mark.skipif(importlib.util.find_spec("kaggle") is None, reason="the kaggle extra is not installed")
def test_the_installed_package_end_to_end_against_a_fake_kaggle_on_the_loopback(tmp_path, csv):
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeKaggle)
    server.calls, server.uploaded = [], None
    threading.Thread(target=server.serve_forever, daemon=True).start()
    proxy = f"http://127.0.0.1:{server.server_address[1]}"
    env = {k: v for k, v in without_kaggle_variables().items() if k.lower() not in ("no_proxy", "https_proxy")}
    env.update(
        HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path / "xdg"), DOGBREEDS_KAGGLE_ROOT=str(tmp_path / "not-kaggle"),
        KAGGLE_API_ENVIRONMENT="LOCALHOST", HTTP_PROXY=proxy, http_proxy=proxy,  # http://localhost, through us
        KAGGLE_USERNAME="someone", KAGGLE_KEY="0123456789abcdef",
    )  # fmt: skip
    command = [sys.executable, "-m", "dogbreeds", "kaggle-submit", str(csv), "-m", "first try", "--poll", "0.05"]
    try:
        found = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    finally:
        server.shutdown()
    assert found.returncode == 0, found.stderr
    assert server.uploaded == CSV.encode()
    names = [name for name, _ in server.calls]
    assert names == ["StartSubmissionUpload", "CreateSubmission", "ListSubmissions", "ListSubmissions"]
    start, create = server.calls[0][1], server.calls[1][1]
    assert (start["competitionName"], start["fileName"]) == ("dog-breed-identification", "blend.csv")
    assert (create["submissionDescription"], create["blobFileTokens"]) == ("first try", "blob-token")
    assert f"sent {csv} to dog-breed-identification as submission 4242" in found.stdout
    assert found.stdout.strip().splitlines()[-1] == "public score 0.41230 (dog-breed-identification, blend.csv)"
