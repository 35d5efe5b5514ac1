"""Pictures of a run: loss and accuracy per epoch, both phases on one axis."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from dogbreeds.runs import temporary_sibling  # noqa: E402


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
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    tmp = temporary_sibling(out)
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(out)
    return out
