"""Reading image files' headers: what each photo's EXIF orientation is, and which files are broken;
and the photos a user names (files, or folders of them).

Pillow only, so commands that check images before any model (submit, predict, explain, train)
find a bad file at once, with its name, and nothing here starts TensorFlow.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from dogbreeds.errors import DogbreedsError, log

EXIF_ORIENTATION = 0x0112


MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485  # larger "photos" are decompression bombs: refuse
HEADERS = (b"\xff\xd8", b"\x89PNG", b"GIF8", b"BM", b"RIFF")  # JPEG, PNG, GIF, BMP, WebP


TENSORFLOW_BMP_BITS = (8, 24, 32)  # tf.io.decode_image takes a pixel's bytes as its channels: 1, 3 or 4


def _bmp_bits(head: bytes) -> int:
    """Bits per pixel from a BMP's header: after a 12-byte OS/2 header, or the usual 40 bytes and longer."""
    offset = 24 if int.from_bytes(head[14:18], "little") == 12 else 28
    return int.from_bytes(head[offset : offset + 2], "little")


def _inspect(path: str) -> tuple[int, str]:
    """(EXIF orientation 1-8, problem or "") from the header; full decode only if the end looks cut."""
    try:
        with open(path, "rb") as f:
            head = f.read(30)
            f.seek(max(0, os.fstat(f.fileno()).st_size - 2))
            tail = f.read(2)
        if not head:
            return 1, "empty file (0 bytes)"
        if not head.startswith(HEADERS) or (head.startswith(b"RIFF") and head[8:12] != b"WEBP"):
            return 1, "not an image (no JPEG, PNG, GIF, BMP or WebP header)"
        if head.startswith(b"BM") and _bmp_bits(head) not in TENSORFLOW_BMP_BITS:
            return 1, f"a {_bmp_bits(head)}-bit BMP, which TensorFlow cannot decode (8, 24 or 32 bits); save it as PNG"
        with Image.open(path) as image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                return 1, f"{width}x{height} px is over the {MAX_PIXELS // 1_000_000} MP limit (decompression bomb?)"
            orientation = image.getexif().get(EXIF_ORIENTATION, 1)
            if head.startswith(b"\xff\xd8") and tail != b"\xff\xd9":
                image.load()  # no end-of-image marker: decode fully to see whether it is cut short
    except FileNotFoundError:
        return 1, "missing"
    except UnidentifiedImageError:
        return 1, "unreadable (the image data is corrupt)"
    except Image.DecompressionBombError:
        return 1, f"over the {MAX_PIXELS // 1_000_000} MP limit (decompression bomb?)"
    except (OSError, ValueError, SyntaxError) as error:
        return 1, f"unreadable ({error})"
    return (orientation if isinstance(orientation, int) and 1 <= orientation <= 8 else 1), ""


def inspect_images(paths: list[str], advance: Callable[[int], object] | None = None) -> pd.DataFrame:
    """One header pass over the files (threads): EXIF orientation and any problem, per path;
    `advance(1)` is called after each file (a progress bar's).

    Problems found here (empty, not an image, truncated, a decompression bomb) would otherwise
    stop TensorFlow in the middle of an epoch, or of a submission.
    """
    results = []
    with ThreadPoolExecutor(max_workers=8) as pool:
        for result in pool.map(_inspect, paths, chunksize=64):
            results.append(result)
            if advance is not None:
                advance(1)
    return pd.DataFrame(
        {
            "path": list(paths),
            "orientation": np.array([r[0] for r in results], dtype=np.int32),
            "problem": [r[1] for r in results],
        }
    )


FOLDER_SUFFIXES = (".jpg", ".jpeg", ".png")  # what a folder is searched for


def image_paths(inputs: list[str | Path]) -> list[Path]:
    """Files as given, in the given order; folders searched (with sub-folders) for JPEG and PNG files."""
    if not inputs:
        raise DogbreedsError("no images given: pass image files or folders of them")
    paths: list[Path] = []
    for given in map(Path, inputs):
        if given.is_dir():
            found = sorted(
                p
                for p in given.rglob("*")
                if p.suffix.lower() in FOLDER_SUFFIXES and p.is_file() and not p.name.startswith(".")
            )
            inside = [p for p in found if p.resolve().is_relative_to(given.resolve())]
            if len(inside) < len(found):  # a link out of the folder is not one of its photos
                log.warning(f"{given}: skipped {len(found) - len(inside)} link(s) to files outside it")
            if not inside:
                raise DogbreedsError(f"{given} holds no .jpg, .jpeg or .png files; pass a folder of photos")
            paths.extend(inside)
        elif given.is_file():
            paths.append(given)
        else:
            raise DogbreedsError(f"{given} not found: pass JPEG or PNG files, or folders of them")
    return paths


def checked_images(paths: list[Path]) -> pd.DataFrame:
    """Every file's header read once, so that a broken one is named before any prediction."""
    images = inspect_images([str(p) for p in paths])
    broken = images[images["problem"] != ""]
    if len(broken):
        first = broken.iloc[0]
        raise DogbreedsError(
            f"{first['path']} is not a readable image ({first['problem']})"
            + (f" (and {len(broken) - 1} more)" if len(broken) > 1 else "")
            + "; pass JPEG, PNG, GIF, BMP or WebP files"
        )
    return images
