"""Figures the stages write: training curves, image grids and the evaluation's plots."""

from __future__ import annotations

import csv
import math
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no screen
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from mdgen.data.dataset import to_uint8  # noqa: E402
from mdgen.io import atomic_output  # noqa: E402


def save(fig, out_png: str | Path) -> None:
    """Write a figure as PNG atomically (readers never see half a file) and free it."""
    try:
        with atomic_output(out_png) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
    finally:
        plt.close(fig)


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


def plot_curves(
    metrics_csv: str | Path, out_png: str | Path, title: str, panels: dict[str, list[str]], xlabel: str = "step"
) -> None:
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
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    if not panels:
        axes[0, 0].text(0.5, 0.5, "no metrics logged yet", ha="center", va="center")
    fig.suptitle(title)
    fig.tight_layout()
    save(fig, out_png)


def image_grid(
    rows: list[list[np.ndarray]],
    row_labels: list[str],
    column_labels: list[str],
    out_png: str | Path,
    title: str = "",
    cell_inches: float = 1.8,
) -> None:
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
    if title:  # wrapped to the figure's width (about 7 characters an inch), never cut off
        fig.suptitle(textwrap.fill(title, width=max(16, int(figsize[0] * 7))))
    save(fig, out_png)


def plot_accuracy_vs_ratio(results: dict, out_png: Path) -> None:
    """Real-val accuracy against the synthetic:real ratio (0 = real only), with CAS and chance as lines."""
    ratios = [0.0] + [r["ratio"] for r in results["augmented"]]
    protocols = [results["real_only"]] + results["augmented"]
    means = [p["val_accuracy"]["mean"] for p in protocols]
    stds = [p["val_accuracy"]["std"] for p in protocols]
    fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    ax.errorbar(ratios, means, yerr=stds, marker="o", capsize=4, label="real + synthetic (0 = real only)")
    cas = results["synthetic_only"]["val_accuracy"]
    ax.axhline(cas["mean"], color="tab:red", linestyle="--", label=f"synthetic only (CAS) {cas['mean']:.2f}")
    ax.axhspan(cas["mean"] - cas["std"], cas["mean"] + cas["std"], color="tab:red", alpha=0.1)
    ax.axhline(1 / results["num_classes"], color="grey", linestyle=":", label="chance")
    ax.set_xlabel("synthetic : real images per user")
    ax.set_ylabel("accuracy on the real val split")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"Person identification (mean ± std over {len(results['seeds'])} seeds)")
    save(fig, out_png)


def plot_per_user(fidelity: list, real_val: list, out_png: Path) -> None:
    """Per user: the real-trained classifier's accuracy on real val images and on generated samples."""
    users = np.arange(len(fidelity))
    fig, ax = plt.subplots(figsize=(max(6, 0.3 * len(users)), 4), layout="constrained")
    ax.bar(users - 0.2, [np.nan if v is None else v for v in real_val], 0.4, label="real val images")
    ax.bar(users + 0.2, [np.nan if v is None else v for v in fidelity], 0.4, label="generated samples")
    ax.set_xticks(users, [f"{u:02d}" for u in users], fontsize=7)
    ax.set_xlabel("user")
    ax.set_ylabel("classified as their user")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    ax.set_title("Per-user accuracy of the real-trained classifier")
    save(fig, out_png)


def plot_confusion(confusion: list, out_png: Path) -> None:
    """Row-normalised confusion of the samples: generated for (rows) vs classified as (columns)."""
    matrix = np.array(confusion, dtype=float)
    rows = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6.5, 5.5), layout="constrained")
    image = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, label="fraction of the user's samples")
    ax.set_xlabel("classified as user")
    ax.set_ylabel("generated for user")
    ax.set_title("Generated samples through the real-trained classifier")
    save(fig, out_png)


def plot_pairs(panels: list[tuple[str, dict, torch.Tensor]], sample_images: torch.Tensor, out_png: Path) -> None:
    """The memorisation checks' closest pairs: for each (title, memorisation output, the images it
    compared against), a row of samples over a row of their nearest reference images, the distance
    in red where it is below that check's threshold."""
    columns = max(len(memo["closest_pairs"]) for _, memo, _ in panels)
    fig = plt.figure(figsize=(1.6 * columns, 3.8 * len(panels)), layout="constrained")
    for subfig, (title, memo, references) in zip(np.atleast_1d(fig.subfigures(len(panels), 1)), panels):
        axes = subfig.subplots(2, columns, squeeze=False)
        for ax in axes.flat:
            ax.set_axis_off()
        for column, (sample, reference, distance) in enumerate(memo["closest_pairs"]):
            for ax, image in ((axes[0, column], sample_images[sample]), (axes[1, column], references[reference])):
                array = to_uint8(image[None])[0]
                ax.imshow(array, cmap="gray" if array.ndim == 2 else None)
            below = distance < memo["threshold"]
            axes[0, column].set_title(f"d = {distance:.2f}", fontsize=8, color="tab:red" if below else "black")
        subfig.suptitle(
            f"{title}: sample over its nearest (red: below the threshold {memo['threshold']:.2f})", fontsize=9
        )
    save(fig, out_png)


def plot_identity(table: dict, out_png: Path) -> None:
    """Where identity is lost: for each generator, bars for real val → VA-VAE reconstruction →
    samples (fidelity) → trained on samples (CAS), mean ± std over seeds, with chance as a line."""
    steps = [("real_val", "real val"), ("reconstructions", "reconstruction"), ("fidelity", "samples"), ("cas", "CAS")]
    generators = list(table["generators"])
    width = 0.8 / len(generators)
    fig, ax = plt.subplots(figsize=(6.5, 4), layout="constrained")
    positions = np.arange(len(steps))
    for i, name in enumerate(generators):
        row = table["generators"][name]
        means = [row[key]["mean"] for key, _ in steps]
        stds = [row[key]["std"] for key, _ in steps]
        bars = ax.bar(
            positions + (i - (len(generators) - 1) / 2) * width,
            means,
            width,
            yerr=stds,
            capsize=3,
            label=table["labels"].get(name, name),
        )
        ax.bar_label(bars, labels=[f"{m:.2f}" for m in means], fontsize=7, padding=2)
    ax.axhline(table["chance"], color="grey", linestyle=":", label="chance")
    ax.set_xticks(positions, [label for _, label in steps])
    ax.set_ylabel("accuracy of the real-trained classifier")
    ax.set_ylim(0, 1.1)
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title("Where identity is lost (real val split)")
    save(fig, out_png)


def plot_feature_maps(images: list[np.ndarray], maps: torch.Tensor, row_labels: list[str], out_png: Path) -> None:
    """Each image beside its feature map (N, D, h, w), the map's first three principal components
    (fitted over all shown positions together) as red, green and blue: positions that look alike
    to the encoder share a colour, across images too."""
    n, d, h, w = maps.shape
    positions = maps.permute(0, 2, 3, 1).reshape(-1, d).double()  # (N·h·w, D)
    positions = positions - positions.mean(dim=0)
    _, _, components = torch.linalg.svd(positions, full_matrices=False)
    projected = positions @ components[:3].T  # (N·h·w, ≤ 3)
    projected = torch.nn.functional.pad(projected, (0, 3 - projected.shape[1]))
    low, high = projected.min(dim=0).values, projected.max(dim=0).values
    colours = ((projected - low) / (high - low).clamp_min(1e-12) * 255).round().byte().reshape(n, h, w, 3)
    side = images[0].shape[0]
    rows = [
        [image, np.kron(colour.numpy(), np.ones((side // h, side // w, 1), dtype=np.uint8))]
        for image, colour in zip(images, colours)
    ]
    image_grid(rows, row_labels, ["input", "features (PCA → RGB)"], out_png, title="Teacher features")
