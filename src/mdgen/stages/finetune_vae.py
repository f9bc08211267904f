"""Stage `finetune_vae`: fine-tune the VA-VAE on the validated spectrograms (or train it from scratch).

    python -m mdgen.stages.finetune_vae --manifest results/dataset/manifest.csv --out-dir results/vae \
        --config config/config.yaml

Writes `<out-dir>/vavae.pt` (official layout: `{'state_dict', 'config'}`), `metrics.csv` and
`curves.png`. The resumable state (Lightning's `last.ckpt`, both optimizers included) lives in
`<out-dir>/training/`, which is not a Snakemake output: rerunning after an interruption
continues from there; a changed configuration starts over.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from mdgen.config import load_config
from mdgen.data.latents import sha256_file
from mdgen.data.validation import read_manifest
from mdgen.launch import die_with_launcher
from mdgen.models.teacher import load_teacher
from mdgen.models.vavae import save_official, vavae_kwargs
from mdgen.progress import say
from mdgen.training import fit, prepare_work_dir, trainer_from_config, write_curves
from mdgen.training.pictures import ReconstructionPictures
from mdgen.training.vavae import first_of_each_user, SpectrogramData, teacher_needed, teacher_uses, VAVAETraining


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", required=True, help="results/dataset/manifest.csv")
    p.add_argument(
        "--out-dir", type=Path, required=True, help="where vavae.pt, metrics.csv, curves.png and training/ go"
    )
    p.add_argument("--config", required=True, help="JSON/YAML text or file with the data and vae sections")
    p.add_argument(
        "--teacher", default=None, help="results/teacher/teacher.pt (vae.use_vf or vae.perceptual.network domain)"
    )
    return p.parse_args(argv)


def perceptual_name(vae: dict) -> str:
    """How the loss line names the perceptual term."""
    weight = vae["lossconfig"]["perceptual_weight"]
    if weight == 0:
        return " (no perceptual term: perceptual_weight 0)"
    network = "the teacher's features" if vae["perceptual"]["network"] == "domain" else "LPIPS"
    return f" + {weight} × {network}"


def main(argv: list[str] | None = None) -> int:
    die_with_launcher()
    args = parse_args(argv)
    config = load_config(args.config, "data", "vae", "logging")
    logging = config["logging"]  # not part of what training resumes by: changing it never restarts
    config = {
        "data": {k: config["data"][k] for k in ("size", "channels", "colormap")},
        "vae": config["vae"],
        **({"teacher": config["teacher"]} if teacher_uses(config["vae"]) else {}),
    }
    vae_config = config["vae"]
    decay_epochs, max_epochs = vae_config["decay_epochs"], vae_config["trainer"]["max_epochs"]
    if decay_epochs > max(max_epochs, 0):
        raise SystemExit(
            f"vae.decay_epochs ({decay_epochs}) must lie within vae.trainer.max_epochs ({max_epochs}); "
            "0 keeps the learning rates constant; a decay needs max_epochs >= 1, "
            "-1 trains by vae.trainer.max_steps alone"
        )
    pl.seed_everything(vae_config["seed"], workers=True)

    teacher = None
    if teacher_uses(vae_config):
        if args.teacher is None:
            raise SystemExit(f"{teacher_needed(teacher_uses(vae_config))}: pass --teacher")
        # The teacher must have seen exactly the images the VA-VAE trains on: the train split.
        teacher, _ = load_teacher(args.teacher, images_seen=read_manifest(args.manifest, "train"))
        # Part of the resume fingerprint: another teacher starts training over.
        config["teacher_sha256"] = sha256_file(args.teacher)

    work_dir = args.out_dir / "training"
    resume_from = prepare_work_dir(work_dir, config)
    data = SpectrogramData(
        args.manifest,
        config["data"]["size"],
        config["data"]["channels"],
        vae_config["batch_size"],
        vae_config["num_workers"],
        colormap=config["data"]["colormap"],
    )
    module = VAVAETraining(config, teacher)

    n_params = sum(p.numel() for p in module.vae.parameters())
    size, colormap = config["data"]["size"], config["data"]["colormap"]
    seen = f"1-channel magnitudes of {colormap}-mapped" if colormap else f"{config['data']['channels']}-channel"
    say(
        f"VA-VAE: {n_params / 1e6:.2f} M parameters, latents {vae_config['embed_dim']}×"
        f"{size // module.vae.downsample_factor}² for {size}² {seen} images"
    )
    say(
        f"Data: {len(data.train)} train / {len(data.val)} val spectrograms from {args.manifest}, "
        f"batch {vae_config['batch_size']}"
    )
    if resume_from:
        say(f"Resuming from {resume_from} (optimizer and discriminator states included)")
    elif vae_config["weight_init"]:
        report = module.vae.load_pretrained(vae_config["weight_init"])
        say(report)
        state = torch.load(vae_config["weight_init"], map_location="cpu", weights_only=True)
        loaded = module.loss.load_official_loss_state(state.get("state_dict", state))
        say(f"Loss state from the checkpoint: {', '.join(loaded) if loaded else 'none (discriminator starts fresh)'}")
    else:
        say("No vae.weight_init: training the VA-VAE from scratch.")
    loss_config = vae_config["lossconfig"]
    say(
        f"Loss: L1{perceptual_name(vae_config)}"
        f" + KL + PatchGAN from step {loss_config['disc_start']}"
        + (
            f" + VF alignment with {vae_config['use_vf']}"
            + (f" ({args.teacher}, {teacher.feature_dim} channels)" if teacher is not None else "")
            if vae_config["use_vf"]
            else " (no VF alignment: use_vf null)"
        )
    )

    checkpoint_dir = work_dir / "checkpoints"
    # last.ckpt every few steps (what a rerun resumes from); best.ckpt at validation.
    last = ModelCheckpoint(
        dirpath=checkpoint_dir, save_last=True, save_top_k=0, every_n_train_steps=vae_config["checkpoint_every_n_steps"]
    )
    best = ModelCheckpoint(dirpath=checkpoint_dir, filename="best", monitor="val/rec_loss", mode="min", save_top_k=1)
    # The discriminator update leaves the VA-VAE without gradients (and the reverse): DDP must know.
    pictures = []
    if logging["tensorboard"] and logging["images_every_n_steps"]:
        shown = first_of_each_user(data.val, logging["images_shown"])
        pictures.append(ReconstructionPictures(shown, logging["images_every_n_steps"], config["data"]["colormap"]))
    trainer = trainer_from_config(
        vae_config["trainer"],
        work_dir,
        [last, best, *pictures],
        seed=vae_config["seed"],
        find_unused_parameters=True,
        tensorboard=logging["tensorboard"],
    )
    elapsed = fit(trainer, module, data, resume_from, f"(checkpoints in {checkpoint_dir})")

    if trainer.is_global_zero:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        export_config = {"model": vavae_kwargs(config), **config}
        save_official(args.out_dir / "vavae.pt", module.vae, export_config, extra_state=module.official_loss_state())
        write_curves(
            work_dir,
            args.out_dir,
            title="VA-VAE fine-tuning",
            panels={
                "reconstruction (L1 + perceptual)": ["train/rec_loss", "val/rec_loss"],
                "adversarial": ["train/g_loss", "train/disc_loss"],
                "KL": ["train/kl_loss"],
                "VF alignment": ["train/vf_loss"],
            },
            xlabel="batch (two optimizer steps each)",
        )
        say(
            f"Trained {trainer.global_step} optimizer steps in {elapsed:.0f} s; wrote {args.out_dir / 'vavae.pt'}, "
            f"metrics.csv and curves.png"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
