"""The Kaggle layout: where the files are, the classes, the test ids, and the labelled images a run uses.

The split a run trains on (`prepare_data`, from the run's `Split`) lives here too: a resumed
run must hold out the very same images, and a k-fold run's folds must cover all the labelled
images (`Data.images`) once each.

DIR/labels.csv               id,breed    (image: DIR/train/<id>.jpg)
DIR/test/<id>.jpg
DIR/sample_submission.csv    id,<breed 1>,...,<breed 120>
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold

from dogbreeds.errors import DogbreedsError, log
from dogbreeds.files import probability_table
from dogbreeds.images import inspect_images
from dogbreeds.places import kaggle_competition
from dogbreeds.settings import Split

KAGGLE_HINT = (
    "download it with `kaggle competitions download -c dog-breed-identification` and unzip it there, or pass --data DIR"
)
IMAGE_SUFFIX = ".jpg"


def locate_data(data: str | Path | None = None) -> Path:
    """--data, else $DOGBREEDS_DATA, else the competition attached to a Kaggle kernel, else ./data."""
    if data is not None:
        return Path(data)
    if os.environ.get("DOGBREEDS_DATA"):
        return Path(os.environ["DOGBREEDS_DATA"])
    return kaggle_competition() or Path("data")


@dataclass(frozen=True)
class Competition:
    """One competition folder, read and checked once."""

    root: Path
    classes: list[str]
    labels: pd.DataFrame  # columns: id, breed, label (index into classes), path
    test_ids: list[str]
    sample_submission: Path | None
    columns: list[str] = field(default_factory=list)  # a submission's breed columns: the sample's order

    def __post_init__(self) -> None:
        if not self.columns:
            object.__setattr__(self, "columns", list(self.classes))

    def ordered_as(self, classes: list[str]) -> "Competition":
        """The same competition with its classes in a run's order and its labels numbered so;
        a submission keeps the sample's column order (`columns`)."""
        index = {breed: i for i, breed in enumerate(classes)}
        labels = self.labels.assign(label=self.labels["breed"].map(index).astype("int64"))
        return replace(self, classes=list(classes), labels=labels, columns=self.columns)

    def submission_table(self, probabilities) -> pd.DataFrame:
        """Probabilities of the test images (columns in `classes` order) laid out as sample_submission.csv."""
        return probability_table(self.test_ids, self.classes, probabilities)[["id", *self.columns]]

    @classmethod
    def load(cls, data: str | Path | None = None, *, need_test: bool = False) -> "Competition":
        root = locate_data(data)
        if not root.is_dir():
            raise DogbreedsError(f"data folder {root} does not exist: {KAGGLE_HINT}")
        labels = read_labels(root / "labels.csv")
        sample = root / "sample_submission.csv"
        if sample.is_file():
            classes, test_ids = read_sample_submission(sample)
        else:
            classes = sorted(labels["breed"].unique())
            test_ids = list_test_ids(root / "test") if need_test else []
            log.warning(
                f"{sample} not found: using the sorted breeds of labels.csv as columns"
                + (" and the sorted file names of test/ as rows" if need_test else "")
            )
        unknown = sorted(set(labels["breed"]) - set(classes))
        if unknown:
            raise DogbreedsError(
                f"{root / 'labels.csv'}: {len(unknown)} breeds are not columns of sample_submission.csv "
                f"(first: {', '.join(unknown[:3])}); use the files of one competition"
            )
        unseen = [c for c in classes if c not in set(labels["breed"])]
        if unseen:
            log.warning(
                f"{len(unseen)} breeds of sample_submission.csv have no training image "
                f"(first: {', '.join(unseen[:3])}); the model will give them little probability"
            )
        index = {breed: i for i, breed in enumerate(classes)}
        labels = labels.assign(
            label=labels["breed"].map(index).astype("int64"),
            path=[str(root / "train" / f"{i}{IMAGE_SUFFIX}") for i in labels["id"]],
        )
        if need_test and not test_ids:
            raise DogbreedsError(f"no test images found in {root / 'test'}: {KAGGLE_HINT}")
        return cls(root, list(classes), labels, list(test_ids), sample if sample.is_file() else None)

    def test_paths(self) -> list[str]:
        return [str(self.root / "test" / f"{i}{IMAGE_SUFFIX}") for i in self.test_ids]

    def test_frame(self) -> pd.DataFrame:
        """The test images that are there (id, path), in submission order."""
        paths = self.test_paths()
        present = [os.path.isfile(p) for p in paths]
        return pd.DataFrame({"id": self.test_ids, "path": paths})[present].reset_index(drop=True)


def _check_id(value: str, where: Path) -> str:
    if not value or "/" in value or "\\" in value or value in (".", ".."):
        raise DogbreedsError(f"{where}: id {value!r} is not a plain file name; fix that row")
    return value


def read_labels(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DogbreedsError(f"{path} not found: {KAGGLE_HINT}")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise DogbreedsError(f"{path} is not a readable CSV ({error}); it should be id,breed") from None
    missing = {"id", "breed"} - set(frame.columns)
    if missing:
        raise DogbreedsError(f"{path}: missing column(s) {', '.join(sorted(missing))}; the header must be id,breed")
    if frame.empty:
        raise DogbreedsError(f"{path} has no rows; it should list one id,breed per training image")
    duplicated = frame["id"][frame["id"].duplicated()]
    if len(duplicated):
        raise DogbreedsError(
            f"{path}: {len(duplicated)} duplicate ids (first: {duplicated.iloc[0]}); keep one row per image"
        )
    for value in frame["id"]:
        _check_id(value, path)
    return frame[["id", "breed"]].reset_index(drop=True)


def read_sample_submission(path: Path) -> tuple[list[str], list[str]]:
    """Class order = its breed columns as they stand; test rows = its ids in order."""
    try:
        header = pd.read_csv(path, nrows=1, header=None, dtype=str).iloc[0].tolist()  # as written: no "pug.1"
        ids = pd.read_csv(path, usecols=[0], dtype=str, keep_default_na=False).iloc[:, 0].tolist()
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as error:
        raise DogbreedsError(f"{path} is not a readable CSV ({error}); it should be id,<breed>,...") from None
    if len(header) < 3 or header[0] != "id":
        raise DogbreedsError(f"{path}: the header must be id followed by at least two breed columns")
    twice = pd.Series(header)[pd.Series(header).duplicated()]
    if len(twice):  # pandas would read the second as "pug.1"
        raise DogbreedsError(f"{path}: the column {twice.iloc[0]} appears twice; keep one column per breed")
    for value in ids:
        _check_id(value, path)
    repeated = pd.Series(ids)[pd.Series(ids).duplicated()]
    if len(repeated):
        raise DogbreedsError(
            f"{path}: the test id {repeated.iloc[0]} appears twice ({len(repeated)} repeated in all); "
            "keep one row per image"
        )
    return list(header[1:]), ids


def list_test_ids(folder: Path) -> list[str]:
    """The test images of a folder: .jpg files, not hidden ones (macOS's `._name.jpg` are not photos)."""
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.iterdir() if p.suffix.lower() == IMAGE_SUFFIX and not p.name.startswith("."))


def stratified_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """Indices ordered so that every prefix is (near) stratified by label.

    Each image gets the position (rank + 0.5) / class size within a seeded shuffle of its
    class; sorting by that position interleaves the classes in proportion. Any prefix then
    works as a stratified sample, for any size and even for classes of one image.
    """
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(len(labels))
    position = np.empty(len(labels))
    for label in np.unique(labels):
        members = shuffled[labels[shuffled] == label]
        position[members] = (np.arange(len(members)) + 0.5) / len(members)
    tiebreak = rng.random(len(labels))
    return np.lexsort((tiebreak, position))


def subset(labels: pd.DataFrame, *, seed: int, limit: int | None = None) -> pd.DataFrame:
    """--limit: a stratified subset of `limit` labelled images, the same for the same seed, in their order."""
    if limit is None or limit >= len(labels):
        return labels
    return labels.iloc[np.sort(stratified_order(labels["label"].to_numpy(), seed)[:limit])]


def split_frame(
    labels: pd.DataFrame, *, val_split: float, seed: int, limit: int | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Stratified hold-out, the same for the same seed; --limit first takes a stratified subset."""
    labels = subset(labels, seed=seed, limit=limit)
    order = stratified_order(labels["label"].to_numpy(), seed + 1)
    n_val = max(1, round(val_split * len(labels)))
    if n_val >= len(labels):
        raise DogbreedsError(f"only {len(labels)} labelled images: too few to hold out a validation split")
    val = np.sort(order[:n_val])
    train = np.sort(order[n_val:])
    return labels.iloc[train].reset_index(drop=True), labels.iloc[val].reset_index(drop=True)


def fold_split(
    labels: pd.DataFrame, *, folds: int, fold: int, seed: int, limit: int | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Fold `fold` (1..folds) of a stratified K-fold split: its training images and the ones it holds out.

    The same seed gives the same folds, and every image is held out by exactly one fold.
    """
    labels = subset(labels, seed=seed, limit=limit)
    counts = labels["label"].value_counts()
    if counts.max() < folds:
        raise DogbreedsError(
            f"--folds {folds} needs a breed with at least {folds} images; the largest has {counts.max()}"
        )
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # breeds with fewer images than folds are simply not in every fold
        warnings.simplefilter("ignore", UserWarning)
        train, val = list(splitter.split(np.zeros(len(labels)), labels["label"].to_numpy()))[fold - 1]
    return labels.iloc[train].reset_index(drop=True), labels.iloc[val].reset_index(drop=True)


def labels_digest(competition: "Competition") -> str:
    """What a fold folder records of the labels it was split from."""
    return hashlib.sha256((competition.root / "labels.csv").read_bytes()).hexdigest()[:16]


@dataclass(frozen=True)
class Data:
    """The labelled images a run uses, checked once: every image it may train on or hold out
    (`images`, readable, in labels.csv's order, with their EXIF orientation) and those left out
    as unreadable (`skipped`: id, path, problem). `partition(fold)` cuts them by the run's split."""

    competition: Competition
    split: Split
    images: pd.DataFrame
    skipped: pd.DataFrame

    def partition(self, fold: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(training, held-out) images: of fold `fold` (default: the split's) of a k-fold run, or
        the --val-split. The cut is made on the --limit subset before unreadable images are left
        out, so a fixed or broken file never moves another image to the other side."""
        s, labels = self.split, self.competition.labels
        if s.folds > 1:
            train, val = fold_split(labels, folds=s.folds, fold=fold or s.fold or 1, seed=s.seed, limit=s.limit)
        else:
            train, val = split_frame(labels, val_split=s.val_split, seed=s.seed, limit=s.limit)
        orientation = self.images.set_index("id")["orientation"]

        def readable(frame: pd.DataFrame) -> pd.DataFrame:
            kept = frame[frame["id"].isin(orientation.index)]
            return kept.assign(orientation=kept["id"].map(orientation).to_numpy()).reset_index(drop=True)

        return readable(train), readable(val)


def prepare_data(data: str | Path | None, split: Split) -> Data:
    """The labelled images of a run (the same images for the same split), unreadable ones left out.

    Every image's header is read once; those that cannot be read are skipped and named,
    and past --max-unreadable the run refuses to start rather than learn from a broken copy.
    """
    competition = Competition.load(data)
    if not (competition.root / "train").is_dir():
        raise DogbreedsError(f"{competition.root / 'train'} not found: unzip train.zip there")
    used = subset(competition.labels, seed=split.seed, limit=split.limit).reset_index(drop=True)
    report = inspect_images(used["path"].tolist())  # only the images this run uses (--limit)
    bad = (report["problem"] != "").to_numpy()
    skipped = used.loc[bad, ["id", "path"]].assign(problem=report.loc[bad, "problem"].to_numpy())
    if len(skipped):
        listing = "; ".join(f"{r.id} ({r.problem})" for r in skipped.head(3).itertuples())
        if bad.mean() > split.max_unreadable:
            raise DogbreedsError(
                f"{len(skipped)} of {len(used)} training images in {competition.root / 'train'} cannot be read "
                f"(first: {listing}); over --max-unreadable {split.max_unreadable:g}: fix those files or their rows"
            )
        log.warning(f"skipping {len(skipped)} unreadable training images (first: {listing})")
    images = used.assign(orientation=report["orientation"].to_numpy())[~bad].reset_index(drop=True)
    if images["breed"].nunique() < 2:
        raise DogbreedsError(
            f"{competition.root / 'labels.csv'}: the {len(images)} images this run uses are all of one breed "
            f"({images['breed'].iloc[0] if len(images) else 'none'}); a classifier needs two at least: add images "
            "of other breeds, or a larger --limit"
        )
    return Data(competition, split, images, skipped.reset_index(drop=True))


def readable_test_images(competition: Competition) -> pd.DataFrame:
    """Every test id needs a row, so any image that cannot be read stops submit, named."""
    if not (competition.root / "test").is_dir():
        raise DogbreedsError(f"{competition.root / 'test'} not found: unzip test.zip there")
    report = inspect_images(competition.test_paths())
    bad = report[report["problem"] != ""]
    if len(bad):
        ids = [competition.test_ids[i] for i in bad.index[:3]]
        listing = "; ".join(f"{i} ({p})" for i, p in zip(ids, bad["problem"]))
        raise DogbreedsError(
            f"{len(bad)} test images in {competition.root / 'test'} cannot be read (first: {listing}); "
            "every test id needs a prediction: restore these files from the competition's test.zip"
        )
    return report
