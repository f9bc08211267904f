"""The figures hold what they claim: checked by content (pixels where cells should be, bar heights,
labels), not by file size."""

import numpy as np
import pytest
from matplotlib.patches import Rectangle
from PIL import Image

from mdgen import plots

COLOURS = [(230, 30, 30), (30, 200, 30), (30, 30, 230)]


def cells_along(row: np.ndarray, colour) -> int:
    """How many separate runs of `colour` a line of pixels crosses."""
    hit = np.all(np.abs(row.astype(int) - colour) <= 2, axis=-1)
    return int(np.sum(hit[1:] & ~hit[:-1]) + hit[0])


def test_image_grid_puts_each_row_of_images_in_its_own_band(tmp_path):
    counts = [3, 2, 3]  # the second row is one image short: its last cell stays empty
    rows = [[np.full((16, 16, 3), colour, np.uint8)] * n for colour, n in zip(COLOURS, counts)]
    out = tmp_path / "grid.png"
    plots.image_grid(rows, ["user_00", "user_01", "user_02"], ["a", "b", "c"], out, cell_inches=1.0)
    pixels = np.asarray(Image.open(out).convert("RGB"))
    assert pixels.shape[:2] == (round((3 * 1.0 + 0.6) * 100), round((3 * 1.0 + 0.8) * 100))  # figsize × dpi 100
    centres = []
    for colour, count in zip(COLOURS, counts):
        ys = np.nonzero(np.all(np.abs(pixels.astype(int) - colour) <= 2, axis=-1).any(axis=1))[0]
        assert len(ys) > 30, colour  # a band of that colour, tens of pixels tall
        centres.append(ys.mean())
        assert cells_along(pixels[int(ys.mean())], colour) == count
    assert centres == sorted(centres)  # rows from top to bottom in the given order


@pytest.fixture
def figure(monkeypatch):
    """The figure a plot function draws, kept open instead of saved."""
    drawn = {}
    monkeypatch.setattr(plots, "save", lambda fig, out: drawn.setdefault("fig", fig))
    return drawn


def step(mean):
    return {"mean": mean, "std": 0.01, "runs": [mean]}


def test_identity_bars_follow_the_table(figure):
    steps = {"real_val": step(0.9), "reconstructions": step(0.3), "fidelity": step(0.2), "cas": step(0.1)}
    table = {
        "chance": 1 / 31,
        "generators": {"real_train": steps, "k4": {**steps, "fidelity": step(0.05)}},
        "labels": {"real_train": "all train images", "k4": "4 per user"},
    }
    plots.plot_identity(table, "unused.png")
    ax = figure["fig"].axes[0]
    bars = [patch for patch in ax.patches if isinstance(patch, Rectangle)]
    heights = sorted((round(bar.get_x(), 3), round(bar.get_height(), 3)) for bar in bars)
    assert [h for _, h in heights] == [0.9, 0.9, 0.3, 0.3, 0.2, 0.05, 0.1, 0.1]  # per step: all train, then k4
    assert [t.get_text() for t in ax.get_xticklabels()] == ["real val", "reconstruction", "samples", "CAS"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["chance", "all train images", "4 per user"]
    chance = [line for line in ax.get_lines() if line.get_linestyle() == ":"]
    assert chance and chance[0].get_ydata()[0] == pytest.approx(1 / 31)


def test_accuracy_against_ratio_starts_at_real_only(figure):
    results = {
        "num_classes": 31,
        "seeds": [0, 1, 2],
        "real_only": {"val_accuracy": step(0.92)},
        "augmented": [{"ratio": 0.5, "val_accuracy": step(0.93)}, {"ratio": 1.0, "val_accuracy": step(0.95)}],
        "synthetic_only": {"val_accuracy": step(0.4)},
    }
    plots.plot_accuracy_vs_ratio(results, "unused.png")
    ax = figure["fig"].axes[0]
    curve = ax.get_lines()[0]
    assert list(curve.get_xdata()) == [0.0, 0.5, 1.0] and list(curve.get_ydata()) == [0.92, 0.93, 0.95]
    levels = sorted(round(line.get_ydata()[0], 3) for line in ax.get_lines()[1:])
    assert levels[:2] == [round(1 / 31, 3), 0.4]  # chance and CAS as lines
    assert ax.get_title() == "Person identification (mean ± std over 3 seeds)"
