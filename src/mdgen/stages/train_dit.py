"""Stage `train_dit`: a class-conditional LightningDiT trained with rectified flow on the latent stores.

    python -m mdgen.stages.train_dit --latents results/latents --vae results/vae/vavae.pt --out-dir results/dit \
        --config config/config.yaml

One class per user (`data.num_classes`); labels are dropped with `class_dropout_prob` so the model
also learns the unconditional velocity that classifier-free guidance needs. Writes
`<out-dir>/dit.pt` in the official layout (`{'model', 'ema', 'opt', 'config'}`), `metrics.csv` and
`curves.png`; the resumable state (Lightning's `last.ckpt`: optimizer, EMA, step) lives in
`<out-dir>/training/` and a rerun continues from it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint

from mdgen.config import load_config
from mdgen.data.dataset import per_user_subset
from mdgen.data.latents import LatentDataModule
from mdgen.evaluation.classifier import Recipe
from mdgen.evaluation.identity import probe_judges
from mdgen.launch import die_with_launcher
from mdgen.models.lightningdit import dit_kwargs, save_official
from mdgen.models.vavae import load_vavae
from mdgen.progress import say
from mdgen.training import device_from_config, fit, prepare_work_dir, trainer_from_config, write_curves
from mdgen.training.dit import DiTTraining, repa_targets
from mdgen.training.pictures import FidelityProbe, SamplePictures


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--latents", type=Path, required=True, help="folder holding train.zarr and val.zarr")
    p.add_argument("--vae", required=True, help="the VA-VAE the latents were made with (checked by sha256)")
    p.add_argument("--out-dir", type=Path, required=True, help="where dit.pt, metrics.csv, curves.png and training/ go")
    p.add_argument("--config", required=True, help="JSON/YAML text or file with the data and dit sections")
    p.add_argument(
        "--per-user", type=int, default=None, help="train on this many train latents per user only (the low-data study)"
    )
    p.add_argument("--subset-seed", type=int, default=0, help="seed of the per-user draw")
    p.add_argument("--manifest", default=None, help="results/dataset/manifest.csv: the clean images REPA encodes")
    p.add_argument("--teacher", default=None, help="the teacher.pt of dit.repa.encoder domain")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    die_with_launcher()
    args = parse_args(argv)
    config = load_config(args.config, "data", "dit", "logging")
    # Not part of what training resumes by: changing them never restarts training.
    logging, sample, evaluation = config["logging"], config["sample"], config["evaluation"]
    config = {
        "data": {k: config["data"][k] for k in ("size", "channels", "colormap", "num_classes")},
        "dit": config["dit"],
    }
    dit_config = config["dit"]
    decay_steps, max_steps = dit_config["optimizer"]["decay_steps"], dit_config["trainer"]["max_steps"]
    if decay_steps > max(max_steps, 0):
        raise SystemExit(
            f"dit.optimizer.decay_steps ({decay_steps}) must lie within dit.trainer.max_steps ({max_steps}); "
            "0 keeps the learning rate constant"
        )
    pl.seed_everything(dit_config["seed"], workers=True)

    data = LatentDataModule(
        args.latents / "train.zarr",
        args.latents / "val.zarr",
        dit_config["batch_size"],
        num_workers=dit_config["num_workers"],
        vae_path=args.vae,
        memory_limit_mb=dit_config["memory_limit_mb"],
    )
    data.setup("fit")
    subset = None
    if args.per_user is not None:
        indices = per_user_subset(data.train.labels, args.per_user, args.subset_seed)
        data.train_indices = indices
        subset = {"per_user": args.per_user, "seed": args.subset_seed, "paths": [data.train.paths[i] for i in indices]}
        config["train_subset"] = {k: v for k, v in subset.items() if k != "paths"}  # part of the resume fingerprint
    latent_shape = tuple(data.train.latents_shape)
    model_kwargs = dit_kwargs(config, latent_shape)
    alignment, feature_dim = None, None
    if dit_config["repa"]["weight"] > 0:
        if args.manifest is None:
            raise SystemExit("dit.repa needs the clean images its encoder sees: pass --manifest")
        device = device_from_config(dit_config["trainer"]["accelerator"])
        data.train_features, alignment = repa_targets(config, model_kwargs, data, args.manifest, args.teacher, device)
        feature_dim = data.train_features.shape[-1]
        say(
            f"REPA: tokens after block {dit_config['repa']['depth']} aligned to {alignment['encoder']} features "
            f"({feature_dim} channels on the token grid), weight {dit_config['repa']['weight']}"
        )
        config["repa_encoder_sha256"] = alignment["sha256"]  # part of the resume fingerprint
    work_dir = args.out_dir / "training"
    resume_from = prepare_work_dir(work_dir, config)
    module = DiTTraining(config, model_kwargs, repa_feature_dim=feature_dim)

    n_params = sum(p.numel() for p in module.model.parameters())
    say(
        f"{dit_config['model_type']}: {n_params / 1e6:.2f} M parameters on {latent_shape[0]}×{latent_shape[1]}×"
        f"{latent_shape[2]} latents, {config['data']['num_classes']} classes (null label {module.model.null_label})"
    )
    trained_on = f"{len(subset['paths'])} ({args.per_user} per user)" if subset else str(len(data.train))
    say(f"Data: {trained_on} train / {len(data.val)} val latents from {args.latents}, batch {dit_config['batch_size']}")
    if resume_from:
        say(f"Resuming from {resume_from} (optimizer, EMA and step included)")
    elif dit_config["weight_init"]:
        report = module.model.load_pretrained(
            dit_config["weight_init"], key=dit_config["weight_init_key"], transfer=True
        )
        module.ema.load_state_dict(module.model.state_dict())
        say(str(report))

    checkpoint_dir = work_dir / "checkpoints"
    last = ModelCheckpoint(
        dirpath=checkpoint_dir, save_last=True, save_top_k=0, every_n_train_steps=dit_config["checkpoint_every_n_steps"]
    )
    pictures = []
    show_samples = logging["tensorboard"] and logging["images_every_n_steps"]
    # The decoder both pictures and the fidelity probe decode samples with, loaded once.
    vae = load_vavae(args.vae, use_vf=None) if show_samples or logging["fidelity_every_n_steps"] else None
    if show_samples:
        num_classes = config["data"]["num_classes"]
        shown = min(logging["images_shown"], num_classes)
        users = sorted({round(i * (num_classes - 1) / max(shown - 1, 1)) for i in range(shown)})
        pictures.append(
            SamplePictures(
                vae,
                users,
                latent_shape,
                data.train.mean,
                data.train.std,
                logging["images_every_n_steps"],
                colormap=config["data"]["colormap"],
            )
        )
    if logging["fidelity_every_n_steps"]:
        if args.manifest is None:
            raise SystemExit(
                "the fidelity probe (logging.fidelity_every_n_steps) judges against real images: pass --manifest"
            )
        recipe = Recipe(**evaluation["classifier"])
        say(f"Fidelity probe every {logging['fidelity_every_n_steps']} steps: training its judges ({recipe})")
        judges = probe_judges(args.manifest, vae, config["data"], recipe, evaluation["seeds"][0])
        probe = FidelityProbe(
            vae,
            judges,
            recipe.size,
            latent_shape,
            data.train.mean,
            data.train.std,
            sample,
            every_n_steps=logging["fidelity_every_n_steps"],
            per_user=logging["fidelity_per_user"],
            num_classes=config["data"]["num_classes"],
            colormap=config["data"]["colormap"],
        )
        pictures.append(probe)
    trainer = trainer_from_config(
        dit_config["trainer"],
        work_dir,
        [last, *pictures],
        seed=dit_config["seed"],
        tensorboard=logging["tensorboard"],
        gradient_clip_val=dit_config["optimizer"]["max_grad_norm"],
        # Every n steps across epochs (the validation loss is costly: val_timesteps passes over the val store).
        val_check_interval=dit_config["val_every_n_steps"],
        check_val_every_n_epoch=None,
    )
    elapsed = fit(
        trainer,
        module,
        data,
        resume_from,
        f"for {dit_config['trainer']['max_steps']} steps (checkpoints in {checkpoint_dir})",
    )

    if trainer.is_global_zero:
        export_config = {
            **config,
            "model": model_kwargs,
            "train_subset": subset,
            "alignment": alignment,
            "latent_stats": {"mean": data.train.mean.tolist(), "std": data.train.std.tolist()},
        }
        # The projector is training-only: kept apart from 'model' and 'ema', which load strictly.
        save_official(
            args.out_dir / "dit.pt",
            module.model,
            module.ema,
            trainer.optimizers[0].state_dict(),
            export_config,
            training_only={"repa_projector": module.projector.state_dict()} if module.projector else None,
        )
        write_curves(
            work_dir,
            args.out_dir,
            title="LightningDiT training",
            panels={
                "loss": ["train/loss", "val/loss"],
                "loss terms": ["train/mse", "train/cosine", "train/repa"],
                "does the model use the user label? (val loss saved by it)": ["val/label_gain"],
                "gradient norm (before clipping)": ["train/grad_norm"],
                "throughput (latents/s)": ["train/latents_per_s"],
                "fidelity probe (samples recognised as their user)": ["probe/fidelity", "probe/fidelity_recon_judge"],
            },
        )
        say(
            f"Trained {trainer.global_step} steps in {elapsed:.0f} s; "
            f"wrote {args.out_dir / 'dit.pt'}, metrics.csv and curves.png"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
