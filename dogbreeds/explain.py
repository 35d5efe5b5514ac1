"""`dogbreeds explain`: where the network looks, as Grad-CAM heat maps over the photos.

Grad-CAM (Selvaraju et al., 2017) takes a map the network makes of the image, weighs each of its
channels by the mean gradient of a breed's score over the map's positions, sums the channels and
keeps the positive part: the places whose features raise that breed. The score is the breed's
logit, the run's last Dense layer without its softmax: near a probability of 1 the softmax's
gradient vanishes, and with it the map.

The map is that of the last layer, in the order the network runs them (nested models entered),
whose output lays the image out and reaches the score: a CNN's last convolution block, 4-D
(images, rows, columns, channels); a transformer's tokens, 3-D, its class and register tokens
(the registry's `prefix_tokens`) dropped and its patch tokens laid out on their square grid. A
head that reads the class token only (ViT, CLIP) never sees its last block's patch tokens (their
gradient is exactly zero), so there the map moves back to the last layer whose patch tokens it
does see; one random image tells, as the zero comes from the wiring, not from the image.

The images go through the run's own loaders, as its predictions do; its predictions (flip TTA,
calibration, folds averaged: `inference.Predictor`) say which breed is mapped. A features run's
head reads pooled vectors of frozen backbones, built again as the feature cache built them
(`cache.pooled_backbone`): the gradient goes through the head and each backbone. Each backbone of
an ensemble and each fold of a k-fold run gives a map, scaled to a peak of 1; the run's map is
their mean.

The maths is keras.ops, the same under TensorFlow and JAX. The gradient at a map is the gradient
by a zero delta added to it (`split`): JAX differentiates by a function's inputs, not by a tensor
inside it. Taking that gradient is the one step each backend does its own way (`distribute.gradients`).
"""

from __future__ import annotations

import difflib
import math
import textwrap
from dataclasses import dataclass, replace
from itertools import islice
from pathlib import Path

import keras
import numpy as np
import pandas as pd
from keras import ops

from dogbreeds.cache import backbone_specs, pooled_backbone, view_loader
from dogbreeds.distribute import gradients
from dogbreeds.errors import DogbreedsError
from dogbreeds.files import claim_output, starts_with
from dogbreeds.images import checked_images, image_paths
from dogbreeds.inference import Predictor, make_loader
from dogbreeds.models import get_backbone
from dogbreeds.places import explain_dir
from dogbreeds.report import plot_explanation
from dogbreeds.runs import Run

BATCH = 8  # images per backward pass, which keeps every activation: fewer than a prediction step
SCORES = "breed"  # the softmax layer every run's model ends in (models.build_classifier, heads)
PNG = b"\x89PNG\r\n\x1a\n"
PICTURE = "{stem}-gradcam.png"


def prefix_tokens(backbone: str) -> int:
    """Tokens before a transformer's patch grid (its class and register tokens); a CNN has none."""
    preset = get_backbone(backbone).preset
    return preset.prefix_tokens if preset else 0


def layouts(model: keras.Model) -> list[list[keras.layers.Layer]]:
    """The layers whose output is one tensor laid out like the image (4-D maps, 3-D tokens), in
    the order the model runs them, each as its path through the nested models that hold it."""
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if isinstance(layer, keras.Model):
            found += [[layer, *path] for path in layouts(layer)]
            continue
        try:
            output = layer.output
        except (AttributeError, ValueError):  # a layer called twice has no one output
            continue
        if isinstance(output, keras.KerasTensor) and len(output.shape) in (3, 4):
            found.append([layer])
    return found


def _logits(dense: keras.layers.Dense) -> keras.layers.Dense:
    """The run's softmax layer without its softmax, on the same weights: the breeds' scores."""
    twin = keras.layers.Dense.from_config(dense.get_config() | {"activation": "linear", "name": f"{dense.name}_logits"})
    twin.build((None, dense.kernel.shape[0]))
    twin.set_weights(dense.get_weights())
    return twin


class Nudge(keras.layers.Layer):
    """A map plus a delta of the shape the map has when run, which is not always the one Keras
    works out (KerasHub's SigLIP counts a class token its tokens lack): the layers after the map
    are built on Keras' shape, the delta fed on the real one."""

    def __init__(self, **kwargs):
        super().__init__(autocast=False, **kwargs)

    def call(self, mapped, delta):
        return ops.add(mapped, delta)

    def compute_output_spec(self, mapped, delta):
        return keras.KerasTensor(mapped.shape, mapped.dtype)


def split(
    model: keras.Model,
    path: list[keras.layers.Layer] = (),
    *,
    scores: bool = False,
    nudge: keras.KerasTensor | None = None,
) -> keras.Model:
    """The model with more outputs: first the output of the layer at the end of `path` (reached
    through the nested models before it), then its own; with `scores`, its own output is the
    breeds' logits. Its layers are the model's own: keras.models.clone_model runs its graph again.

    With a `nudge` (the map as it is run: `as_run`), one more input after the model's own, a
    delta added to the map (the first output is then the map plus it). Fed zeros, it changes
    nothing, and the gradient by it is the gradient at the map: JAX differentiates by inputs."""
    inner = split(path[0], path[1:], nudge=nudge) if len(path) > 1 else None
    graph, inputs, delta = model, None, None
    if nudge is not None:
        delta = keras.Input(batch_shape=nudge.shape, dtype=nudge.dtype, name="delta")
        inputs = [keras.Input(batch_shape=x.shape, dtype=x.dtype, name=x.name) for x in model.inputs] + [delta]
        room = keras.Input(batch_shape=nudge.shape, dtype=nudge.dtype, name="delta")
        graph = keras.Model([*model.inputs, room], model.output)  # the model's graph, with room for the delta
    tapped, swapped = [], []

    def call(layer, *args, **kwargs):
        if path and layer is path[0]:
            if inner is None:
                mapped = output = layer(*args, **kwargs)
                if delta is not None:
                    mapped = output = Nudge()(mapped, delta)
            elif delta is not None:
                mapped, output = inner([*keras.tree.flatten(args[0]), delta], *args[1:], **kwargs)
            else:
                mapped, output = inner(*args, **kwargs)
            tapped.append(mapped)
            return output
        if scores and layer.name == SCORES:
            swapped.append(layer)
            return _logits(layer)(*args, **kwargs)
        return layer(*args, **kwargs)

    clone = keras.models.clone_model(graph, inputs, clone_function=lambda layer: layer, call_function=call)
    if scores and not swapped:
        raise DogbreedsError(f"model {model.name} has no layer named {SCORES}: not a model dogbreeds trained")
    return keras.Model(clone.inputs, [*tapped, clone.output])


def as_run(model: keras.Model, path: list[keras.layers.Layer]) -> keras.KerasTensor:
    """The output of the layer at the end of `path` (`split`) as the model makes it of one image
    of zeros: the shape (per image) and dtype the map has when run."""
    mapped = split(model, path)([ops.zeros((1, *x.shape[1:]), x.dtype) for x in model.inputs])[0]
    return keras.KerasTensor((None, *mapped.shape[1:]), keras.backend.standardize_dtype(mapped.dtype))


def grid(tensor, prefix: int):
    """A map as (images, rows, columns, channels) in float32: a CNN's as it is, a transformer's
    patch tokens (those after its `prefix` class and register tokens) on their square grid."""
    tensor = ops.cast(tensor, "float32")
    if len(tensor.shape) == 4:
        return tensor
    patches = tensor[:, prefix:]
    side = math.isqrt(patches.shape[1])
    if side * side != patches.shape[1]:
        raise DogbreedsError(
            f"a map of {tensor.shape[1]} tokens is not a square grid of patches after {prefix} class and register "
            "tokens: explain cannot lay it out"
        )
    return ops.reshape(patches, (-1, side, side, patches.shape[2]))


def _zeros(tensor: keras.KerasTensor, images: int):
    return ops.zeros((images, *tensor.shape[1:]), tensor.dtype)


def _reaches(tapped: keras.Model, prefix: int) -> bool:
    """Whether the tapped map's positions reach the output: the gradient of a random mix of the
    outputs on a random image is not zero everywhere on them."""
    image, delta = tapped.inputs
    inputs = [keras.random.normal((1, *image.shape[1:]), seed=0), _zeros(delta, 1)]

    def mix(outputs):
        output = ops.cast(outputs[1], "float32")
        return ops.sum(output * keras.random.normal(ops.shape(output), seed=1))

    _, (gradient,) = gradients(tapped, inputs, [1], mix)
    return bool(ops.convert_to_numpy(ops.any(grid(gradient, prefix) != 0)))


def at_map(model: keras.Model, prefix: int, *, scores: bool = False) -> tuple[keras.Model, str]:
    """The model split at its map and nudged there (`split`), and that layer's name: the last
    layer laid out like the image whose positions reach the output."""
    for path in reversed(layouts(model)):
        tapped = split(model, path, scores=scores, nudge=as_run(model, path))
        if _reaches(tapped, prefix):
            return tapped, path[-1].name
    raise DogbreedsError(f"no layer of {model.name} lays the image out and reaches its output: nothing to map")


def _cam(mapped, gradient, prefix: int) -> np.ndarray:
    """Grad-CAM: the channels weighed by their mean gradient, summed, the positive part kept,
    scaled to a peak of 1 (zero everywhere where nothing is positive)."""
    mapped, gradient = grid(mapped, prefix), grid(gradient, prefix)
    weights = ops.mean(gradient, axis=(1, 2), keepdims=True)
    cam = ops.relu(ops.sum(weights * mapped, axis=-1))
    return ops.convert_to_numpy(ops.divide_no_nan(cam, ops.max(cam, axis=(1, 2), keepdims=True)))


def _resized(maps: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    resized = ops.image.resize(maps[..., None], grid, interpolation="bilinear")  # the same grid: unchanged
    return ops.convert_to_numpy(resized)[..., 0]


def mean_map(maps: list[np.ndarray]) -> np.ndarray:
    """The mean of maps of the same images, (images, rows, columns) each, on the finest of their
    grids (the coarser ones resized)."""
    grid = (max(m.shape[1] for m in maps), max(m.shape[2] for m in maps))
    return np.mean([_resized(m, grid) for m in maps], axis=0)


@dataclass
class GradCam:
    """One trained model split at its maps: images in (one input per backbone), then a nudge per
    map (`split`); each backbone's map and the breeds' logits out; with the loaders that
    preprocess its images."""

    model: keras.Model
    prefixes: list[int]  # per map: its tokens before the patch grid
    loaders: list  # per input: the run's own (inference.make_loader, cache.view_loader)
    layers: list[str]  # per map: where it is taken ("mobilenet_v2's out_relu")

    def maps(self, images: pd.DataFrame, breeds: np.ndarray) -> np.ndarray:
        """(images, rows, columns): each image's map of its breed (an index into the classes),
        each backbone's scaled to a peak of 1, their mean."""
        steps = -(-len(images) // BATCH)  # the legacy loader's batches never end
        batches = zip(*(islice(iter(loader.prediction(images)), steps) for loader in self.loaders))
        found, done = [], 0
        deltas = self.model.inputs[len(self.loaders) :]
        for batch in batches:
            count = len(batch[0])
            wanted = ops.convert_to_tensor(breeds[done : done + count, None], "int32")
            done += count
            inputs = [ops.convert_to_tensor(np.asarray(x), "float32") for x in batch]

            def score(outputs):
                return ops.sum(ops.take_along_axis(ops.cast(outputs[-1], "float32"), wanted, axis=1))

            nudged = range(len(inputs), len(inputs) + len(deltas))
            outputs, at_maps = gradients(self.model, inputs + [_zeros(d, count) for d in deltas], nudged, score)
            found.append(mean_map([_cam(m, g, p) for m, g, p in zip(outputs[:-1], at_maps, self.prefixes)]))
        return np.concatenate(found)


def grad_cam(member: Predictor, backbones: dict | None = None) -> GradCam:
    """The GradCam of one trained model (a run, or a fold of a k-fold run). `backbones` keeps a
    features run's split backbones for its next fold, which shares them."""
    features = member.settings.features
    if features is None:
        loading = replace(member.settings.loading, batch_size=BATCH)
        prefix = prefix_tokens(loading.backbone)
        model, layer = at_map(member.run.load_model(image_size=loading.image_size), prefix, scores=True)
        return GradCam(model, [prefix], [make_loader(loading)], [f"{loading.backbone}'s {layer}"])
    backbones = {} if backbones is None else backbones
    specs = backbone_specs(features)
    parts = []
    for spec in specs:
        key = (spec.backbone, spec.weights, spec.image_size, spec.seed)
        if key not in backbones:
            backbones[key] = at_map(pooled_backbone(spec), prefix_tokens(spec.backbone))
        parts.append(backbones[key])
    inputs = [keras.Input(tapped.inputs[0].shape[1:]) for tapped, _ in parts]
    deltas = [keras.Input(batch_shape=tapped.inputs[1].shape, dtype=tapped.inputs[1].dtype) for tapped, _ in parts]
    outputs = [tapped([x, d]) for (tapped, _), x, d in zip(parts, inputs, deltas)]  # each: map, pooled vector
    vectors = [vector for _, vector in outputs]
    joined = keras.layers.Concatenate()(vectors) if len(vectors) > 1 else vectors[0]  # as ensemble_features
    (logits,) = split(member.run.load_model(), scores=True)([joined])
    model = keras.Model([*inputs, *deltas], [*(mapped for mapped, _ in outputs), logits])
    prefixes = [prefix_tokens(spec.backbone) for spec in specs]
    layers = [f"{spec.backbone}'s {layer}" for spec, (_, layer) in zip(specs, parts)]
    return GradCam(model, prefixes, [view_loader(spec, BATCH) for spec in specs], layers)


def heat_maps(
    predictor: Predictor, images: pd.DataFrame, breeds: np.ndarray, *, held_out: bool = False
) -> tuple[np.ndarray, list[str]]:
    """Each image's map of its breed, the mean over the run's models (a k-fold run's folds, one
    at a time), and where each map is taken. `held_out`: each labelled image (by its id) mapped
    by the fold that held it out only, the model whose prediction `evaluate` shows."""
    backbones: dict = {}
    total, count, layers = None, np.zeros(len(images)), []
    for member in predictor.folds or [predictor]:
        rows = np.arange(len(images))
        if held_out and predictor.folds:
            rows = np.flatnonzero(images["id"].isin(member.run.predictions(Run.val_predictions_file)["id"]))
        if not len(rows):
            continue
        cam = grad_cam(member, backbones)
        maps = cam.maps(images.iloc[rows], breeds[rows])
        if total is None:
            total = np.zeros((len(images), *maps.shape[1:]))
        total[rows] += _resized(maps, total.shape[1:])
        count[rows] += 1
        layers = cam.layers
    if total is None or not count.all():
        raise DogbreedsError(f"no fold of run {predictor.run.path} held out {images['id'].iloc[np.argmin(count)]}")
    return total / count[:, None, None], layers


def breed_index(breed: str, run: Run) -> int:
    """The class of `--breed` (any case, spaces for underscores), or the line naming where the breeds are."""
    classes = run.classes()
    wanted = breed.strip().lower().replace(" ", "_")
    if wanted in classes:
        return classes.index(wanted)
    close = difflib.get_close_matches(wanted, classes, n=3)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise DogbreedsError(
        f"--breed {breed!r} is not a breed of run {run.path}; {hint}its {len(classes)} breeds are listed in "
        f"{run.file(Run.classes_file)} (or `dogbreeds predict PHOTO --top {len(classes)}`)"
    )


def _pictures(paths: list[Path], folder: Path, force: bool) -> list[Path]:
    """Each photo's picture in `folder`, checked before any model runs: two photos of one name, a
    picture already there (without --force), or one that is not a PNG (--force replaces only
    explain's pictures) are refused."""
    if folder.exists() and not folder.is_dir():
        raise DogbreedsError(f"--out {folder} is a file; pass a folder")
    pictures = [folder / PICTURE.format(stem=path.stem) for path in paths]
    first: dict[Path, Path] = {}
    for path, picture in zip(paths, pictures):
        if picture in first:
            raise DogbreedsError(
                f"{first[picture]} and {path} would both be drawn in {picture}; rename one, or explain them apart "
                "with another --out"
            )
        first[picture] = path
    there = [picture for picture in pictures if picture.exists()]
    if there and not force:
        more = f" (and {len(there) - 1} more)" if len(there) > 1 else ""
        raise DogbreedsError(f"{there[0]} exists{more}; pass --force to replace it or --out another folder")
    for picture in pictures:
        claim_output(picture, force=True, ours=starts_with(PNG), what="a PNG picture")
    return pictures


@dataclass
class Explanation:
    path: Path
    breed: str  # whose map
    probability: float  # of that breed
    predicted: bool  # the breed the run predicts (else one asked for)
    top: list[tuple[str, float]]  # (breed, probability), most likely first
    heat_map: np.ndarray  # (rows, columns), 0 to 1
    picture: Path

    def text(self) -> str:
        which = "predicted" if self.predicted else f"asked for; predicted {self.top[0][0]}"
        return f"{self.picture}: {self.path}, map of {self.breed} ({self.probability:.1%}, {which})"


@dataclass
class ExplainResult:
    explanations: list[Explanation]
    layers: list[str]  # where each backbone's map is taken
    calibration_note: str

    def text(self) -> str:
        rows, columns = self.explanations[0].heat_map.shape
        lines = [f"Grad-CAM at {', '.join(self.layers)} ({rows}x{columns}); {self.calibration_note}"]
        return "\n".join(lines + [explanation.text() for explanation in self.explanations])


def explain_images(
    inputs: list[str | Path],
    run: str | Path | None = None,
    *,
    breed: str | None = None,
    out: str | Path | None = None,
    force: bool = False,
    top: int = 5,
    tta: bool = True,
    calibrate: bool = True,
) -> ExplainResult:
    """Each photo beside itself under the heat map of its predicted breed (or `breed`), the run's
    top breeds above, in OUT/<photo name>-gradcam.png (OUT: explain/)."""
    if top < 1:
        raise DogbreedsError(f"--top must be at least 1, got {top}")
    predictor = Predictor.open(run)
    classes = predictor.classes
    asked = None if breed is None else breed_index(breed, predictor.run)
    paths = image_paths(inputs)
    images = checked_images(paths)
    pictures = _pictures(paths, Path(out) if out is not None else explain_dir(), force)
    calibrated = predictor.calibrated(predictor.predict(images, tta=tta, desc="images"), calibrate=calibrate, tta=tta)
    probabilities = calibrated.probabilities
    ranked = np.argsort(-probabilities, axis=1, kind="stable")[:, : min(top, len(classes))]
    breeds = ranked[:, 0] if asked is None else np.full(len(paths), asked)
    maps, layers = heat_maps(predictor, images, breeds)
    explanations = []
    for i, path in enumerate(paths):
        best = [(classes[c], float(probabilities[i, c])) for c in ranked[i]]
        shown = Explanation(
            path, classes[breeds[i]], float(probabilities[i, breeds[i]]), breeds[i] == ranked[i, 0], best, maps[i],
            pictures[i],
        )  # fmt: skip
        said = "  ".join(f"{b} {p:.1%}" for b, p in best)
        title = textwrap.fill(f"{path.name}: {predictor.run.name} says {said}", 110)
        which = "predicted" if shown.predicted else "asked for"
        caption = f"Grad-CAM of {shown.breed} ({shown.probability:.1%}, {which})"
        pictures[i].parent.mkdir(parents=True, exist_ok=True)
        plot_explanation(str(path), maps[i], pictures[i], title=title, caption=caption)
        explanations.append(shown)
    return ExplainResult(explanations, layers, calibrated.note)
