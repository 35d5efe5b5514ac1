"""Pictures of a run: training history, confusion matrix, validation examples, reliability, and
photos under the Grad-CAM heat map of a breed.

Each is meant to be read at a glance: a title saying what it shows, labelled axes, a legend,
and at 120 classes only the names worth reading. Files are written atomically.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.cm import ScalarMappable  # noqa: E402
from matplotlib.colors import Normalize, PowerNorm  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from PIL import Image, ImageOps  # noqa: E402

from dogbreeds.files import temporary_sibling  # noqa: E402

RIGHT, WRONG = "#1a7f37", "#c62828"  # green and red that stay apart in greyscale print too
HEAT, HEAT_ALPHA = "jet", 0.45  # Grad-CAM's usual colours (blue: nothing for the breed, red: most), the photo showing


def _save(fig, out: Path, dpi: int = 100) -> Path:
    tmp = temporary_sibling(out)
    try:
        fig.savefig(tmp, dpi=dpi)
        tmp.replace(out)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return out


def plot_history(log: pd.DataFrame, out: Path, title: str = "") -> Path:
    """Two panels (loss, accuracy), training and validation, fine-tuning start marked."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    epochs = log["epoch"] + 1
    for ax, metric, label in ((axes[0], "loss", "log loss"), (axes[1], "accuracy", "accuracy")):
        ax.plot(epochs, log[metric], "o-", label="training")
        if f"val_{metric}" in log:
            ax.plot(epochs, log[f"val_{metric}"], "s-", label="validation")
        fine_tune = log.loc[log["phase"] == "fine_tune", "epoch"]
        if len(fine_tune) and len(fine_tune) < len(log):
            ax.axvline(fine_tune.iloc[0] + 0.5, color="grey", linestyle="--", label="fine-tuning starts")
        ax.set(xlabel="epoch", ylabel=label, title=f"{label} per epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, out)


def plot_confusion(
    matrix: np.ndarray,
    classes: list[str],
    out: Path,
    *,
    title: str = "",
    pairs: list[tuple[str, str]] = (),
    label_worst: int = 20,
) -> Path:
    """Row-normalised confusion matrix, breeds sorted worst accuracy first.

    Up to 40 classes every breed is named; beyond that only the `label_worst` worst breeds
    and those of `pairs` (the most-confused pairs, whose cells are framed) are, so the names
    stay legible. A square-root colour scale keeps the few-image mistakes visible.
    """
    n = len(classes)
    totals = matrix.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.nan_to_num(matrix / totals[:, None])
    accuracy = np.where(totals > 0, np.diag(share), np.nan)  # a breed with no images has none
    order = np.lexsort((np.arange(n), np.nan_to_num(accuracy, nan=2.0)))  # worst first, empty rows last
    shown = share[np.ix_(order, order)]
    if n <= 40:
        labelled = np.arange(n)
    else:
        wanted = {breed for pair in pairs for breed in pair}
        labelled = np.array([i for i, c in enumerate(order) if i < label_worst or classes[c] in wanted])
    size = 6 + n * 0.06
    fig, ax = plt.subplots(figsize=(size + 2.5, size))
    image = ax.imshow(shown, cmap="Blues", norm=PowerNorm(0.5, vmin=0, vmax=1), interpolation="nearest")
    font = 9 if n <= 20 else 7 if n <= 40 else 6.5
    names = [f"{c} ({a:.0%})" if totals[i] else f"{c} (no images)" for i, (c, a) in enumerate(zip(classes, accuracy))]
    ax.set_yticks(labelled, [names[order[i]] for i in labelled], fontsize=font)
    ax.set_xticks(labelled, [classes[order[i]] for i in labelled], fontsize=font, rotation=90)
    if n <= 15:
        counts = matrix[np.ix_(order, order)]
        for (row, col), count in np.ndenumerate(counts):
            if count:
                ax.text(
                    col,
                    row,
                    str(count),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if shown[row, col] > 0.5 else "black",
                )
    position = {c: i for i, c in enumerate(order)}
    index = {breed: i for i, breed in enumerate(classes)}
    framed = False
    for a, b in pairs:
        for row, col in ((index[a], index[b]), (index[b], index[a])):
            if matrix[row, col]:
                ax.add_patch(
                    Rectangle(
                        (position[col] - 0.5, position[row] - 0.5),
                        1,
                        1,
                        fill=False,
                        edgecolor=WRONG,
                        linewidth=1.5,
                        label=None if framed else f"the {len(pairs)} most-confused pair{'s' if len(pairs) > 1 else ''}",
                    )
                )
                framed = True
    if framed:  # in the figure's free bottom-left corner, where it hides no cell and no name
        fig.legend(loc="lower left", fontsize=9, frameon=False)
    note = "" if n <= 40 else f"; named: the {label_worst} worst breeds and those of the most-confused pairs"
    ax.set_xlabel(f"predicted breed{note}")
    ax.set_ylabel("true breed (accuracy), worst first")
    ax.set_title(title or f"Confusion matrix, {int(matrix.sum())} validation images", loc="left")
    bar = fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02)
    bar.set_label("share of the true breed's images (square-root scale)")
    fig.tight_layout(rect=(0, 0.03 if framed else 0, 1, 1))
    return _save(fig, out, dpi=140 if n > 40 else 100)


def _thumbnail(path: str, size: int = 256) -> Image.Image:
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image).convert("RGB")
        image.thumbnail((size, size))
        return image


def _under_heat(ax, photo: Image.Image, heat_map: np.ndarray | None):
    """The photo, and the heat map (values 0 to 1) stretched over all of it: the network saw the
    whole photo squeezed into its square, so each cell of the map covers the same share of the photo."""
    ax.imshow(photo)
    if heat_map is None:
        return None
    width, height = photo.size
    extent = (-0.5, width - 0.5, height - 0.5, -0.5)
    return ax.imshow(
        heat_map, cmap=HEAT, alpha=HEAT_ALPHA, vmin=0, vmax=1, interpolation="bilinear", extent=extent
    )


def plot_examples(
    paths: list[str],
    truth: list[str],
    truth_probability: np.ndarray,
    predicted: list[str],
    predicted_probability: np.ndarray,
    out: Path,
    *,
    title: str = "",
    columns: int = 6,
    heat_maps: list[np.ndarray] | None = None,
) -> Path:
    """A grid of images, each titled with its true and predicted breed and their probabilities;
    with `heat_maps`, each under its map (Grad-CAM of the predicted breed)."""
    rows = max(1, -(-len(paths) // columns))
    top = 0.5 if heat_maps is None else 0.85  # inches above the grid: the title (and the legend's own line)
    height = 3.0 * rows + 0.4 + top
    fig, axes = plt.subplots(rows, columns, figsize=(2.7 * columns, height), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    maps = heat_maps if heat_maps is not None else [None] * len(paths)
    for ax, path, t, tp, p, pp, heat_map in zip(
        axes.flat, paths, truth, truth_probability, predicted, predicted_probability, maps
    ):
        _under_heat(ax, _thumbnail(path), heat_map)
        right = t == p
        label = f"true and predicted:\n{t} ({pp:.0%})" if right else f"true: {t} ({tp:.0%})\npredicted: {p} ({pp:.0%})"
        ax.set_title(label, fontsize=8.5, color=RIGHT if right else WRONG)
        for spine in ax.spines.values():
            spine.set(visible=True, color=RIGHT if right else WRONG, linewidth=3)
        ax.set(xticks=[], yticks=[])
        ax.axis("on")
    handles = [Patch(color=WRONG, label="wrong prediction"), Patch(color=RIGHT, label="right prediction")]
    if heat_maps is None:
        fig.legend(handles=handles, loc="upper right", ncol=2, fontsize=9, frameon=False)
    else:
        where = "where the network looked: Grad-CAM of the predicted breed, from blue (nothing) to red (most)"
        handles.append(Patch(color=plt.get_cmap(HEAT)(0.9), alpha=HEAT_ALPHA, label=where))
        below_title = (0.005, 1 - 0.4 / height)
        fig.legend(handles=handles, loc="upper left", bbox_to_anchor=below_title, ncol=3, fontsize=9, frameon=False)
    fig.suptitle(title, x=0.01, ha="left", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 1 - top / height))
    return _save(fig, out)


def plot_explanation(path: str, heat_map: np.ndarray, out: Path, *, title: str, caption: str) -> Path:
    """The photo as it is beside the photo under the heat map of one breed, so that the dog is
    seen unhidden too, with a colour bar; `title` above both, `caption` over the heat map."""
    photo = _thumbnail(path, size=512)
    fig, (plain, heated) = plt.subplots(1, 2, figsize=(10, 4.6), layout="constrained")
    plain.imshow(photo)
    plain.set_title("the photo", fontsize=10)
    _under_heat(heated, photo, heat_map)
    heated.set_title(caption, fontsize=10)
    for ax in (plain, heated):
        ax.set(xticks=[], yticks=[])
    scale = ScalarMappable(Normalize(0, 1), HEAT)  # the colours at full strength, not as blended
    fig.colorbar(scale, ax=[plain, heated], fraction=0.025, pad=0.01, label="Grad-CAM: share of the map's peak")
    fig.suptitle(title, x=0.01, ha="left", fontsize=11)
    return _save(fig, out)


def plot_reliability(curves: dict[str, dict], out: Path, *, title: str = "") -> Path:
    """Accuracy against confidence per bin for each labelled set of predictions, and the counts.

    `curves` maps a label ("before calibration") to `calibration.reliability(...)`'s result.
    """
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 7.5), sharex=True, gridspec_kw={"height_ratios": [3, 1.2]})
    top.plot([0, 1], [0, 1], "--", color="grey", label="perfectly calibrated")
    width = 1.0 / (len(next(iter(curves.values()))["count"]) * (len(curves) + 1))
    for k, (label, bins) in enumerate(curves.items()):
        count = bins["count"]
        # A bin of two images says little: it gets a small dot and no say in the line.
        solid = count >= max(5, 0.01 * count.sum())
        (line,) = top.plot(
            bins["confidence"][solid], bins["accuracy"][solid], "-", label=f"{label}, ECE {bins['ece']:.3f}"
        )
        seen = count > 0
        top.scatter(
            bins["confidence"][seen],
            bins["accuracy"][seen],
            s=12 + 200 * count[seen] / count.max(),
            color=line.get_color(),
            alpha=0.8,
            zorder=3,
        )
        left = bins["edges"][:-1] + width * (k + 0.5)
        bottom.bar(left, count, width=width, align="edge", color=line.get_color(), label=label)
    top.set(
        ylabel="accuracy of the predictions in the bin",
        xlim=(0, 1),
        ylim=(0, 1.02),
        title=title or "Reliability: is a prediction made with confidence p right p of the time?",
    )
    top.text(0.01, 0.98, "dot area: images in the bin", transform=top.transAxes, va="top", fontsize=8, color="grey")
    top.grid(alpha=0.3)
    top.legend(loc="lower right")  # the corner a reliability curve never reaches
    bottom.set(xlabel="confidence (probability of the predicted breed), bins of 0.1", ylabel="images")
    bottom.grid(alpha=0.3, axis="y")
    bottom.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return _save(fig, out)


def plot_accuracy_curves(histories: dict[str, pd.DataFrame], out: Path, *, title: str = "") -> Path:
    """Validation accuracy per epoch of several models on one axis (training dashed)."""
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, (name, log) in enumerate(histories.items()):
        colour = f"C{i}"
        epochs = log["epoch"] - log["epoch"].iloc[0] + 1
        ax.plot(epochs, log["val_accuracy"], "o-", color=colour, label=f"{name} (validation)")
        ax.plot(epochs, log["accuracy"], "--", color=colour, alpha=0.6, label=f"{name} (training)")
    ax.set(xlabel="epoch", ylabel="accuracy", title=f"{title}: accuracy per epoch" if title else "accuracy per epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    return _save(fig, out)
