"""Where identity is lost: how often the evaluation classifier recognises a person in real images,
in the VA-VAE's reconstructions of them, and in generated samples.

Every decoded image, sample or reconstruction, passes through the VA-VAE's decoder, so the
real-trained classifier's accuracy on reconstructions of real val images is the ceiling that any
sample's fidelity can reach. Two judges answer two questions:

- the real judge (trained on real train images) on reconstructions of real val: do
  reconstructions still look like that person to a model of real data? (what augmentation needs)
- the reconstruction judge (trained on reconstructions of real train) on reconstructions of real
  val: how much identity do the latents hold at all, whatever the shift of the whole distribution?

    recon_val = judge_view(reconstruct(vae, val_batches), recipe.size)
    table = reconstruction_identity(train_x, train_y, val_x, val_y, recon_val, num_classes, recipe, seeds)
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from mdgen.data.dataset import class_label, MicroDopplerDataset, to_uint8
from mdgen.evaluation.classifier import as_judged, load_images, predict, Recipe, train_classifier
from mdgen.evaluation.study import summary


@torch.inference_mode()
def reconstruct(vae, batches: Iterable[torch.Tensor], colormap: str | None = None) -> list[np.ndarray]:
    """Reconstructions from the posterior means of image batches (B, C, H, W) in [-1, 1], as the
    uint8 arrays a sample PNG holds (through `colormap` when the models see magnitudes): what the
    decoder gives any image, rounded like a written file."""
    vae.eval()
    device = next(vae.parameters()).device
    arrays = []
    for batch in batches:
        arrays += to_uint8(vae.decode(vae.encode(batch.to(device)).mode()), colormap)
    return arrays


def judge_view(arrays: list[np.ndarray], size: int) -> torch.Tensor:
    """uint8 images as the classifier sees a file: resized to size × size with LANCZOS, in [-1, 1]
    (the same path load_images takes for a sample PNG)."""
    return as_judged((Image.fromarray(array) for array in arrays), size)


def judge_name(recipe: Recipe, seeds: list[int]) -> str:
    """What the identity table's judges are: tables from different judges must not be combined."""
    return f"evaluation classifier ({recipe.architecture}, {recipe.size} px) trained on real train, seeds {seeds}"


def accuracy(model, images: torch.Tensor, labels: torch.Tensor) -> float:
    return float((predict(model, images)[0] == labels).float().mean())


def reconstruction_identity(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    recon_val_x: torch.Tensor,
    num_classes: int,
    recipe: Recipe,
    seeds: list[int],
    recon_train_x: torch.Tensor | None = None,
) -> dict:
    """Accuracy on real val and on its reconstructions for the real judge of each seed, and (with
    recon_train_x) of the reconstruction judge; every image at the recipe's size, in [-1, 1]."""
    real, reconstructions, recon_judge = [], [], []
    for seed in seeds:
        judge = train_classifier(train_x, train_y, num_classes, recipe, seed)
        real.append(accuracy(judge, val_x, val_y))
        reconstructions.append(accuracy(judge, recon_val_x, val_y))
        if recon_train_x is not None:
            judge = train_classifier(recon_train_x, train_y, num_classes, recipe, seed)
            recon_judge.append(accuracy(judge, recon_val_x, val_y))
    table = {
        "judge": judge_name(recipe, seeds),
        "chance": 1 / num_classes,
        "real_val": summary(real),
        "reconstructions": summary(reconstructions),
    }
    if recon_train_x is not None:
        table["reconstruction_judge"] = summary(recon_judge)
    return table


# The steps an image takes from a real recording to a classifier trained on samples.
IDENTITY_STEPS = (
    ("real_val", "real val"),
    ("reconstructions", "VA-VAE reconstruction"),
    ("fidelity", "samples (fidelity)"),
    ("cas", "trained on samples (CAS)"),
)


def format_identity_table(rows: dict[str, dict]) -> str:
    """One line per generator: mean ± std of each step, for logs."""
    header = f"{'generator':>12}" + "".join(f"{label:>26}" for _, label in IDENTITY_STEPS)
    lines = [header]
    for generator, row in rows.items():
        cells = "".join(
            f"{row[key]['mean']:>19.3f} ± {row[key]['std']:.3f}" if row.get(key) else f"{'–':>26}"
            for key, _ in IDENTITY_STEPS
        )
        lines.append(f"{generator:>12}{cells}")
    return "\n".join(lines)


def probe_judges(manifest: str, vae, data: dict, recipe: Recipe, seed: int, batch_size: int = 32) -> dict:
    """The two judges of the DiT's fidelity probe, trained on all real train images of the manifest:
    {"fidelity": the real judge, "fidelity_recon_judge": the judge trained on the VA-VAE's
    reconstructions of them}. Samples pass the decoder like reconstructions do, so the second
    judge measures what the DiT alone loses."""
    colormap = data.get("colormap")
    train = MicroDopplerDataset(manifest, "train", data["size"], data["channels"], colormap=colormap)
    labels = torch.tensor([class_label(row["user_id"]) for row in train.rows])
    real = load_images([row["path"] for row in train.rows], data["channels"], recipe.size)
    batches = (batch["image"] for batch in DataLoader(train, batch_size=batch_size, shuffle=False))
    reconstructions = judge_view(reconstruct(vae, batches, colormap), recipe.size)
    return {
        "fidelity": train_classifier(real, labels, data["num_classes"], recipe, seed),
        "fidelity_recon_judge": train_classifier(reconstructions, labels, data["num_classes"], recipe, seed),
    }
