"""Stage `sample`: new spectrograms for every user, from the LightningDiT and the VA-VAE decoder.

    python -m mdgen.stages.sample --dit results/dit/dit.pt --vae results/vae/vavae.pt --out-dir results/samples \
        --config config/config.yaml

For each user: noise → ODE sampler (Euler or Heun, time-shifted grid) with classifier-free guidance
→ latents de-normalised with the statistics of the store the DiT trained on → decoded images → the
`decode` steps (mdgen.data.observation: colours onto the files' colour map, the decoder's noise drawn
from --decoder-noise).
Writes `<out-dir>/user_NN/sample_XXXX.png` (the input's size and channels, so the folder can sit
next to the real train/ as augmentation data) and `<out-dir>/grid.png` (one row per user). Each
user's noise comes from its own seed, so the same seed gives the same images, and another batch
size draws the same noise (images then differ only by float rounding).

With `sample.devices` > 1 (or `num_nodes` > 1) the rule starts one process per device (torchrun or
srun) and Lightning Fabric joins them: rank r samples users r, r + world size, ..., so together they
write every user once, the same files as one process; rank 0 then draws the grid from the files.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from lightning_fabric import Fabric
from PIL import Image

from mdgen.config import load_config
from mdgen.data.observation import load_noise, noise_rng, Observation
from mdgen.data.validation import user_id
from mdgen.io import atomic_output
from mdgen.launch import die_with_launcher
from mdgen.models.lightningdit import load_dit
from mdgen.models.vavae import load_vavae
from mdgen.plots import image_grid
from mdgen.progress import progress, say
from mdgen.sampling import sample_user


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dit", type=Path, required=True, help="results/dit/dit.pt")
    p.add_argument("--vae", type=Path, required=True, help="results/vae/vavae.pt (the decoder)")
    p.add_argument(
        "--decoder-noise",
        type=Path,
        default=None,
        help="results/vae/decoder_noise.json (evaluate_vae's): the noise decode.noise draws",
    )
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--config", required=True, help="JSON/YAML text or file with the data and sample sections")
    return p.parse_args(argv)


def sample_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("sample_*.png"))


@torch.inference_mode()
def main(argv: list[str] | None = None) -> int:
    die_with_launcher()
    args = parse_args(argv)
    config = load_config(args.config, "data", "sample", "decode")
    settings = config["sample"]
    processes = settings["devices"] * settings["num_nodes"]
    fabric = Fabric(
        accelerator=settings["accelerator"],
        devices=settings["devices"],
        num_nodes=settings["num_nodes"],
        strategy="ddp" if processes > 1 else "auto",
    )
    fabric.launch()  # joins the processes torchrun or srun started; nothing to do for one
    torch.manual_seed(settings["seed"])
    model, dit_config = load_dit(args.dit, settings["use_ema"])
    model = model.to(fabric.device)
    vae = load_vavae(args.vae, use_vf=None).eval().to(fabric.device)
    observation = Observation.from_config(config, load_noise(args.decoder_noise))
    stats = dit_config["latent_stats"]
    mean = torch.tensor(stats["mean"], device=fabric.device).view(-1, 1, 1)
    std = torch.tensor(stats["std"], device=fabric.device).view(-1, 1, 1)
    model_kwargs = dit_config["model"]
    latent_shape = (model_kwargs["in_channels"], model_kwargs["input_size"], model_kwargs["input_size"])
    num_users = model_kwargs["num_classes"]
    say(
        f"Sampling {settings['per_user']} spectrograms for each of {num_users} users: {settings['sampling_method']}, "
        f"{settings['num_sampling_steps']} steps, time shift {settings['timestep_shift']}, cfg {settings['cfg_scale']} "
        f"from t > {settings['cfg_interval_start']} on {settings['guidance_channels'] or 'all'} channels, "
        f"{'EMA' if settings['use_ema'] else 'raw'} weights; seed {settings['seed']}; decoded images "
        f"{observation.describe()}; "
        f"{fabric.world_size} process(es) on {fabric.device.type}"
    )

    mine = range(fabric.global_rank, num_users, fabric.world_size)
    start = time.perf_counter()
    bar = progress(
        mine,
        desc=f"users (rank 0 of {fabric.world_size})" if fabric.world_size > 1 else "users",
        unit="user",
        disable=not fabric.is_global_zero,
    )
    for user in bar:
        decoded = sample_user(model, vae, user, settings["per_user"], settings, latent_shape, mean, std)
        # the files' layout (RGB for a colour map); the user's own draw of the decoder's noise
        images = observation(decoded, noise_rng("samples", settings["seed"], user))
        folder = args.out_dir / user_id(user)
        folder.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(images):
            with atomic_output(folder / f"sample_{i:04d}.png") as tmp:
                Image.fromarray(image).save(tmp, format="PNG")
    fabric.barrier()  # every user's folder is complete
    if fabric.is_global_zero:
        elapsed = time.perf_counter() - start
        written = [sample_files(args.out_dir / user_id(u)) for u in range(num_users)]
        grid_rows = [[np.asarray(Image.open(path)) for path in files[: settings["grid_per_user"]]] for files in written]
        total = sum(map(len, written))
        image_grid(
            grid_rows,
            [user_id(u) for u in range(num_users)],
            [],
            args.out_dir / "grid.png",
            title=f"Generated spectrograms, one row per user (cfg {settings['cfg_scale']})",
            cell_inches=1.0,
        )
        say(
            f"Wrote {total} samples to {args.out_dir}/user_NN/ and grid.png in {elapsed:.0f} s "
            f"({elapsed * fabric.world_size / total:.2f} process-seconds per image)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
