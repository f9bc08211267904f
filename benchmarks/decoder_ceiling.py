"""The decoder's ceiling for the sample metrics: what a perfect generator would score through this VA-VAE.

    python benchmarks/decoder_ceiling.py --manifest results/dataset/manifest.csv --vae results/vae/vavae.pt \
        --vae-eval results/vae/eval.json --config config/config.yaml [more config files] --out-dir results/ceiling \
        [--reconstructions results/vae/reconstructions.pt] [--decoder-noise results/vae/decoder_noise.json]

A generator that had learned the train split's distribution perfectly would draw latents like the
VA-VAE's latents of train images, and the decoder would turn them into the reconstructions of
those images. This script writes those reconstructions (posterior mean, every train image, through
the run's `decode` steps as samples are: colours onto the map, one draw of the decoder's noise) in the
sample stage's layout (`<out-dir>/samples/user_NN/sample_XXXX.png`) and runs `evaluate_generation`
on them as if they were samples (`<out-dir>/eval/generation.json`). Their fidelity, CAS, Fréchet
distance and precision/recall against real val are what the samples can reach at best with this
decoder. Each is a copy of a train image through the decoder, yet the memorisation check flags
almost none of them (0.001 on the study preset, session 17): the decoder moves an image further
from its original, in the judge's features, than 99 % of real val images sit from their nearest
train image, so that check cannot see a DiT that copies train latents. The second check, against
the train images' reconstructions (`--reconstructions`, evaluate_vae's), is the one that can: it
must flag (nearly) every one of these.
Several `--config` files are merged in order, as Snakemake merges `--configfile`s.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import yaml
from PIL import Image

from mdgen.config import deep_update, load_config
from mdgen.data.dataset import MicroDopplerDataset
from mdgen.data.observation import load_noise, noise_rng, NoiseModel, Observation
from mdgen.io import atomic_output
from mdgen.models.vavae import load_vavae
from mdgen.stages import evaluate_generation


def merged(paths: list[Path]) -> dict:
    config: dict = {}
    for path in paths:
        config = deep_update(config, yaml.safe_load(path.read_text()) or {})
    return config


@torch.no_grad()
def write_reconstructions(
    manifest: str, vae_path: Path, config: dict, out: Path, noise: NoiseModel | None = None, batch_size: int = 32
) -> int:
    """Every train image's reconstruction, through the run's `decode` steps as its samples are."""
    data = config["data"]
    colormap = data.get("colormap")
    observation = Observation.from_config(config, noise)
    rng = noise_rng("ceiling", config["sample"]["seed"])  # not the reconstructions' draw: a copy, not the same file
    images = MicroDopplerDataset(manifest, "train", data["size"], data["channels"], colormap=colormap)
    vae = load_vavae(vae_path, use_vf=None).eval()
    counts: dict[str, int] = {}
    for start in range(0, len(images), batch_size):
        items = [images[i] for i in range(start, min(start + batch_size, len(images)))]
        batch = torch.stack([item["image"] for item in items])
        decoded = observation(vae.decode(vae.encode(batch).mode()), rng)
        for item, image in zip(items, decoded):
            folder = out / item["user_id"]
            folder.mkdir(parents=True, exist_ok=True)
            index = counts.get(item["user_id"], 0)
            counts[item["user_id"]] = index + 1
            with atomic_output(folder / f"sample_{index:04d}.png") as tmp:
                Image.fromarray(image).save(tmp, format="PNG")
    return len(images)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", required=True)
    p.add_argument("--vae", type=Path, required=True)
    p.add_argument("--vae-eval", type=Path, required=True, help="results/vae/eval.json (the same judges)")
    p.add_argument("--config", type=Path, nargs="+", required=True)
    p.add_argument("--out-dir", type=Path, default=Path("results/ceiling"))
    p.add_argument(
        "--reconstructions",
        type=Path,
        default=None,
        help="results/vae/reconstructions.pt: also run the check for copied latents (it should flag nearly all)",
    )
    p.add_argument(
        "--decoder-noise",
        type=Path,
        default=None,
        help="results/vae/decoder_noise.json: the noise the run's samples get (needed with decode.noise)",
    )
    args = p.parse_args(argv)
    config = load_config(json.dumps(merged(args.config)), "data", "evaluation", "decode", "sample")
    if (args.out_dir / "samples").exists():  # never mix with (or delete) samples written before
        raise SystemExit(f"{args.out_dir / 'samples'} exists: remove it or choose another --out-dir")
    noise = load_noise(args.decoder_noise)
    count = write_reconstructions(args.manifest, args.vae, config, args.out_dir / "samples", noise)
    print(f"{count} reconstructions of the train split written to {args.out_dir / 'samples'}")
    return evaluate_generation.main(
        [
            "--manifest",
            args.manifest,
            "--samples",
            str(args.out_dir / "samples"),
            "--vae-eval",
            str(args.vae_eval),
            "--out-dir",
            str(args.out_dir / "eval"),
            "--config",
            json.dumps(config),
        ]
        + (["--reconstructions", str(args.reconstructions)] if args.reconstructions else [])
    )


if __name__ == "__main__":
    sys.exit(main())
