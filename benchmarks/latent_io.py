"""Latent I/O: extraction throughput, and reading latents item by item against the official format.

    python benchmarks/latent_io.py [--images 256] [--latents 10000] [--shard-size 2500] [--reads 5000]

(a) `python -m mdgen.stages.extract_latents` end to end (VAE load, PNG decoding, encoding, zarr writes,
    the check against the manifest) on synthetic 128×128×3 images with a VA-VAE of the default
    config. The weights are random: the speed does not depend on them.
(b) Reading `--latents` latents of 32×8×8 one item at a time in random order, as a DataLoader
    does: our LatentDataset (whole store in memory, and the chunked path) against LightningDiT's
    layout, safetensors shards holding `latents`, `latents_flip` and `labels`, read as its
    `ImgLatentDataset.__getitem__` does (a safe_open and get_slice per item).
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from mdgen.config import load_config
from mdgen.data.latents import LatentDataset, LatentStoreWriter
from mdgen.data.validation import user_id, validate_dataset, write_manifest
from mdgen.models.vavae import save_official, VAVAE, vavae_kwargs
from mdgen.stages import extract_latents

REPO = Path(__file__).resolve().parents[1]
USERS = 8


# ---------------------------------------------------------------------------------------------
# (a) Extraction
# ---------------------------------------------------------------------------------------------


def write_images(root: Path, count: int, size: int) -> None:
    """Smooth random colour images (a 16×16 pattern upsampled), 3/4 train and 1/4 val, USERS users."""
    rng = np.random.default_rng(0)
    for index in range(count):
        split = "val" if (index // USERS) % 4 == 3 else "train"
        folder = root / split / user_id(index % USERS)
        folder.mkdir(parents=True, exist_ok=True)
        pattern = Image.fromarray((rng.random((16, 16, 3)) * 255).astype(np.uint8))
        pattern.resize((size, size), Image.BICUBIC).save(folder / f"img_{index:05d}.png")


def extraction(work: Path, count: int) -> float:
    """Images per second of the extract_latents stage with the default config's VA-VAE."""
    config = load_config(str(REPO / "config" / "config.yaml"), "data", "vae")
    size, channels = config["data"]["size"], config["data"]["channels"]
    torch.manual_seed(0)
    vae = VAVAE(**vavae_kwargs(config))
    save_official(work / "vavae.pt", vae, {"model": vavae_kwargs(config), **config})
    write_images(work / "images", count, size)
    result = validate_dataset(
        work / "images", num_classes=USERS, channels=channels, size=size, max_pixels=config["data"]["max_pixels"]
    )
    if result.errors:
        raise RuntimeError(f"synthetic images failed validation: {result.errors[:3]}")
    write_manifest(result.rows, work / "manifest.csv")
    stage_config = {"data": {"size": size, "channels": channels, "num_classes": USERS}, "latents": {}}
    start = time.perf_counter()
    extract_latents.main(
        [
            "--manifest",
            str(work / "manifest.csv"),
            "--vae",
            str(work / "vavae.pt"),
            "--out-dir",
            str(work / "latents"),
            "--config",
            json.dumps(stage_config),
        ]
    )
    return count / (time.perf_counter() - start)


# ---------------------------------------------------------------------------------------------
# (b) Reading
# ---------------------------------------------------------------------------------------------


def write_ours(path: Path, latents: np.ndarray, labels: np.ndarray) -> None:
    writer = LatentStoreWriter(
        path, labels.tolist(), [f"img_{i:05d}.png" for i in range(len(labels))], "float32", chunk_size=64
    )
    for start in range(0, len(latents), 32):
        writer.append(latents[start : start + 32])
    values = latents.astype(np.float64)
    writer.finish(
        {
            "mean": values.mean(axis=(0, 2, 3)).tolist(),
            "std": values.std(axis=(0, 2, 3)).tolist(),
            "vae_sha256": "0" * 64,
            "vae_config": {},
            "image_size": 128,
            "channels": 3,
            "sample_posterior": True,
            "dtype": "float32",
            "split": "train",
            "count_per_user": {},
            "seed": 0,
        }
    )


def write_official(folder: Path, latents: np.ndarray, labels: np.ndarray, shard_size: int) -> None:
    """LightningDiT's extract_features.py layout: latents_rank00_shardNNN.safetensors."""
    folder.mkdir(parents=True)
    for shard, start in enumerate(range(0, len(latents), shard_size)):
        z = torch.from_numpy(latents[start : start + shard_size])
        save_file(
            {
                "latents": z,
                "latents_flip": z.flip(-1).contiguous(),
                "labels": torch.from_numpy(labels[start : start + shard_size]),
            },
            str(folder / f"latents_rank00_shard{shard:03d}.safetensors"),
            metadata={"total_size": str(len(z)), "dtype": str(z.dtype), "device": "cpu"},
        )


class OfficialLatentDataset:
    """LightningDiT's datasets/img_latent_dataset.py ImgLatentDataset, reading as its __getitem__ does."""

    def __init__(self, folder: Path, mean: torch.Tensor, std: torch.Tensor):
        self.files = sorted(folder.glob("*.safetensors"))
        self.img_to_file_map = {}
        for safe_file in self.files:
            with safe_open(str(safe_file), framework="pt", device="cpu") as f:
                for i in range(f.get_slice("labels").get_shape()[0]):
                    self.img_to_file_map[len(self.img_to_file_map)] = {"safe_file": str(safe_file), "idx_in_file": i}
        self._latent_mean, self._latent_std = mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1)
        self.latent_multiplier = 1.0

    def __len__(self):
        return len(self.img_to_file_map)

    def __getitem__(self, idx):
        img_info = self.img_to_file_map[idx]
        safe_file, img_idx = img_info["safe_file"], img_info["idx_in_file"]
        with safe_open(safe_file, framework="pt", device="cpu") as f:
            tensor_key = "latents" if np.random.uniform(0, 1) > 0.5 else "latents_flip"
            features = f.get_slice(tensor_key)
            labels = f.get_slice("labels")
            feature = features[img_idx : img_idx + 1]
            label = labels[img_idx : img_idx + 1]
        feature = (feature - self._latent_mean) / self._latent_std
        feature = feature * self.latent_multiplier
        return feature.squeeze(0), label.squeeze(0)


def items_per_second(dataset, order: np.ndarray) -> float:
    start = time.perf_counter()
    for index in order.tolist():
        dataset[index]
    return len(order) / (time.perf_counter() - start)


def reading(work: Path, count: int, shard_size: int, reads: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    latents = rng.normal(0.5, 2.0, size=(count, 32, 8, 8)).astype(np.float32)
    labels = rng.integers(0, 31, size=count).astype(np.int64)
    write_ours(work / "train.zarr", latents, labels)
    write_official(work / "official", latents, labels, shard_size)
    ours = LatentDataset(work / "train.zarr")
    chunked = LatentDataset(work / "train.zarr", memory_limit_mb=0)
    official = OfficialLatentDataset(work / "official", ours.mean, ours.std)
    order = rng.permutation(count)[:reads]
    for dataset in (ours, chunked, official):  # warm up: first reads pay for imports and page faults
        items_per_second(dataset, order[:50])
    return {
        "ours, in memory (random order)": items_per_second(ours, order),
        # A chunk read per item: fewer items keep the run short.
        "ours, chunked (random order, 1000 items)": items_per_second(chunked, order[:1000]),
        "ours, chunked (sequential)": items_per_second(
            LatentDataset(work / "train.zarr", memory_limit_mb=0), np.arange(min(reads, count))
        ),
        "official safetensors (random order)": items_per_second(official, order),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=256, help="synthetic 128×128×3 images to extract")
    p.add_argument("--latents", type=int, default=10_000, help="latents (32×8×8) in the read benchmark")
    p.add_argument("--shard-size", type=int, default=2_500, help="latents per official safetensors shard")
    p.add_argument("--reads", type=int, default=5_000, help="items read per dataset, in random order")
    args = p.parse_args()
    print(f"torch threads: {torch.get_num_threads()}")

    with tempfile.TemporaryDirectory() as tmp:
        # Reading first: after extraction torch's idle worker threads still spin for a while and
        # slow down zarr's I/O thread on a small machine.
        rates = reading(Path(tmp) / "read", args.latents, args.shard_size, args.reads)
        extraction_rate = extraction(Path(tmp) / "extract", args.images)

    print(
        f"\n(a) extract_latents end to end, {args.images} images 128×128×3, default VA-VAE: "
        f"{extraction_rate:.1f} images/s"
    )
    print(f"(b) reading {args.reads} of {args.latents} latents 32×8×8 item by item:")
    for name, rate in rates.items():
        print(f"    {name:<42}{rate:12,.0f} samples/s  ({1e6 / rate:8.1f} µs per sample)")
    ratio = rates["ours, in memory (random order)"] / rates["official safetensors (random order)"]
    print(f"    ours (in memory) / official: {ratio:.0f}× per sample (goal ≥ 10×)")


if __name__ == "__main__":
    main()
