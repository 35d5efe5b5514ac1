"""Try each bad input through the `dogbreeds` command and print what the user sees.

    python benchmarks/bad_inputs.py > bad_inputs.md

Builds a small generated competition in a temporary folder, breaks a copy of it in one way
per case, runs the command, and prints a Markdown table: case, message, exit code.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
from PIL import Image

from dogbreeds.synthetic import make_competition

TINY = ["--backbone", "tiny_cnn", "--weights", "none", "--image-size", "48", "--epochs", "1", "--fine-tune-epochs", "0"]


def run(*args) -> tuple[int, str]:
    result = subprocess.run(["dogbreeds", *map(str, args)], capture_output=True, text=True)
    lines = [line for line in result.stderr.splitlines() if line.startswith(("error:", "warning:"))]
    shown = " / ".join(lines) or (result.stdout.strip().splitlines() or [""])[-1]
    if "Traceback" in result.stderr:
        shown = "TRACEBACK: " + shown
    return result.returncode, shown


# A full disk, simulated: every file the package writes whole (write_atomic), and every Keras
# model save, fails with ENOSPC, as on a disk with no space left.
FULL_DISK = """
import errno, os, sys, keras
from dogbreeds import files
def full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
files.os.fdopen = full
keras.Model.save = full
from dogbreeds.cli import main
sys.argv = ["dogbreeds", *sys.argv[1:]]
main()
"""


def run_on_a_full_disk(*args) -> tuple[int, str]:
    """`run`, on a full disk."""
    result = subprocess.run([sys.executable, "-c", FULL_DISK, *map(str, args)], capture_output=True, text=True)
    lines = [line for line in result.stderr.splitlines() if line.startswith(("error:", "warning:"))]
    shown = ("TRACEBACK: " if "Traceback" in result.stderr else "") + " / ".join(lines)
    return result.returncode, shown


def main() -> None:
    base = Path(tempfile.mkdtemp())
    pristine = make_competition(base / "pristine", n_classes=3, train_per_class=12, n_test=6, image_size=48)
    model_run = base / "run"
    assert run("train", "--data", pristine, *TINY, "--run-dir", model_run)[0] == 0
    first_train = pd.read_csv(pristine / "labels.csv")["id"].iloc[0]
    first_test = pd.read_csv(pristine / "sample_submission.csv")["id"].iloc[0]

    def copy() -> Path:
        target = Path(tempfile.mkdtemp(dir=base)) / "data"
        shutil.copytree(pristine, target)
        return target

    def train_image(d: Path) -> Path:
        return d / "train" / f"{first_train}.jpg"

    def test_image(d: Path) -> Path:
        return d / "test" / f"{first_test}.jpg"

    def save(path: Path, mode: str, fmt: str, size=(48, 48), **kw):
        Image.new(mode, size, 128 if mode in ("L", "1", "I;16") else (200, 60, 30)[: len(mode)]).save(
            path, format=fmt, **kw
        )

    def rename_breed(d: Path, old: str, new: str, count: int = -1, add_column: bool = False):
        labels = (d / "labels.csv").read_text()
        (d / "labels.csv").write_text(labels.replace(f",{old}", f",{new}", count))
        sample = pd.read_csv(d / "sample_submission.csv")
        sample = sample.assign(**{new: 0.1}) if add_column else sample.rename(columns={old: new})
        sample.to_csv(d / "sample_submission.csv", index=False)

    def exif_rotated(path: Path):
        exif = Image.Exif()
        exif[0x0112] = 6
        Image.new("RGB", (60, 40), (10, 200, 30)).save(path, exif=exif)

    train_cases = {
        "missing data folder": lambda d: shutil.rmtree(d),
        "missing labels.csv": lambda d: (d / "labels.csv").unlink(),
        "missing train/": lambda d: shutil.rmtree(d / "train"),
        "missing sample_submission.csv": lambda d: (d / "sample_submission.csv").unlink(),
        "labels.csv without a breed column": lambda d: (d / "labels.csv").write_text("id,dog\na,pug\n"),
        "empty labels.csv": lambda d: (d / "labels.csv").write_text(""),
        "labels.csv header only": lambda d: (d / "labels.csv").write_text("id,breed\n"),
        "duplicate ids": lambda d: (d / "labels.csv").write_text(
            (d / "labels.csv").read_text() + f"{first_train},pug\n"
        ),
        "id escaping the folder": lambda d: (d / "labels.csv").write_text("id,breed\n../../etc/passwd,pug\n"),
        "breed not in sample_submission": lambda d: (d / "labels.csv").write_text(
            (d / "labels.csv").read_text().replace(",pug", ",corgi", 1)
        ),
        "sample column with no training image": lambda d: (
            pd.read_csv(d / "sample_submission.csv").assign(corgi=0.1).to_csv(d / "sample_submission.csv", index=False)
        ),
        "a breed with a single image": lambda d: rename_breed(d, "pug", "akita", count=1, add_column=True),
        "every image of one breed": lambda d: (
            pd.read_csv(d / "labels.csv").assign(breed="pug").to_csv(d / "labels.csv", index=False)
        ),
        "one image missing": lambda d: train_image(d).unlink(),
        "all images missing": lambda d: [p.unlink() for p in (d / "train").iterdir()],
        "truncated JPEG": lambda d: train_image(d).write_bytes(train_image(d).read_bytes()[:300]),
        "zero-byte file": lambda d: train_image(d).write_bytes(b""),
        "PNG data under .jpg": lambda d: save(train_image(d), "RGB", "PNG"),
        "WebP data under .jpg": lambda d: save(train_image(d), "RGB", "WEBP"),
        "grayscale JPEG": lambda d: save(train_image(d), "L", "JPEG"),
        "CMYK JPEG": lambda d: save(train_image(d), "CMYK", "JPEG"),
        "16-bit PNG": lambda d: save(train_image(d), "I;16", "PNG"),
        "EXIF-rotated JPEG": lambda d: exif_rotated(train_image(d)),
        "1x1 px image": lambda d: save(train_image(d), "RGB", "JPEG", size=(1, 1)),
        "1-bit BMP under .jpg": lambda d: save(train_image(d), "1", "BMP"),
        "20000x20000 px decompression bomb": lambda d: save(train_image(d), "1", "PNG", size=(20000, 20000)),
    }
    rows = []
    for case, breakage in train_cases.items():
        data = copy()
        breakage(data)
        code, shown = run("train", "--data", data, *TINY, "--max-unreadable", "0.05", "--run-dir", data.parent / "run")
        rows.append((f"train: {case}", shown, code))

    weights = base / "not-hdf5.h5"
    weights.write_text("<html>403</html>")
    other = base / "other.weights.h5"
    subprocess.run(
        [
            "python",
            "-c",
            f"from dogbreeds.models import build_backbone; "
            f"build_backbone('tiny_cnn', 'none', 64).save_weights('{other}')",
        ],
        check=True,
    )
    for case, args in {
        "--weights PATH that does not exist": ["--weights", base / "nope.h5"],
        "--weights PATH not HDF5": ["--weights", weights],
        "--weights of another architecture": ["--backbone", "mobilenet_v2", "--weights", other],
        "--weights imagenet offline": ["--backbone", "mobilenet_v2", "--weights", "imagenet"],
    }.items():
        args = ["--data", pristine, "--image-size", "64", "--run-dir", base / "wrun", *args]
        if "--backbone" not in args:
            args += ["--backbone", "tiny_cnn"]
        code, shown = run("train", *args)
        rows.append((f"train: {case}", shown, code))

    def submit_case(case, breakage, *extra):
        data = copy()
        breakage(data)
        code, shown = run("submit", "--run", model_run, "--data", data, "--out", data.parent / "s.csv", *extra)
        rows.append((f"submit: {case}", shown, code))

    submit_case("missing test/", lambda d: shutil.rmtree(d / "test"))
    submit_case("corrupt test image", lambda d: test_image(d).write_bytes(b"\xff\xd8garbage"))
    submit_case("non-image file as a test image", lambda d: test_image(d).write_text("hello"))
    submit_case("data of other classes", lambda d: rename_breed(d, "pug", "corgi"))
    existing = base / "existing.csv"
    existing.write_text("precious")
    code, shown = run("submit", "--run", model_run, "--data", pristine, "--out", existing)
    rows.append(("submit: --out file exists", shown, code))
    code, shown = run("submit", "--run", base / "no-such-run")
    rows.append(("submit: run folder does not exist", shown, code))
    no_model = base / "no-model"
    shutil.copytree(model_run, no_model)
    (no_model / "model.keras").unlink()
    code, shown = run("submit", "--run", no_model)
    rows.append(("submit: run without a model", shown, code))
    old = base / "old-run"
    shutil.copytree(model_run, old)
    config = json.loads((old / "config.json").read_text())
    config.pop("run_format")
    config["version"] = "0.0.9"
    (old / "config.json").write_text(json.dumps(config))
    code, shown = run("submit", "--run", old, "--data", pristine, "--out", base / "o.csv")
    rows.append(("submit: run made by an older version", shown, code))

    # Issue 26: --force replaces only what the same command wrote; a run folder is no one's --out.
    foreign = base / "foreign.csv"
    foreign.write_text("not a submission")
    code, shown = run("submit", "--run", model_run, "--data", pristine, "--out", foreign, "--force")
    rows.append(("submit: --out another file, --force", shown, code))
    code, shown = run("submit", "--run", model_run, "--data", pristine, "--out", model_run / "config.json", "--force")
    rows.append(("submit: --out the run's config.json, --force", shown, code))
    code, shown = run("submit", "--run", model_run, "--data", pristine, "--out", base, "--force")
    rows.append(("submit: --out a folder", shown, code))
    code, shown = run("export", "--run", model_run, "--format", "keras", "--out", model_run, "--force")
    rows.append(("export: --out the run folder, --force", shown, code))
    code, shown = run("blend", model_run, model_run, "--data", pristine, "--out", base / "b.json")
    rows.append(("blend: --out a .json file", shown, code))
    (base / "mine.json").write_text("precious")
    code, shown = run("blend", model_run, model_run, "--data", pristine, "--out", base / "mine.csv")
    rows.append(("blend: its record's .json exists", shown, code))
    code, shown = run("train", "--data", pristine, *TINY, "--seed", "7", "--run-dir", no_model)
    rows.append(("train: --run-dir holding a run with other settings", shown, code))
    code, shown = run("train", "--data", pristine, *TINY, "--run-dir", existing / "run")
    rows.append(("train: --run-dir under a file", shown, code))

    for option, value in (("--learning-rate", "inf"), ("--rotation", "nan"), ("--seed", "-1"), ("--patience", "-1")):
        code, shown = run("train", "--data", pristine, *TINY, option, value, "--run-dir", base / "orun")
        rows.append((f"train: {option} {value}", shown, code))
    key, submission = base / "key.csv", base / "scored.csv"
    submission.write_text("id,pug,akita\na,0.9,0.1\n")
    keys = {"without an id column": "breed\npug\n", "empty": "", "with duplicate ids": "id,breed\na,pug\na,pug\n"}
    for case, text in keys.items():
        key.write_text(text)
        code, shown = run("score", submission, "--solution", key)
        rows.append((f"score: an answer key {case}", shown, code))

    # Issue 26: a full disk, a kill and SIGTERM leave nothing half-written, and the next command goes on.
    full_run = base / "full-run"
    code, shown = run_on_a_full_disk("train", "--data", pristine, *TINY, "--run-dir", full_run)
    left = sorted(p.name for p in full_run.iterdir() if p.name.startswith("."))
    rows.append((f"train: disk full (simulated); temporaries left: {len(left)}", shown, code))
    code, shown = run("train", "--resume", full_run)
    rows.append(("train --resume after the disk-full run, space freed", shown, code))
    code, shown = run_on_a_full_disk("submit", "--run", model_run, "--data", pristine, "--out", base / "full.csv")
    rows.append((f"submit: disk full (simulated); file written: {(base / 'full.csv').exists()}", shown, code))
    killed = base / "killed"
    shutil.copytree(model_run, killed)
    (killed / ".model.99999999.tmp.keras").write_bytes(b"half")  # a save a SIGKILL cut short
    code, shown = run("evaluate", "--run", killed)
    left = sorted(p.name for p in killed.iterdir() if p.name.startswith("."))
    rows.append((f"evaluate after a killed save; temporaries left: {len(left)}", shown, code))

    # Issue 26, classes 11, 12 and 14: run files and cache entries damaged on disk, paths from elsewhere.
    def damaged_copy(damage) -> Path:
        target = Path(tempfile.mkdtemp(dir=base)) / "run"
        shutil.copytree(model_run, target)
        damage(target)
        return target

    def edited(name: str, **change):
        return lambda r: (r / name).write_text(json.dumps(json.loads((r / name).read_text()) | change))

    def cut(name: str, keep: int):
        return lambda r: (r / name).write_bytes((r / name).read_bytes()[:keep])

    submit_run = ("submit", "--run", "RUN", "--data", pristine, "--out", "OUT")
    damages = {
        "config.json garbage": (lambda r: (r / "config.json").write_text("garbage{"), submit_run),
        "config.json cut short": (cut("config.json", 100), submit_run),
        "config.json is []": (lambda r: (r / "config.json").write_text("[]"), submit_run),
        "config.json wrong-typed field": (edited("config.json", image_size="big"), submit_run),
        "config.json null settings": (edited("config.json", augmentation=None), submit_run),
        "classes.json garbage": (lambda r: (r / "classes.json").write_text("garb"), submit_run),
        "progress.json garbage": (lambda r: (r / "progress.json").write_text("xx"), ("train", "--resume", "RUN")),
        "progress.json extra key": (edited("progress.json", x=1), ("train", "--resume", "RUN")),
        "last.keras cut short": (cut("last.keras", 500), ("train", "--resume", "RUN")),
        "history.csv garbage": (
            lambda r: (r / "history.csv").write_text('\x00garbage\n"open'),
            ("train", "--resume", "RUN"),
        ),
        "val_predictions.csv empty": (cut("val_predictions.csv", 0), ("evaluate", "--run", "RUN")),
        "val_predictions.csv cut short": (cut("val_predictions.csv", 150), ("evaluate", "--run", "RUN")),
        "metrics.json garbage": (lambda r: (r / "metrics.json").write_text("zz"), ("runs", "--dir", "RUN/..")),
        "model.keras empty": (lambda r: (r / "model.keras").write_text(""), submit_run),
        "model.keras cut short": (cut("model.keras", 2000), submit_run),
    }
    for case, (damage, command) in damages.items():
        target = damaged_copy(damage)
        args = [{"RUN": target, "RUN/..": target.parent, "OUT": target.parent / "s.csv"}.get(a, a) for a in command]
        code, shown = run(*args)
        rows.append((f"{command[0]}: {case}", shown.replace(str(target), "RUN"), code))
    other_size = base / "run-64"
    run("train", "--data", pristine, *TINY[:4], "--image-size", "64", *TINY[6:], "--run-dir", other_size)
    target = damaged_copy(lambda r: shutil.copy(other_size / "model.keras", r / "model.keras"))
    code, shown = run(*[{"RUN": target, "OUT": base / "s64.csv"}.get(a, a) for a in submit_run])
    rows.append(("submit: model.keras of another image size", shown.replace(str(target), "RUN"), code))

    features_run, cache = base / "features-run", base / "feature-cache"
    run("train", "--data", pristine, *TINY, "--method", "features", "--head-epochs", "3", "--cache-dir", cache,
        "--run-dir", features_run)  # fmt: skip
    run("submit", "--run", features_run, "--data", pristine, "--out", base / "f1.csv")
    for meta in cache.glob("*/meta.json"):
        if "/test/" in json.loads(meta.read_text())["first"]:
            store = meta.parent / "features.npy"
            store.write_bytes(store.read_bytes()[:200])
    code, shown = run("submit", "--run", features_run, "--data", pristine, "--out", base / "f2.csv")
    rows.append(("submit: the test images' feature cache entries cut short", shown.replace(str(cache), "CACHE"), code))
    config = json.loads((features_run / "config.json").read_text())
    (features_run / "config.json").write_text(json.dumps(config | {"cache_dir": str(existing / "cache")}))
    code, shown = run("submit", "--run", features_run, "--data", pristine, "--out", base / "f3.csv")
    rows.append(("submit: a recorded cache_dir that cannot be made here", shown, code))
    code, shown = run("train", "--data", pristine, *TINY, "--method", "features", "--cache-dir", existing / "cache",
                      "--run-dir", base / "f-new")  # fmt: skip
    rows.append(("train: --cache-dir under a file", shown, code))
    labels_moved = copy()
    (labels_moved / "labels.csv").write_text("".join((labels_moved / "labels.csv").open().readlines()[:-1]))
    code, shown = run("train", "--resume", model_run, "--data", labels_moved)
    rows.append(("train --resume --data with other labels", shown, code))
    code, shown = run("export", "--run", model_run, "--format", "keras", "--out", ".")
    rows.append(("export: --out .", shown, code))
    code, shown = run("submit", "--run", model_run, "--data", pristine, "--out", existing / "s.csv")
    rows.append(("submit: --out under a file", shown, code))

    # Issue 26, the smaller ones.
    def sample_changed(change):
        data = copy()
        sample = pd.read_csv(data / "sample_submission.csv", dtype={"id": str})
        change(sample).to_csv(data / "sample_submission.csv", index=False)
        return data

    reordered = sample_changed(lambda t: t[["id", *reversed(t.columns[1:])]])
    code, shown = run("submit", "--run", model_run, "--data", reordered, "--out", base / "reordered.csv")
    header = (base / "reordered.csv").read_text().splitlines()[0] if code == 0 else ""
    rows.append((f"submit: sample_submission.csv lists the breeds in another order (written: {header})", shown, code))
    for case, change in {
        "a test id twice": lambda t: pd.concat([t, t.head(1)]),
        "a breed column twice": lambda t: t.rename(columns={t.columns[2]: t.columns[1]}),
    }.items():
        code, shown = run("submit", "--run", model_run, "--data", sample_changed(change), "--out", base / "twice.csv")
        rows.append((f"submit: sample_submission.csv with {case}", shown, code))
    apple = copy()
    (apple / "sample_submission.csv").unlink()
    (apple / "test" / f"._{first_test}.jpg").write_bytes(b"\x00\x05\x16\x07")
    code, shown = run("submit", "--run", model_run, "--data", apple, "--out", base / "apple.csv")
    rows_written = len(pd.read_csv(base / "apple.csv")) if code == 0 else 0
    rows.append((f"submit: a ._name.jpg in test/, no sample (rows: {rows_written})", shown, code))
    photos = base / "photos"
    photos.mkdir()
    shutil.copy(test_image(pristine), photos / "mine.jpg")
    (photos / "outside.jpg").symlink_to(train_image(pristine))
    code, shown = run("predict", photos, "--run", model_run)
    rows.append(("predict: a folder with a link to a file outside it", shown, code))
    code, shown = run("train", "--data", pristine, *TINY, "--precision", "mixed_bfloat16", "--run-dir", base / "bf16")
    rows.append(("train: --precision mixed_bfloat16 on this CPU", shown, code))

    print("| case | what the user sees | exit |\n| --- | --- | --- |")
    for case, shown, code in rows:
        shown = shown.replace(str(base), "$TMP").replace("|", "\\|")
        print(f"| {case} | {shown} | {code} |")


if __name__ == "__main__":
    main()
