"""`dogbreeds export`: a run as one model that serving tools and phones run without dogbreeds.

The model takes a batch of uint8 RGB images at the run's image size (the caller decodes and
resizes them, as `dogbreeds predict` does before its model) and returns the probabilities in the
order of classes.json, written beside it. Inside are the backbone's preprocessing, the network,
and for a features run its backbones, pooled, before the head; a k-fold run's folds are
averaged, as `submit` and `predict` average them. There is no flip TTA and no calibration: it
gives what `dogbreeds predict --no-tta --no-calibrate` gives.

The export is written into a temporary folder beside the target, then renamed into place: an
interrupted export leaves neither a half-written target nor the temporary folder.

Every format goes through TensorFlow, which must be installed under either backend. Under JAX a
SavedModel holds the network as one XLA call (jax2tf), which TensorFlow Serving runs but the
TFLite converter cannot read: there `--format tflite` exports under the TensorFlow backend, in a
process of its own (a run folder is the same under both backends).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from dogbreeds.cache import backbone_specs, pooled_backbone
from dogbreeds.errors import DogbreedsError, native_stderr
from dogbreeds.files import claim_output, replace_folder, temporary_sibling
from dogbreeds.inference import Predictor
from dogbreeds.models import Affine, get_backbone
from dogbreeds.progress import track

FORMATS = ("savedmodel", "tflite", "keras")
RECORD = "export.json"  # what an export holds, and the mark by which --force knows it wrote the folder
EXPORT = "an earlier export (a folder holding export.json)"
SIGNATURE = "serving_default"  # what TensorFlow Serving and saved_model_cli call
INPUT, OUTPUT = "images", "probabilities"


def preprocessing(backbone: str, name: str) -> layers.Dense:
    """The backbone's preprocess_input as a fixed Dense layer on the channel axis.

    Every keras.applications preprocessing is an affine map of each pixel's channels (scale and
    shift; caffe mode also turns RGB into BGR), so four probes give its matrix and offset, and
    random pixels check it. A Lambda layer would do, but a .keras file holding one loads only
    with safe_mode=False; a Dense layer loads anywhere, and converts to TFLite as it is.
    """
    preprocess = get_backbone(backbone).preprocess
    if isinstance(preprocess, Affine):  # a KerasHub backbone's preprocessing is data already
        matrix, offset = np.diag(preprocess.scale).astype("float32"), np.asarray(preprocess.offset, "float32")
        return _fixed_dense(matrix, offset, name)
    probes = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32)
    mapped = np.asarray(preprocess(probes.copy()), np.float32)
    offset, matrix = mapped[0], mapped[1:] - mapped[0]
    pixels = np.random.default_rng(0).uniform(0, 255, (64, 3)).astype(np.float32)
    if not np.allclose(pixels @ matrix + offset, np.asarray(preprocess(pixels.copy())), atol=1e-4):
        raise DogbreedsError(f"the preprocessing of {backbone} is not a map of each pixel's channels; it cannot export")
    return _fixed_dense(matrix, offset, name)


def _fixed_dense(matrix: np.ndarray, offset: np.ndarray, name: str) -> layers.Dense:
    dense = layers.Dense(3, dtype="float32", trainable=False, name=name)
    dense.build((None, 3))
    dense.set_weights([matrix, offset])
    return dense


def _named(model: keras.Model, name: str) -> keras.Model:
    """The same layers under another name: the folds' models, all saved under one name, become siblings."""
    return keras.Model(model.input, model.output, name=name)


def serving_model(predictor: Predictor) -> keras.Model:
    """uint8 images of the run's size in, the probabilities of its classes out."""
    settings = predictor.settings
    if settings.features is not None:
        specs = backbone_specs(settings.features)
        sizes = sorted({spec.image_size for spec in specs})
        if len(sizes) > 1:
            raise DogbreedsError(
                f"run {predictor.run.path} feeds its backbones images of {' and '.join(map(str, sizes))} px; an "
                "export takes one size: train the ensemble with one --image-size"
            )
        size = sizes[0]
    else:
        specs, size = [], settings.loading.image_size
    images = keras.Input((size, size, 3), dtype="uint8", name=INPUT)
    if specs:  # backbones pooled and side by side, then the head: what the feature cache feeds it
        vectors = [
            _named(pooled_backbone(spec), f"backbone_{i}")(preprocessing(spec.backbone, f"preprocess_{i}")(images))
            for i, spec in enumerate(specs)
        ]
        inputs = vectors[0] if len(vectors) == 1 else layers.Concatenate(name="features")(vectors)
    else:
        inputs = preprocessing(settings.loading.backbone, "preprocess")(images)
    size_taken = None if specs else size  # a head takes vectors, checked when it is called on them
    members = predictor.run.members
    outputs = [_named(run.load_model(image_size=size_taken), f"model_{i}")(inputs) for i, run in enumerate(members, 1)]
    probabilities = outputs[0] if len(outputs) == 1 else layers.Average(name="folds")(outputs)
    return keras.Model(images, probabilities, name=f"{predictor.run.name}_export")


def _savedmodel(model: keras.Model, folder: Path) -> None:
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        SIGNATURE,
        lambda images: {OUTPUT: model(images, training=False)},  # Keras compiles it for the backend (JAX: jax2tf)
        input_signature=[tf.TensorSpec(model.input_shape, tf.uint8, name=INPUT)],
    )
    archive.write_out(str(folder), verbose=False)


def _tflite(model: keras.Model, folder: Path) -> None:
    """Converted from a SavedModel, the route TensorFlow documents for Keras 3 models."""
    saved = folder / "savedmodel"
    _savedmodel(model, saved)
    try:
        with native_stderr():  # the converter's notes, and on failure the MLIR of every op it lacks
            converted = tf.lite.TFLiteConverter.from_saved_model(str(saved)).convert()
    except Exception as error:  # the converter raises its ConverterError, with the MLIR it failed on
        missing = re.search(r"TF Select ops: ([\w, ]+)", str(error))
        ops = f" ({missing.group(1).strip()})" if missing else ""
        raise DogbreedsError(
            f"this run's network does not convert to TFLite: it uses TensorFlow ops the TFLite runtime lacks{ops}; "
            "export --format savedmodel or keras"
        ) from None
    (folder / "model.tflite").write_bytes(converted)
    shutil.rmtree(saved)


def _keras(model: keras.Model, folder: Path) -> None:
    model.save(folder / "model.keras")


WRITERS = {"savedmodel": _savedmodel, "tflite": _tflite, "keras": _keras}
MODEL_FILES = {"savedmodel": "saved_model.pb", "tflite": "model.tflite", "keras": "model.keras"}


@dataclass
class ExportResult:
    target: Path
    format: str
    image_size: int
    classes: int
    folds: int

    def text(self) -> str:
        model = self.target / MODEL_FILES[self.format]
        size = sum(f.stat().st_size for f in self.target.rglob("*") if f.is_file()) / 1e6
        folds = f", the average of {self.folds} folds" if self.folds > 1 else ""
        return (
            f"exported {model} ({size:.1f} MB{folds}): uint8 RGB images of {self.image_size}x{self.image_size} px "
            f"in, {self.classes} probabilities out, in the order of {self.target / 'classes.json'}"
        )


def _under_tensorflow(predictor: Predictor, target: Path, force: bool) -> ExportResult:
    """The same export by `dogbreeds export` under the TensorFlow backend, in a process of its own."""
    command = [sys.executable, "-m", "dogbreeds", "export", "--run", str(predictor.run.path), "--format", "tflite"]
    command += ["--out", str(target), *(["--force"] if force else [])]
    done = subprocess.run(command, env={**os.environ, "KERAS_BACKEND": "tensorflow"}, capture_output=True, text=True)
    if done.returncode != 0:
        said = (done.stderr.strip().splitlines() or ["no message"])[-1].removeprefix("error: ")
        raise DogbreedsError(f"the TFLite export under TensorFlow failed: {said}")
    record = json.loads((target / RECORD).read_text())
    folds = max(1, len(predictor.folds))
    return ExportResult(target, "tflite", record["image_size"], len(predictor.classes), folds)


def export(run: str | Path | None, format: str, out: str | Path | None = None, *, force: bool = False) -> ExportResult:
    """Write the run's serving model as `format` into the folder `out` (default: RUN/export-FORMAT)."""
    if format not in FORMATS:
        raise DogbreedsError(f"--format must be one of {', '.join(FORMATS)}, got {format!r}")
    predictor = Predictor.open(run, calibration=False)
    target = Path(out) if out is not None else predictor.run.path / f"export-{format}"
    claim_output(target, force=force, ours=lambda path: (path / RECORD).is_file(), what=EXPORT, folder=True)
    if format == "tflite" and keras.backend.backend() == "jax":
        return _under_tensorflow(predictor, target, force)
    with track(f"exporting {predictor.run.path} as {format}"):  # no steps to count: its start and its seconds
        model = serving_model(predictor)
        folder = temporary_sibling(target)
        record = {"run": str(predictor.run.path), "format": format, "image_size": model.input_shape[1]}
        inside = predictor.run.path.resolve() in target.resolve().parents  # the default: RUN/export-FORMAT
        try:
            with predictor.run.lock() if inside else nullcontext():
                folder.mkdir(parents=True)
                WRITERS[format](model, folder)
                (folder / "classes.json").write_text(json.dumps(predictor.classes, indent=1))
                (folder / RECORD).write_text(json.dumps(record, indent=1))
                replace_folder(folder, target)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
    return ExportResult(target, format, model.input_shape[1], len(predictor.classes), max(1, len(predictor.folds)))
