"""Fidelity against the guidance scale for a trained run: sampling only, no retraining.

    python benchmarks/cfg_sweep.py --run . --config config/config.yaml config/presets/study.yaml \
        --scales 1 2 4 8 [--per-user 8] [--steps 25] [--interval-start 0.11]

In a folder where a run finished (`results/dit/dit.pt`, `results/vae/vavae.pt`,
`results/dataset/manifest.csv`) with the config files it ran with (merged in order, as Snakemake
does), draws `--per-user` samples per user at each guidance scale with the
`sample` stage's sampler and seed, and prints the share recognised as their user by the DiT fidelity
probe's two judges (the evaluation recipe, seed 0): one trained on real train images (what
`evaluate_generation` calls fidelity) and one trained on the VA-VAE's reconstructions of them
(what the DiT alone loses). Samples go through the run's `decode` steps as the sample stage
writes them (with `results/vae/decoder_noise.json` when decode.noise is on). A few minutes on 2
CPU cores for the study preset at 4 scales.
Measured sweeps: docs/identity-study.md.
"""

import argparse
import json
import time
from pathlib import Path

import torch
import yaml

from mdgen.config import deep_update, load_config
from mdgen.data.observation import load_noise, noise_rng, Observation
from mdgen.evaluation.classifier import predict, Recipe
from mdgen.evaluation.identity import judge_view, probe_judges
from mdgen.models.lightningdit import load_dit
from mdgen.models.vavae import load_vavae
from mdgen.sampling import sample_user


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, default=Path("."), help="the folder the run's results/ is in")
    p.add_argument("--scales", type=float, nargs="+", default=[1.0, 2.0, 4.0, 8.0])
    p.add_argument("--per-user", type=int, default=8)
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the run's sample config)")
    p.add_argument("--interval-start", type=float, default=None, help="cfg_interval_start (default: the run's)")
    p.add_argument("--config", nargs="+", default=["config/config.yaml"], help="the run's config files, in order")
    args = p.parse_args(argv)
    results = args.run / "results"
    model, dit_config = load_dit(results / "dit" / "dit.pt")
    vae = load_vavae(results / "vae" / "vavae.pt", use_vf=None).eval()
    merged = {}
    for path in args.config:
        merged = deep_update(merged, yaml.safe_load(Path(path).read_text()))
    config = load_config(json.dumps(merged), "data", "sample", "evaluation", "decode")
    noise_file = results / "vae" / "decoder_noise.json"
    observation = Observation.from_config(config, load_noise(noise_file if noise_file.exists() else None))
    rng = noise_rng("samples", config["sample"]["seed"])
    settings = dict(config["sample"])
    settings["num_sampling_steps"] = args.steps or settings["num_sampling_steps"]
    if args.interval_start is not None:
        settings["cfg_interval_start"] = args.interval_start
    stats = dit_config["latent_stats"]
    mean, std = (torch.tensor(stats[key]).view(-1, 1, 1) for key in ("mean", "std"))
    shape = tuple(dit_config["model"][key] for key in ("in_channels", "input_size", "input_size"))
    users = dit_config["model"]["num_classes"]

    start = time.perf_counter()
    recipe = Recipe(**config["evaluation"]["classifier"])
    judges = probe_judges(str(results / "dataset" / "manifest.csv"), vae, config["data"], recipe, seed=0)
    print(f"judges trained in {time.perf_counter() - start:.0f} s; {args.per_user} samples per user, {users} users")
    print("| cfg scale | fidelity (real judge) | fidelity (reconstruction judge) | seconds |\n|---|---|---|---|")
    for scale in args.scales:
        start = time.perf_counter()
        arrays, labels = [], []
        with torch.no_grad():
            for user in range(users):
                images = sample_user(model, vae, user, args.per_user, settings | {"cfg_scale": scale}, shape, mean, std)
                arrays += observation(images, rng)
                labels += [user] * args.per_user
        images, labels = judge_view(arrays, recipe.size), torch.tensor(labels)
        real, recon = (
            (predict(judges[name], images)[0] == labels).float().mean().item()
            for name in ("fidelity", "fidelity_recon_judge")
        )
        print(f"| {scale:g} | {real:.3f} | {recon:.3f} | {time.perf_counter() - start:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
