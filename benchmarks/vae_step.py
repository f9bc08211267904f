"""The VA-VAE's training step: the official one against the one cut at the encoder's output.

    python benchmarks/vae_step.py [--config config/config.yaml] [--rounds 6] [--steps 12]
    python benchmarks/vae_step.py --tiny      # tiny sizes: what the tests run

The official step gets the adaptive VF (and GAN) weights with torch.autograd.grad of the
reconstruction loss, then back-propagates the whole loss: the perceptual network and the decoder
twice. mdgen's step (`VAVAETraining._autoencoder_backward_once`) back-propagates them once. This
times one autoencoder update (forward, loss, backward, Adam step) of each on random images of the
config's size and batch, with a random teacher of the config's shape (speed does not depend on
its weights), alternating the two in rounds so that a machine's drift hits both alike, and prints
the median milliseconds per step. Measured figures: docs/identity-study.md (session 13).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

from mdgen.config import deep_update
from mdgen.data.images import model_channels
from mdgen.models.teacher import SpectrogramTeacher
from mdgen.training.vavae import VAVAETraining

REPO = Path(__file__).resolve().parents[1]
TINY = {
    "data": {"size": 16},
    "teacher": {"width": 4, "size": 16},
    "vae": {"batch_size": 2, "ddconfig": {"resolution": 16, "ch": 32, "ch_mult": [1, 2], "z_channels": 4}},
}


def build(config: dict) -> tuple[VAVAETraining, torch.Tensor]:
    """The training module with a random teacher, and one batch of random images in [-1, 1]."""
    channels = model_channels(config["data"])
    teacher_config = config["teacher"]
    teacher = SpectrogramTeacher(
        config["data"]["num_classes"], channels, width=teacher_config["width"], size=teacher_config["size"]
    )
    module = VAVAETraining(config, teacher.requires_grad_(False).eval())
    # No Lightning trainer here: backward passes go straight to autograd.
    module.manual_backward = lambda loss, *args, **kwargs: loss.backward(*args, **kwargs)
    size = config["data"]["size"]
    images = torch.rand(config["vae"]["batch_size"], channels, size, size) * 2 - 1
    return module, images


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(REPO / "config" / "config.yaml"))
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--steps", type=int, default=12, help="steps of each step kind per round")
    p.add_argument("--tiny", action="store_true", help="tiny sizes, 1 round of 1 step (for the tests)")
    p.add_argument("--out", help="also write the medians here as JSON")
    args = p.parse_args(argv)
    config = yaml.safe_load(Path(args.config).read_text())
    if args.tiny:
        config = deep_update(config, TINY)
        args.rounds, args.steps = 1, 1
    torch.manual_seed(0)
    module, images = build(config)
    optimizer = torch.optim.Adam(module.vae.parameters(), lr=1e-4)

    kinds = {
        "official step": lambda: module._autoencoder_backward_official(images),
        "cut at the encoder": lambda: module._autoencoder_backward_once(images),
    }
    times = {name: [] for name in kinds}
    for step in kinds.values():  # warm-up
        optimizer.zero_grad()
        step()
    for _ in range(args.rounds):
        for name, step in kinds.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                optimizer.zero_grad()
                step()
                optimizer.step()
            times[name].append((time.perf_counter() - start) / args.steps * 1000)
    vae, data = config["vae"], config["data"]
    print(
        f"VA-VAE ch {vae['ddconfig']['ch']}, ch_mult {vae['ddconfig']['ch_mult']}, {data['size']} px, "
        f"batch {vae['batch_size']}, {torch.get_num_threads()} threads; {args.rounds} rounds of {args.steps} steps"
    )
    medians = {name: statistics.median(values) for name, values in times.items()}
    official_ms = medians["official step"]
    for name, values in times.items():
        rounds = ", ".join(f"{v:.0f}" for v in values)
        print(f"  {name:<20} {medians[name]:7.1f} ms per step ({medians[name] / official_ms:.2f}×; rounds: {rounds})")
    if args.out:
        Path(args.out).write_text(json.dumps({"ms_per_step": medians, "rounds": times}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
