"""CIFAR's files as image folders: the python batches, image folders, or a keras.datasets download.

Every source becomes image folders (`train/<class>/`, `test/<class>/`), so the images go through
the engine's loader like any photo; batches and downloads are written once as PNG files.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import pandas as pd
from PIL import Image

from dogbreeds.errors import DogbreedsError
from dogbreeds.images import inspect_images
from dogbreeds.places import feature_cache
from dogbreeds.progress import track

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"}
DATA_HINT = (
    "pass --data DIR: the python batches folder (cifar-10-batches-py, cifar-100-python) "
    "or image folders train/<class>/ and test/<class>/"
)

@dataclass
class CifarData:
    classes: list[str]
    train: pd.DataFrame  # path, label, orientation: the whole training set
    test: pd.DataFrame
    source: str


class _PlainData(pickle.Unpickler):
    """Unpickles numpy arrays, lists, dicts, strings and numbers, and nothing else.

    A pickle can name any importable function to call while loading; the CIFAR batches need
    only numpy's array reconstruction, so every other name is refused before it is looked up.
    """

    ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),  # arrays pickled at protocol 5
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),  # how Python 3 pickles bytes at protocol 2
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name}")


def _plain(value) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, (str, bytes)) and _plain(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, np.ndarray):
        return value.dtype != object
    return isinstance(value, (str, bytes, int, float, bool, type(None)))


def read_batch(path: Path) -> dict:
    """One CIFAR python batch (a pickled dict), its keys as str; only plain data comes out."""
    try:
        with open(path, "rb") as f:
            value = _PlainData(f, encoding="bytes").load()
    except pickle.UnpicklingError as error:
        raise DogbreedsError(
            f"{path} asks to load {error}, not plain arrays, lists and dicts: refused (unpickling it could run "
            "code); use the files from https://www.cs.toronto.edu/~kriz/cifar.html"
        ) from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, OSError) as error:
        raise DogbreedsError(
            f"{path} is not a CIFAR python batch ({type(error).__name__}); download it again"
        ) from None
    if not isinstance(value, dict) or not _plain(value):
        raise DogbreedsError(f"{path} does not hold a dict of plain arrays and lists; it is not a CIFAR batch")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in value.items()}


def _batch_arrays(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    batch = read_batch(path)
    if "data" not in batch or label_key not in batch:
        raise DogbreedsError(f"{path} has no {label_key!r} or 'data' entry; it is not a batch of this dataset")
    images = np.asarray(batch["data"], dtype=np.uint8)
    if images.ndim != 2 or images.shape[1] != 3 * 32 * 32:
        raise DogbreedsError(f"{path}: images of shape {images.shape}, expected (n, 3072)")
    labels = np.asarray(batch[label_key], dtype=np.int64)
    return images.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def _names(values) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def read_python_batches(folder: Path) -> tuple[list[str], tuple, tuple]:
    """cifar-10-batches-py (data_batch_1..5, test_batch) or cifar-100-python (train, test):
    class names and (images NHWC uint8, labels) for train and test."""
    if (folder / "data_batch_1").is_file():
        names = (
            _names(read_batch(folder / "batches.meta")["label_names"]) if (folder / "batches.meta").is_file() else []
        )
        parts = [_batch_arrays(p, "labels") for p in sorted(folder.glob("data_batch_*"))]
        train = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
        test = _batch_arrays(folder / "test_batch", "labels")
    else:
        names = _names(read_batch(folder / "meta")["fine_label_names"]) if (folder / "meta").is_file() else []
        train, test = _batch_arrays(folder / "train", "fine_labels"), _batch_arrays(folder / "test", "fine_labels")
    n_classes = int(max(train[1].max(), test[1].max())) + 1
    return names or [f"class-{i:02d}" for i in range(n_classes)], train, test


def _write_png(path: Path, image: np.ndarray) -> None:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    path.write_bytes(buffer.getvalue())


def arrays_to_folders(classes: list[str], train: tuple, test: tuple, root: Path) -> Path:
    """The arrays as lossless PNG image folders, once: later calls find them (written, then renamed)."""
    digest = hashlib.sha256(repr(classes).encode())
    for images, labels in (train, test):
        digest.update(images.tobytes())
        digest.update(np.asarray(labels, np.int64).tobytes())
    target = root / f"images-{len(classes)}-classes-{digest.hexdigest()[:16]}"
    if target.is_dir():
        return target
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    jobs = []
    for part, (images, labels) in (("train", train), ("test", test)):
        for name in classes:
            (partial / part / name.replace("/", "_")).mkdir(parents=True, exist_ok=True)
        for i, (image, label) in enumerate(zip(images, labels)):
            jobs.append((partial / part / classes[label].replace("/", "_") / f"{i:05d}.png", image))
    with track(f"writing the {len(jobs)} images once as PNG files under {target}", len(jobs)) as shown:
        with ThreadPoolExecutor(max_workers=8) as pool:
            for _ in pool.map(lambda job: _write_png(*job), jobs, chunksize=256):
                shown.update()
    os.replace(partial, target)
    return target


def _folder_frame(folder: Path, classes: list[str]) -> pd.DataFrame:
    index = {name: i for i, name in enumerate(classes)}
    rows = [
        (str(path), index[path.parent.name])
        for path in sorted(folder.glob("*/*"))
        if path.suffix.lower() in IMAGE_SUFFIXES and path.parent.name in index
    ]
    return pd.DataFrame(rows, columns=["path", "label"])


def read_image_folders(root: Path, classes: list[str] | None = None) -> tuple[list[str], pd.DataFrame, pd.DataFrame]:
    """train/<class>/*.jpg and test/<class>/*.jpg; the classes are train's folder names, sorted,
    unless their order is known (the label order of batches written as folders)."""
    classes = classes or sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    if len(classes) < 2:
        raise DogbreedsError(
            f"{root / 'train'} has {len(classes)} class folders; it needs train/<class>/ for each class"
        )
    strays = sorted(p.name for p in (root / "test").iterdir() if p.is_dir() and p.name not in classes)
    if strays:
        raise DogbreedsError(
            f"{root / 'test'}: classes not in train/: {', '.join(strays[:3])}; use one dataset's folders"
        )
    train, test = _folder_frame(root / "train", classes), _folder_frame(root / "test", classes)
    for part, frame in (("train", train), ("test", test)):
        if frame.empty:
            raise DogbreedsError(f"no images in {root / part}/<class>/; {DATA_HINT}")
    return classes, train, test


def _download(dataset: str):
    module = keras.datasets.cifar10 if dataset == "cifar10" else keras.datasets.cifar100
    try:
        (x, y), (x_test, y_test) = module.load_data()
    except Exception as error:  # keras raises whatever urllib or the archive gives
        raise DogbreedsError(
            f"could not download {dataset} with keras.datasets ({type(error).__name__}); "
            f"connect to the internet once, or {DATA_HINT}"
        ) from None
    classes = CIFAR10_CLASSES if dataset == "cifar10" else [f"class-{i:02d}" for i in range(100)]
    return classes, (x, y.reshape(-1)), (x_test, y_test.reshape(-1))


def load_cifar(data: str | None, dataset: str, cache_dir: str | Path) -> CifarData:
    """Image folders as they are; python batches or a download written once as image folders."""
    cache, order = feature_cache(cache_dir) / "cifar", None
    if data is None:
        arrays = _download(dataset)
        root, source, order = arrays_to_folders(*arrays, cache), f"keras.datasets.{dataset}", arrays[0]
    else:
        folder = Path(data)
        if not folder.is_dir():
            raise DogbreedsError(f"--data {data} is not a folder; {DATA_HINT}")
        if (folder / "train").is_dir() and (folder / "test").is_dir():
            root, source = folder, str(folder)
        elif (folder / "data_batch_1").is_file() or (folder / "train").is_file():
            arrays = read_python_batches(folder)
            root, source, order = arrays_to_folders(*arrays, cache), str(folder), arrays[0]
        else:
            raise DogbreedsError(f"--data {data} holds neither CIFAR python batches nor train/ and test/; {DATA_HINT}")
    classes, train, test = read_image_folders(root, order and [name.replace("/", "_") for name in order])
    paths = train["path"].tolist() + test["path"].tolist()
    with track(f"checking {len(paths)} images", len(paths)) as shown:  # 60,000 headers: seconds
        report = inspect_images(paths, shown.update)
    bad = report[report["problem"] != ""]
    if len(bad):
        raise DogbreedsError(
            f"{len(bad)} images cannot be read (first: {bad['path'].iloc[0]}: {bad['problem'].iloc[0]})"
        )
    orientation = report["orientation"].to_numpy()
    train, test = (
        train.assign(orientation=orientation[: len(train)]),
        test.assign(orientation=orientation[len(train) :]),
    )
    return CifarData(classes, train, test, source)
