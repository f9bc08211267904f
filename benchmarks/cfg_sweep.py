"""Sampling settings of a trained run, judged as evaluate_generation judges its samples: no retraining.

    python benchmarks/cfg_sweep.py --run . --config config/config.yaml config/presets/study.yaml \
        --scales 1 2 4 8 [--interval-starts 0.11 0.35] [--per-user 8] [--steps 25]

In a folder where a run finished (`results/dit/dit.pt`, `results/vae/vavae.pt`,
`results/dataset/manifest.csv`) with the config files it ran with (merged in order, as Snakemake
does), draws `--per-user` samples per user for each guidance scale and guidance interval start
(`sample.cfg_interval_start`) with the `sample` stage's sampler and seed, and prints for each:
- the share recognised as their user by the DiT fidelity probe's two judges (the evaluation
  recipe, seed 0): one trained on real train images (what `evaluate_generation` calls fidelity)
  and one trained on the VA-VAE's reconstructions of them (what the DiT alone loses);
- in the real judge's features (those of evaluate_generation's real-only classifier of seed 0),
  the Fréchet distance and precision/recall against real val, and the share of samples flagged as
  copies of a train image; with `results/vae/reconstructions.pt` (evaluate_vae's), also the share
  flagged as copies of a train latent (closer to a train image's reconstruction than val's
  reconstructions are).
Precision and recall depend on how many samples there are: they compare with evaluate_generation's
at `--per-user` equal to the run's `sample.per_user`. Samples go through the run's `decode` steps as
the sample stage writes them (with `results/vae/decoder_noise.json` when decode.noise is on). A few
minutes on 2 CPU cores for the study preset at 4 settings of 8 samples per user.
Measured sweeps: docs/identity-study.md.
"""

import argparse
import itertools
import json
import time
from pathlib import Path

import torch
import yaml

from mdgen.config import deep_update, load_config
from mdgen.data.observation import load_noise, noise_rng, Observation
from mdgen.data.validation import read_manifest
from mdgen.evaluation.classifier import embed, load_images, predict, Recipe
from mdgen.evaluation.identity import judge_view, load_reconstructions, probe_judges
from mdgen.evaluation.metrics import frechet_distance, memorisation, precision_recall
from mdgen.models.lightningdit import load_dit
from mdgen.models.vavae import load_vavae
from mdgen.sampling import sample_user

COLUMNS = (
    "cfg scale",
    "interval start",
    "fidelity (real judge)",
    "fidelity (reconstruction judge)",
    "Fréchet distance",
    "precision",
    "recall",
    "copies",
    "copied latents",
    "seconds",
)


def reference_features(results: Path, judge, data: dict, size: int) -> dict[str, torch.Tensor]:
    """The real judge's features of real train and val and, where evaluate_vae wrote them, of their
    reconstructions ("decoded_train", "decoded_val")."""
    manifest = results / "dataset" / "manifest.csv"
    rows = {split: read_manifest(manifest, split) for split in ("train", "val")}
    images = {split: load_images([r["path"] for r in rows[split]], data["channels"], size) for split in rows}
    reconstructions = results / "vae" / "reconstructions.pt"
    if reconstructions.exists():
        images |= {f"decoded_{s}": x for s, x in load_reconstructions(reconstructions, rows, size).items()}
    return {name: embed(judge, x).double() for name, x in images.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, default=Path("."), help="the folder the run's results/ is in")
    p.add_argument("--scales", type=float, nargs="+", default=[1.0, 2.0, 4.0, 8.0])
    p.add_argument(
        "--interval-starts", type=float, nargs="+", default=None, help="cfg_interval_start values (default: the run's)"
    )
    p.add_argument("--per-user", type=int, default=8)
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the run's sample config)")
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
    settings = dict(config["sample"])
    settings["num_sampling_steps"] = args.steps or settings["num_sampling_steps"]
    starts = args.interval_starts or [settings["cfg_interval_start"]]
    stats = dit_config["latent_stats"]
    mean, std = (torch.tensor(stats[key]).view(-1, 1, 1) for key in ("mean", "std"))
    shape = tuple(dit_config["model"][key] for key in ("in_channels", "input_size", "input_size"))
    users = dit_config["model"]["num_classes"]
    evaluation = config["evaluation"]

    start = time.perf_counter()
    recipe = Recipe(**evaluation["classifier"])
    judges = probe_judges(str(results / "dataset" / "manifest.csv"), vae, config["data"], recipe, seed=0)
    real = reference_features(results, judges["fidelity"], config["data"], recipe.size)
    print(f"judges trained in {time.perf_counter() - start:.0f} s; {args.per_user} samples per user, {users} users")
    train_vs_val = precision_recall(real["val"], real["train"], k=evaluation["knn_k"])
    print(
        f"real train vs val (reference): Fréchet distance {frechet_distance(real['val'], real['train']):.2f}, "
        f"precision {train_vs_val['precision']:.3f}, recall {train_vs_val['recall']:.3f} (k={evaluation['knn_k']})"
    )
    print("| " + " | ".join(COLUMNS) + " |\n" + "|---" * len(COLUMNS) + "|")
    quantile = evaluation["memorisation_quantile"]
    for interval_start, scale in itertools.product(starts, args.scales):
        start = time.perf_counter()
        drawn = settings | {"cfg_scale": scale, "cfg_interval_start": interval_start}
        rng = noise_rng("samples", settings["seed"])  # each setting draws what the sample stage would
        arrays, labels = [], []
        with torch.no_grad():
            for user in range(users):
                images = sample_user(model, vae, user, args.per_user, drawn, shape, mean, std)
                arrays += observation(images, rng)
                labels += [user] * args.per_user
        images, labels = judge_view(arrays, recipe.size), torch.tensor(labels)
        real_judge, recon_judge = (
            (predict(judges[name], images)[0] == labels).float().mean().item()
            for name in ("fidelity", "fidelity_recon_judge")
        )
        features = embed(judges["fidelity"], images).double()
        pr = precision_recall(real["val"], features, k=evaluation["knn_k"])
        copies = memorisation(features, real["train"], real["val"], quantile)["fraction_flagged"]
        latents = "–"
        if "decoded_train" in real:
            flagged = memorisation(features, real["decoded_train"], real["decoded_val"], quantile)["fraction_flagged"]
            latents = f"{flagged:.3f}"
        cells = (
            f"{scale:g}",
            f"{interval_start:g}",
            f"{real_judge:.3f}",
            f"{recon_judge:.3f}",
            f"{frechet_distance(real['val'], features):.2f}",
            f"{pr['precision']:.3f}",
            f"{pr['recall']:.3f}",
            f"{copies:.3f}",
            latents,
            f"{time.perf_counter() - start:.0f}",
        )
        print("| " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
