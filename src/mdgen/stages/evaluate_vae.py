"""Stage `evaluate_vae`: how well do the initial and the fine-tuned VA-VAE reconstruct the val split?

    python -m mdgen.stages.evaluate_vae --manifest results/dataset/manifest.csv --vae results/vae/vavae.pt \
        --config config/config.yaml --out-json results/vae/eval.json --out-png results/vae/reconstructions.png \
        --out-judges results/eval/judges.pt --out-reconstructions results/vae/reconstructions.pt

For both models: PSNR and SSIM (torchmetrics, images in [0, 1]), LPIPS when VGG16 weights are
available, and per-channel statistics of the latents (posterior means). The figure shows input,
initial and fine-tuned reconstruction side by side for several users. Whether the person survives:
the evaluation classifier trained on real train (the real judges, one per evaluation seed) on real
val and on its reconstructions; the judges are saved (--out-judges) so that evaluate_generation
measures the samples with the same classifiers instead of training them again, and so are the
reconstructions of real train and val as the judges see them (--out-reconstructions): a sample that
copies a train image's latent is the decoder's reconstruction of that image, not the image itself.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from mdgen.config import load_config
from mdgen.data.dataset import class_label, MicroDopplerDataset, to_uint8
from mdgen.data.images import off_colormap_fraction
from mdgen.data.observation import noise_rng, NoiseModel, Observation, save_noise
from mdgen.data.validation import read_manifest, SPLITS
from mdgen.evaluation.classifier import load_images, Recipe
from mdgen.evaluation.identity import (
    judge_view,
    reconstruct,
    reconstruction_identity,
    save_judges,
    save_reconstructions,
    train_judges,
)
from mdgen.io import atomic_output
from mdgen.losses import build_lpips, PerceptualLoss
from mdgen.models.vavae import load_vavae, VAVAE, vavae_kwargs
from mdgen.plots import image_grid
from mdgen.progress import progress, say
from mdgen.training import device_from_config

USERS_SHOWN = 8
# Resizing a colour-mapped file to data.size mixes neighbouring colours; jet's are mixed along its
# table, other maps' less so. More pixels off the map than this: the files are not in that map.
MAX_OFF_COLORMAP = 0.10


def initial_model(config: dict) -> tuple[VAVAE, str]:
    """The model fine-tuning started from: weight_init, or the seeded random initialisation."""
    kwargs = vavae_kwargs(config) | {"use_vf": None}
    torch.manual_seed(config["vae"]["seed"])
    model = VAVAE(**kwargs)
    weight_init = config["vae"]["weight_init"]
    if weight_init:
        model.load_pretrained(weight_init)
        return model, f"initial ({Path(weight_init).name})"
    return model, "initial (random init)"


def lpips_or_none(config: dict) -> PerceptualLoss | None:
    """LPIPS with real VGG16 weights, or None when there are none (a random backbone measures nothing)."""
    try:
        return PerceptualLoss(build_lpips(config["vae"]["perceptual"]["vgg16_weights"]))
    except FileNotFoundError as missing:
        say(f"LPIPS skipped: {missing}")
        return None


@torch.inference_mode()
def evaluate(
    model: VAVAE, loader: DataLoader, lpips: PerceptualLoss | None, label: str, colormap: str | None = None
) -> tuple[dict, list, dict]:
    """Metrics over the loader (on what the model sees: magnitudes for a colour map), every
    reconstruction (uint8, as a written file holds it), and (input, reconstruction) of the first
    image of every user."""
    model.eval()
    psnr, ssim, perceptual, latents, arrays, firsts = [], [], [], [], [], {}
    device = next(model.parameters()).device
    for batch in progress(loader, desc=label, unit="batch"):
        images = batch["image"].to(device)
        posterior = model.encode(images)
        reconstructions = model.decode(posterior.mode()).clamp(-1, 1)
        x, y = (images + 1) / 2, (reconstructions + 1) / 2
        psnr.append(peak_signal_noise_ratio(y, x, data_range=1.0, reduction="none", dim=(1, 2, 3)))
        ssim.append(structural_similarity_index_measure(y, x, data_range=1.0, reduction="none"))
        if lpips is not None:
            perceptual.append(lpips(images, reconstructions).flatten())
        latents.append(posterior.mode().transpose(0, 1).flatten(1))  # (C, B·h·w)
        arrays += to_uint8(reconstructions, colormap)
        for user, image, reconstruction in zip(batch["user_id"], images.cpu(), reconstructions.cpu()):
            firsts.setdefault(user, (image, reconstruction))
    latents = torch.cat(latents, dim=1).double().cpu()
    metrics = {
        "psnr": torch.cat(psnr).mean().item(),
        "ssim": torch.cat(ssim).mean().item(),
        "lpips": torch.cat(perceptual).mean().item() if perceptual else None,
        "latent_mean": latents.mean(dim=1).tolist(),
        "latent_std": latents.std(dim=1).tolist(),
    }
    return metrics, arrays, firsts


def identity(
    config: dict,
    manifest: str,
    vae: VAVAE,
    recon_val: list,
    batch_size: int,
    judges_path: Path | None,
    reconstructions_path: Path | None = None,
    noise_path: Path | None = None,
) -> dict:
    """Does the person survive the autoencoder? The evaluation classifier (real judge) on real val
    and on its reconstructions, and a judge trained on reconstructions (see mdgen.evaluation.identity).
    The reconstructions (`recon_val`: of val, as decoded) become files as samples do (the `decode`
    steps, whose noise model is fitted here on train and saved to `noise_path`). The real judges are
    saved to `judges_path` and the reconstructions of both splits, as the judges see them, to
    `reconstructions_path`, for evaluate_generation."""
    settings, data = config["evaluation"], config["data"]
    recipe = Recipe(**settings["classifier"])
    rows = {split: read_manifest(manifest, split) for split in SPLITS}
    labels = {split: torch.tensor([class_label(r["user_id"]) for r in rows[split]]) for split in SPLITS}
    real = {split: load_images([r["path"] for r in rows[split]], data["channels"], recipe.size) for split in SPLITS}
    judges = train_judges(real["train"], labels["train"], data["num_classes"], recipe, settings["seeds"])
    if judges_path is not None:
        save_judges(judges_path, judges, recipe, rows["train"], data["num_classes"], data["channels"])
    train = MicroDopplerDataset(manifest, "train", data["size"], data["channels"], colormap=data["colormap"])
    recordings, recon_train = [], []
    loader = DataLoader(train, batch_size=batch_size, shuffle=False)
    for batch in progress(loader, desc="reconstructing train", unit="batch"):
        recordings += to_uint8(batch["image"], data["colormap"])
        recon_train += reconstruct(vae, [batch["image"]], data["colormap"])
    observation = decoder_observation(config, recordings, recon_train, noise_path)
    rng = noise_rng("reconstructions")  # one fixed draw
    recon_train, recon_val = observation.observe(recon_train, rng), observation.observe(recon_val, rng)
    if reconstructions_path is not None:
        save_reconstructions(reconstructions_path, {"train": recon_train, "val": recon_val}, rows, recipe.size)
    return reconstruction_identity(
        judges,
        labels["train"],
        real["val"],
        labels["val"],
        judge_view(recon_val, recipe.size),
        data["num_classes"],
        recipe,
        recon_train_x=judge_view(recon_train, recipe.size),
    )


def check_decode_colormap(config: dict, images: MicroDopplerDataset) -> None:
    """Refuse a decode.colormap the val recordings (`images`, at data.size) are not drawn in: moving
    their samples' colours onto it would repaint them. With data.colormap validation has checked
    every file against that map already."""
    data, colormap = config["data"], config["decode"]["colormap"]
    if not colormap or data["colormap"]:
        return
    arrays = to_uint8(torch.stack([images[i]["image"] for i in range(len(images))]))
    off = off_colormap_fraction(np.stack(arrays), colormap)
    if off > MAX_OFF_COLORMAP:
        raise SystemExit(
            f"decode.colormap {colormap!r}: {off:.0%} of the val recordings' pixels (at data.size) are not "
            f"colours of that map (at most {MAX_OFF_COLORMAP:.0%} allowed for resizing): set decode.colormap to the "
            "map the files are drawn in, or null"
        )


def decoder_observation(config: dict, recordings: list, reconstructions: list, noise_path: Path | None) -> Observation:
    """The `decode` steps for this VA-VAE: the noise model fitted on the train split's recordings
    and reconstructions (uint8 arrays, as the files hold them) wherever the files have a magnitude,
    saved to `noise_path`."""
    settings = Observation(config["data"]["colormap"], config["decode"]["colormap"], config["data"]["channels"])
    noise, note = None, "the files have no magnitude (RGB without data.colormap or decode.colormap): no noise model"
    if settings.has_magnitude:
        noise = NoiseModel.fit(settings.magnitudes(recordings), settings.magnitudes(reconstructions))
        spread = ", ".join(f"{s:.1f}" for s in noise.std)
        note = f"recordings - reconstructions (posterior mean) of {noise.images} train images"
        say(f"Decoder noise (std of recording - reconstruction per band of 16 magnitude levels): {spread}")
    if noise_path is not None:
        save_noise(noise_path, noise, applied=config["decode"]["noise"], note=note)
    observation = Observation.from_config(config, noise)
    say(f"Reconstructions written as samples are: {observation.describe()}")
    if observation.noise is not None:
        say(
            "Note: under decode.noise the copy check through the decoder cannot see copied latents (a perfect "
            "copier's samples are flagged 5 %, not 100 %, on the study preset): docs/evaluation.md"
        )
    return observation


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", required=True)
    p.add_argument("--vae", required=True, help="the fine-tuned results/vae/vavae.pt")
    p.add_argument("--config", required=True, help="JSON/YAML text or file with the data and vae sections")
    p.add_argument("--out-json", type=Path, required=True)
    p.add_argument("--out-png", type=Path, required=True)
    p.add_argument(
        "--out-judges",
        type=Path,
        default=None,
        help="results/eval/judges.pt: the real judges, for evaluate_generation --judges (not written without it)",
    )
    p.add_argument(
        "--out-reconstructions",
        type=Path,
        default=None,
        help="results/vae/reconstructions.pt: the reconstructions of real train and val as the judges see them, for "
        "evaluate_generation's check for copied latents (not written without it)",
    )
    p.add_argument(
        "--out-noise",
        type=Path,
        default=None,
        help="results/vae/decoder_noise.json: the decoder's noise model fitted on train, for sample (decode.noise)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = load_config(args.config, "data", "vae", "evaluation", "decode")
    size, channels, colormap = config["data"]["size"], config["data"]["channels"], config["data"]["colormap"]
    dataset = MicroDopplerDataset(args.manifest, "val", size, channels, colormap=colormap)
    check_decode_colormap(config, dataset)  # before anything is trained
    loader = DataLoader(dataset, batch_size=config["vae"]["batch_size"], shuffle=False)
    device = device_from_config(config["vae"]["trainer"]["accelerator"])
    seen = f"{colormap} map inverted: PSNR and SSIM of the 1-channel magnitude" if colormap else f"× {channels}"
    say(f"Evaluating reconstructions of {len(dataset)} val spectrograms ({size}² {seen}) on {device}")

    lpips = lpips_or_none(config)
    lpips = lpips.to(device) if lpips is not None else None
    initial, initial_label = initial_model(config)
    models = {initial_label: initial.to(device), "fine-tuned": load_vavae(args.vae, use_vf=None).to(device)}
    results, arrays, reconstructions = {}, {}, {}
    for label, model in models.items():
        results[label], arrays[label], reconstructions[label] = evaluate(model, loader, lpips, label, colormap)
        m = results[label]
        say(
            f"{label:>28}: PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.4f}"
            + (f", LPIPS {m['lpips']:.4f}" if m["lpips"] is not None else "")
        )

    table = identity(
        config,
        args.manifest,
        models["fine-tuned"],
        arrays["fine-tuned"],
        config["vae"]["batch_size"],
        args.out_judges,
        args.out_reconstructions,
        args.out_noise,
    )
    say(f"Identity ({table['judge']}; chance {table['chance']:.3f}):")
    for key, label in (
        ("real_val", "real val"),
        ("reconstructions", "reconstructions of real val"),
        ("reconstruction_judge", "judge trained on reconstructions"),
    ):
        say(f"{label:>44}: {table[key]['mean']:.3f} ± {table[key]['std']:.3f}")

    args.out_json.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "split": "val",
        "images": len(dataset),
        "initial": results[initial_label],
        "initial_weights": initial_label,
        "fine_tuned": results["fine-tuned"],
        "vae": args.vae,
        "lpips_available": lpips is not None,
        "identity": table,
    }
    with atomic_output(args.out_json) as tmp:
        tmp.write_text(json.dumps(report, indent=2))

    users = sorted(reconstructions["fine-tuned"])
    shown = [users[i] for i in np.linspace(0, len(users) - 1, min(USERS_SHOWN, len(users))).round().astype(int)]
    rows = [
        to_uint8(
            torch.stack([reconstructions["fine-tuned"][u][0], *(reconstructions[label][u][1] for label in models)]),
            colormap,
        )
        for u in shown
    ]
    image_grid(rows, shown, ["input", *models], args.out_png, title="VA-VAE reconstructions (val)")
    also = (
        [f"the judges to {args.out_judges}"] * bool(args.out_judges)
        + [f"the reconstructions to {args.out_reconstructions}"] * bool(args.out_reconstructions)
        + [f"the decoder's noise model to {args.out_noise}"] * bool(args.out_noise)
    )
    say(f"Wrote {args.out_json}, {args.out_png}" + "".join(f", {item}" for item in also))
    return 0


if __name__ == "__main__":
    sys.exit(main())
