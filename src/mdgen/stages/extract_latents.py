"""Stage `extract_latents`: encode every spectrogram of the manifest once with the fine-tuned VA-VAE.

    python -m mdgen.stages.extract_latents --manifest results/dataset/manifest.csv --vae results/vae/vavae.pt \
        --out-dir results/latents --config config/config.yaml

Writes `<out-dir>/train.zarr` and `<out-dir>/val.zarr` (layout in `mdgen.data.latents`). Stores
posterior samples, as the official LightningDiT extraction does, drawn from a torch.Generator
seeded with `latents.seed` so a rerun gives the same latents; or posterior means with
`latents.sample_posterior: false`. No flips and no augmentation (a flip reverses time or negates
velocity). Both stores carry the per-channel mean and std of the train latents.

Each store is written into a hidden temporary folder next to it and renamed into place once it is
complete and checked against the manifest; folders left by an interrupted run are removed first.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from mdgen.config import load_config
from mdgen.data.dataset import class_label, MicroDopplerDataset
from mdgen.data.latents import (
    ChannelStats,
    LatentStoreWriter,
    open_latent_store,
    sha256_file,
    verify_latent_store,
)
from mdgen.data.validation import read_manifest
from mdgen.io import atomic_directory, remove_leftovers
from mdgen.models.vavae import load_vavae, VAVAE
from mdgen.progress import progress, say
from mdgen.training import device_from_config

SPLITS = ("train", "val")  # train first: its statistics go into both stores


@torch.inference_mode()
def encode(
    vae: VAVAE, loader: DataLoader, sample_posterior: bool, generator: torch.Generator, device: torch.device, desc: str
) -> Iterator[np.ndarray]:
    """Latents (B, C, h, w) float32 of the loader's images, batch by batch, in loader order."""
    for batch in progress(loader, desc=desc, unit="batch"):
        posterior = vae.encode(batch["image"].to(device))
        latents = posterior.sample(generator=generator) if sample_posterior else posterior.mode()
        yield latents.float().cpu().numpy()


def vae_model_config(path: str) -> dict:
    """config["model"] of a save_official checkpoint (the VAVAE kwargs), without reading its tensors."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return dict(checkpoint["config"]["model"])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", required=True)
    p.add_argument("--vae", required=True, help="the fine-tuned results/vae/vavae.pt")
    p.add_argument("--out-dir", type=Path, required=True, help="where train.zarr and val.zarr go")
    p.add_argument("--config", required=True, help="JSON/YAML text or file with the data and latents sections")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader processes decoding images")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = load_config(args.config, "data", "latents")
    size, channels, num_classes = config["data"]["size"], config["data"]["channels"], config["data"]["num_classes"]
    colormap = config["data"]["colormap"]
    settings = config["latents"]
    device = device_from_config(settings["accelerator"])

    datasets = {split: MicroDopplerDataset(args.manifest, split, size, channels, colormap=colormap) for split in SPLITS}
    labels = {split: [class_label(row["user_id"]) for row in d.rows] for split, d in datasets.items()}
    out_of_range = sorted({label for split_labels in labels.values() for label in split_labels if label >= num_classes})
    if out_of_range:
        raise SystemExit(
            f"{args.manifest} has users with labels {out_of_range}, but data.num_classes is {num_classes}: "
            f"expected users user_00 … user_{num_classes - 1:02d}; fix data.num_classes or the manifest"
        )

    vae = load_vavae(args.vae, use_vf=None).eval().to(device)
    vae_sha256 = sha256_file(args.vae)
    f = vae.downsample_factor
    latent_shape = (vae.embed_dim, size // f, size // f)
    mode = f"posterior samples (seed {settings['seed']})" if settings["sample_posterior"] else "posterior means"
    say(f"VA-VAE {args.vae} (sha256 {vae_sha256}) on {device}")
    say(
        f"Encoding {len(datasets['train'])} train / {len(datasets['val'])} val spectrograms ({size}² × {channels}"
        f"{f', the {colormap} map inverted to 1 channel' if colormap else ''}, "
        f"{len({r['user_id'] for d in datasets.values() for r in d.rows})} users) into {mode}: latents "
        f"{'×'.join(map(str, latent_shape))} {settings['dtype']}, {settings['chunk_size']} per chunk, "
        f"batch {settings['batch_size']}; writing {args.out_dir / 'train.zarr'} and {args.out_dir / 'val.zarr'}"
    )

    base_attrs = {
        "vae_sha256": vae_sha256,
        "vae_config": vae_model_config(args.vae),
        "image_size": size,
        "channels": channels,
        "colormap": colormap,
        "sample_posterior": settings["sample_posterior"],
        "dtype": settings["dtype"],
        "seed": settings["seed"],
    }
    # One generator for the whole run, train then val: the same settings give the same latents.
    generator = torch.Generator(device=device).manual_seed(settings["seed"])
    targets = {split: args.out_dir / f"{split}.zarr" for split in SPLITS}
    for target in targets.values():
        for leftover in remove_leftovers(target):
            say(f"Removed {leftover}, left by an interrupted run")

    start = time.perf_counter()
    with atomic_directory(targets["train"]) as train_tmp, atomic_directory(targets["val"]) as val_tmp:
        tmp_dirs = {"train": train_tmp, "val": val_tmp}
        writers, stats = {}, ChannelStats(latent_shape[0])
        for split in SPLITS:
            dataset = datasets[split]
            writers[split] = LatentStoreWriter(
                tmp_dirs[split],
                labels[split],
                [r["path"] for r in dataset.rows],
                settings["dtype"],
                settings["chunk_size"],
            )
            loader = DataLoader(dataset, batch_size=settings["batch_size"], shuffle=False, num_workers=args.num_workers)
            for latents in encode(vae, loader, settings["sample_posterior"], generator, device, desc=split):
                stored = writers[split].append(latents)
                if not np.isfinite(stored).all():
                    raise SystemExit(
                        f"non-finite latents in the {split} split (stored as {settings['dtype']}): "
                        f"the VAE output overflows or is broken; try latents.dtype float32 or check the VAE"
                    )
                if split == "train":
                    stats.update(stored)  # the statistics of the values as stored, in float64
        latent_stats = {"mean": stats.mean.tolist(), "std": stats.std.tolist()}
        for split in SPLITS:
            count_per_user = dict(sorted(Counter(r["user_id"] for r in datasets[split].rows).items()))
            writers[split].finish(
                {
                    **base_attrs,
                    **latent_stats,
                    "split": split,
                    "count_per_user": count_per_user,
                    "stats": "mean and std per channel over the train split (all samples and "
                    "positions); std is the population std (ddof=0)",
                }
            )
            # Re-read what was written, against a fresh read of the manifest, before it becomes the output.
            verify_latent_store(open_latent_store(tmp_dirs[split]), read_manifest(args.manifest, split), split)
        say(f"Checked both stores against {args.manifest}: counts per user, labels and path order match")
    elapsed = time.perf_counter() - start

    total = sum(len(d) for d in datasets.values())
    say(
        "Train latent statistics per channel (population std): mean "
        f"[{min(latent_stats['mean']):.3f}, {max(latent_stats['mean']):.3f}], std "
        f"[{min(latent_stats['std']):.3f}, {max(latent_stats['std']):.3f}]"
    )
    say(
        f"Encoded {total} spectrograms in {elapsed:.1f} s ({total / elapsed:.1f} images/s); wrote "
        f"{targets['train']} and {targets['val']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
