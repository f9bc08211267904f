"""Figures the stages write: training curves and image grids."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no screen
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def read_metrics(path: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Lightning CSVLogger metrics as {name: (steps, values)}, skipping the empty cells."""
    series: dict[str, list[tuple[float, float]]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            step = float(row["step"])
            for name, value in row.items():
                if name not in ("step", "epoch") and value not in ("", None):
                    series.setdefault(name, []).append((step, float(value)))
    return {name: tuple(np.array(column) for column in zip(*points)) for name, points in series.items()}


def plot_curves(metrics_csv: str | Path, out_png: str | Path, title: str, panels: dict[str, list[str]],
                xlabel: str = "step") -> None:
    """One panel per group of metrics (against the logged step); groups with no data are left out."""
    metrics = read_metrics(metrics_csv)
    panels = {name: [m for m in names if m in metrics] for name, names in panels.items()}
    panels = {name: names for name, names in panels.items() if names}
    columns = max(1, min(2, len(panels)))
    rows = max(1, math.ceil(len(panels) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(6 * columns, 3.5 * rows), squeeze=False)
    for ax, (panel, names) in zip(axes.flat, panels.items()):
        for name in names:
            steps, values = metrics[name]
            ax.plot(steps, values, marker="o" if len(steps) < 20 else None, markersize=3, label=name)
        ax.set_title(panel)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    if not panels:
        axes[0, 0].text(0.5, 0.5, "no metrics logged yet", ha="center", va="center")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)


def image_grid(rows: list[list[np.ndarray]], row_labels: list[str], column_labels: list[str],
               out_png: str | Path, title: str = "", cell_inches: float = 1.8) -> None:
    """A labelled grid of uint8 images (H×W or H×W×3), e.g. input | reconstruction per user."""
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    figsize = (cell_inches * n_cols + 0.8, cell_inches * n_rows + 0.6)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=figsize, squeeze=False, layout="constrained")
    for i, row in enumerate(rows):
        for j in range(n_cols):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j < len(row):
                ax.imshow(row[j], cmap="gray" if row[j].ndim == 2 else None, vmin=0, vmax=255)
            else:
                ax.axis("off")
            if i == 0 and j < len(column_labels):
                ax.set_title(column_labels[j], fontsize=9)
            if j == 0:
                ax.set_ylabel(row_labels[i], fontsize=9)
    if title:
        fig.suptitle(title)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
