"""Where identity is lost: how often the evaluation classifier recognises a person in real images,
in the VA-VAE's reconstructions of them, and in generated samples.

Every decoded image, sample or reconstruction, passes through the VA-VAE's decoder, so the
real-trained classifier's accuracy on reconstructions of real val images is the ceiling that any
sample's fidelity can reach. Two judges answer two questions:

- the real judge (trained on real train images) on reconstructions of real val: do
  reconstructions still look like that person to a model of real data? (what augmentation needs)
- the reconstruction judge (trained on reconstructions of real train) on reconstructions of real
  val: how much identity do the latents hold at all, whatever the shift of the whole distribution?

    judges = train_judges(train_x, train_y, num_classes, recipe, seeds)
    recon_val = judge_view(reconstruct(vae, val_batches), recipe.size)
    table = reconstruction_identity(judges, train_y, val_x, val_y, recon_val, num_classes, recipe)
    save_judges("results/eval/judges.pt", judges, recipe, train_rows, num_classes, channels)  # evaluate_vae
    judges = load_judges("results/eval/judges.pt", recipe, seeds, train_rows, num_classes, channels)

The real judges are trained once per run, by evaluate_vae, and saved for evaluate_generation:
the same classifiers then measure reconstructions, samples and the real-only baseline.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from mdgen.data.dataset import class_label, MicroDopplerDataset, to_uint8
from mdgen.evaluation.classifier import as_judged, build_classifier, load_images, predict, Recipe, train_classifier
from mdgen.evaluation.study import summary
from mdgen.io import atomic_output


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


def train_judges(
    train_x: torch.Tensor, train_y: torch.Tensor, num_classes: int, recipe: Recipe, seeds: list[int]
) -> dict[int, nn.Module]:
    """The real judges: the evaluation classifier trained on real train images, one per seed."""
    return {seed: train_classifier(train_x, train_y, num_classes, recipe, seed) for seed in seeds}


def reconstruction_identity(
    judges: dict[int, nn.Module],
    train_y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    recon_val_x: torch.Tensor,
    num_classes: int,
    recipe: Recipe,
    recon_train_x: torch.Tensor | None = None,
) -> dict:
    """Accuracy on real val and on its reconstructions for the real judge of each seed, and (with
    recon_train_x, the reconstructions of the images the judges trained on, labelled train_y) of
    a reconstruction judge trained with the same seed; every image at the recipe's size, in [-1, 1]."""
    seeds = list(judges)
    real, reconstructions, recon_judge = [], [], []
    for seed, judge in judges.items():
        real.append(accuracy(judge, val_x, val_y))
        reconstructions.append(accuracy(judge, recon_val_x, val_y))
        if recon_train_x is not None:
            trained_on_reconstructions = train_classifier(recon_train_x, train_y, num_classes, recipe, seed)
            recon_judge.append(accuracy(trained_on_reconstructions, recon_val_x, val_y))
    table = {
        "judge": judge_name(recipe, seeds),
        "chance": 1 / num_classes,
        "real_val": summary(real),
        "reconstructions": summary(reconstructions),
    }
    if recon_train_x is not None:
        table["reconstruction_judge"] = summary(recon_judge)
    return table


def training_set_fingerprint(rows: list[dict]) -> str:
    """sha256 over the manifest rows' paths and contents: which images a judge learned from."""
    lines = sorted(f"{row['path']}\t{row['sha256']}" for row in rows)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def judges_record(recipe: Recipe, seeds: list[int], train_rows: list[dict], num_classes: int, channels: int) -> dict:
    """What defines a set of judges; a saved set is reused only where all of it matches."""
    return {
        "judge": judge_name(recipe, seeds),
        "recipe": asdict(recipe),
        "seeds": list(seeds),
        "num_classes": num_classes,
        "channels": channels,
        "train_images": len(train_rows),
        "train_fingerprint": training_set_fingerprint(train_rows),
    }


def save_judges(
    path: Path, judges: dict[int, nn.Module], recipe: Recipe, train_rows: list[dict], num_classes: int, channels: int
) -> None:
    """The real judges' weights with what defines them (`judges_record`), written atomically."""
    payload = judges_record(recipe, list(judges), train_rows, num_classes, channels)
    payload["state_dicts"] = {seed: model.state_dict() for seed, model in judges.items()}
    # Through a file object: torch.save names the archive inside after a path it is given, which
    # here is a random temporary name, and a rerun would then not write the same bytes.
    with atomic_output(Path(path)) as tmp, open(tmp, "wb") as file:
        torch.save(payload, file)


def load_judges(
    path: Path, recipe: Recipe, seeds: list[int], train_rows: list[dict], num_classes: int, channels: int
) -> dict[int, nn.Module]:
    """The judges `save_judges` wrote, in eval mode, if they are the ones this evaluation would
    train (same recipe, seeds, classes, channels and train images); otherwise SystemExit naming
    what differs."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    expected = judges_record(recipe, seeds, train_rows, num_classes, channels)
    differ = [key for key, value in expected.items() if saved.get(key) != value]
    if differ:
        found = "; ".join(f"{key}: {saved.get(key)!r} (expected {expected[key]!r})" for key in differ if key != "judge")
        raise SystemExit(
            f"{path} holds other judges than this evaluation trains ({found}): rerun evaluate_vae with the same "
            "data and evaluation settings"
        )
    judges = {}
    for seed in seeds:
        model = build_classifier(num_classes, channels, recipe)
        model.load_state_dict(saved["state_dicts"][seed])
        # The layout train_classifier leaves it in, so predictions equal the trained model's.
        judges[seed] = model.to(memory_format=torch.channels_last).eval()
    return judges


def save_reconstructions(
    path: Path, reconstructions: dict[str, list[np.ndarray]], rows: dict[str, list[dict]], size: int
) -> None:
    """The VA-VAE's reconstructions of the real splits (uint8 arrays as a sample PNG holds them,
    one list per split) as the judges see them: resized to `size` with LANCZOS, kept as uint8, with a
    fingerprint of the images they reconstruct. evaluate_generation compares samples with them to
    find samples that copy a train image's latent (`load_reconstructions`)."""
    payload = {"size": size, "splits": {}}
    for split, arrays in reconstructions.items():
        if len(arrays) != len(rows[split]):
            raise ValueError(f"{len(arrays)} reconstructions of {split} for its {len(rows[split])} images")
        resized = [np.asarray(_resized(Image.fromarray(array), size)) for array in arrays]
        payload["splits"][split] = {
            "images": len(arrays),
            "fingerprint": training_set_fingerprint(rows[split]),
            "pixels": torch.from_numpy(np.stack(resized)),
        }
    with atomic_output(Path(path)) as tmp, open(tmp, "wb") as file:  # a file object: see save_judges
        torch.save(payload, file)


def load_reconstructions(path: Path, rows: dict[str, list[dict]], size: int) -> dict[str, torch.Tensor]:
    """What `save_reconstructions` wrote, per split as the judges see it ((N, C, size, size) in
    [-1, 1], exactly as `judge_view` gives it), if it reconstructs these rows at this size;
    otherwise SystemExit naming what differs."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if saved["size"] != size:
        raise SystemExit(
            f"{path} holds reconstructions at {saved['size']} px, the judges see {size} px: rerun evaluate_vae "
            "with the same evaluation settings"
        )
    views = {}
    for split, split_rows in rows.items():
        entry = saved["splits"].get(split)
        if entry is None or entry["fingerprint"] != training_set_fingerprint(split_rows):
            found = "none" if entry is None else f"{entry['images']} other images"
            raise SystemExit(
                f"{path} does not reconstruct the manifest's {len(split_rows)} {split} images (it holds {found}): "
                "rerun evaluate_vae on this manifest"
            )
        views[split] = as_judged((Image.fromarray(array) for array in entry["pixels"].numpy()), size)
    return views


def _resized(image: Image.Image, size: int) -> Image.Image:
    """The resize `as_judged` applies (LANCZOS to size × size), done once for storage."""
    return image if image.size == (size, size) else image.resize((size, size), Image.LANCZOS)


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
