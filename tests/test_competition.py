import numpy as np
import pandas as pd
import pytest

from dogbreeds import competition as comp
from dogbreeds.competition import Competition, locate_data, split_frame, stratified_order
from dogbreeds.errors import DogbreedsError


def write_layout(root, labels, sample_columns=None, test_ids=()):
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    pd.DataFrame(labels, columns=["id", "breed"]).to_csv(root / "labels.csv", index=False)
    for image_id, _ in labels:
        (root / "train" / f"{image_id}.jpg").write_bytes(b"")
    for image_id in test_ids:
        (root / "test" / f"{image_id}.jpg").write_bytes(b"")
    if sample_columns is not None:
        sample = pd.DataFrame(0.5, index=range(len(test_ids)), columns=sample_columns)
        sample.insert(0, "id", list(test_ids))
        sample.to_csv(root / "sample_submission.csv", index=False)
    return root


def test_locate_data_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DOGBREEDS_DATA", raising=False)
    kaggle = tmp_path / "kaggle"
    monkeypatch.setenv("DOGBREEDS_KAGGLE_ROOT", str(kaggle))
    assert locate_data(None) == comp.Path("data")
    (kaggle / "working").mkdir(parents=True)
    (kaggle / "input" / "dog-breed-identification").mkdir(parents=True)
    assert locate_data(None) == kaggle / "input" / "dog-breed-identification"
    monkeypatch.setenv("DOGBREEDS_DATA", "/from/env")
    assert locate_data(None) == comp.Path("/from/env")
    assert locate_data("given") == comp.Path("given")


def test_classes_and_test_rows_follow_sample_submission(tmp_path):
    labels = [("a1", "pug"), ("a2", "akita"), ("a3", "beagle")]
    root = write_layout(tmp_path / "c", labels, ["pug", "beagle", "akita"], test_ids=["z9", "b2", "m5"])
    c = Competition.load(root, need_test=True)
    assert c.classes == ["pug", "beagle", "akita"]  # as they stand, not sorted
    assert c.test_ids == ["z9", "b2", "m5"]  # row order, not sorted
    assert c.labels["label"].tolist() == [0, 2, 1]
    assert c.test_paths()[0].endswith("test/z9.jpg")


def test_without_sample_submission_classes_and_ids_are_sorted(tmp_path):
    labels = [("a1", "pug"), ("a2", "akita"), ("a3", "beagle")]
    root = write_layout(tmp_path / "c", labels, None, test_ids=["z9", "b2", "m5"])
    c = Competition.load(root, need_test=True)
    assert c.classes == ["akita", "beagle", "pug"]
    assert c.test_ids == ["b2", "m5", "z9"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("id,dog\nx,pug\n", "missing column(s) breed"),
        ("id,breed\n", "has no rows"),
        ("id,breed\nx,pug\nx,akita\n", "1 duplicate ids (first: x)"),
        ("id,breed\n../../etc/passwd,pug\n", "is not a plain file name"),
    ],
)
def test_bad_labels_say_what_and_where(tmp_path, text, message):
    (tmp_path / "labels.csv").write_text(text)
    with pytest.raises(DogbreedsError, match="labels.csv") as error:
        Competition.load(tmp_path)
    assert message in str(error.value)


def test_breed_missing_from_sample_submission(tmp_path):
    root = write_layout(tmp_path / "c", [("a1", "pug"), ("a2", "corgi")], ["pug", "akita"], ["t1"])
    with pytest.raises(DogbreedsError, match="not columns of sample_submission.csv"):
        Competition.load(root)


def test_missing_folder_gives_kaggle_hint(tmp_path):
    with pytest.raises(DogbreedsError, match="kaggle competitions download"):
        Competition.load(tmp_path / "nowhere")


def frame(counts):
    labels = np.repeat(np.arange(len(counts)), counts)
    return pd.DataFrame({"id": [f"i{i}" for i in range(len(labels))], "label": labels})


def test_split_is_stratified_disjoint_and_repeatable():
    data = frame([50, 30, 20])
    train, val = split_frame(data, val_split=0.2, seed=42)
    assert len(val) == 20 and len(train) == 80
    assert set(train["id"]).isdisjoint(val["id"])
    assert val["label"].value_counts().sort_index().tolist() == [10, 6, 4]
    again_train, again_val = split_frame(data, val_split=0.2, seed=42)
    assert again_val["id"].tolist() == val["id"].tolist()
    other = split_frame(data, val_split=0.2, seed=7)[1]
    assert other["id"].tolist() != val["id"].tolist()


def test_split_keeps_single_image_classes_in_training():
    train, val = split_frame(frame([40, 1, 1]), val_split=0.25, seed=0)
    assert {1, 2} <= set(train["label"])


def test_limit_takes_a_stratified_subset():
    train, val = split_frame(frame([600, 300, 100]), val_split=0.2, seed=1, limit=100)
    both = pd.concat([train, val])
    assert len(both) == 100
    assert both["label"].value_counts().sort_index().tolist() == [60, 30, 10]


def test_stratified_order_prefixes_are_balanced():
    labels = np.repeat([0, 1], [100, 100])
    first = labels[stratified_order(labels, seed=3)[:10]]
    assert abs(first.sum() - 5) <= 1
