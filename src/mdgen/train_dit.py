"""Stage `train_dit`: a class-conditional LightningDiT trained with rectified flow on the latent stores.

    python -m mdgen.train_dit --latents results/latents --vae results/vae/vavae.pt --out-dir results/dit \
        --config config/config.yaml

One class per user (`data.num_classes`); labels are dropped with `class_dropout_prob` so the model
also learns the unconditional velocity that classifier-free guidance needs. Writes
`<out-dir>/dit.pt` in the official layout (`{'model', 'ema', 'opt', 'config'}`), `metrics.csv` and
`curves.png`; the resumable state (Lightning's `last.ckpt`: optimizer, EMA, step) lives in
`<out-dir>/training/` and a rerun continues from it.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from mdgen.config import load_config
from mdgen.data.dataset import per_user_subset
from mdgen.data.latents import LatentDataModule
from mdgen.io import atomic_output
from mdgen.launch import die_with_launcher
from mdgen.models.lightningdit import create_model
from mdgen.plots import plot_curves
from mdgen.training import collect_metrics, fit, prepare_work_dir, say, trainer_from_config
from mdgen.transport import training_loss

MODEL_FLAGS = ("use_qknorm", "use_swiglu", "use_rope", "use_rmsnorm", "wo_shift", "class_dropout_prob", "use_checkpoint")


def dit_kwargs(config: dict, latent_shape: tuple[int, int, int]) -> dict:
    """create_model arguments: the registry name and flags from the config, sizes from the latents."""
    channels, height, width = latent_shape
    if height != width:
        raise ValueError(f"LightningDiT needs square latents, the store holds {height}×{width}")
    dit = config["dit"]
    return {
        "model_type": dit["model_type"],
        "input_size": height,
        "in_channels": channels,
        "num_classes": config["data"]["num_classes"],
        **{flag: dit[flag] for flag in MODEL_FLAGS},
    }


def build_dit(kwargs: dict) -> torch.nn.Module:
    kwargs = dict(kwargs)
    return create_model(kwargs.pop("model_type"), **kwargs)


class DiTTraining(pl.LightningModule):
    """Rectified-flow training of a LightningDiT with an EMA copy of its weights."""

    def __init__(self, config: dict, model_kwargs: dict):
        super().__init__()
        self.save_hyperparameters({"config": config, "model_kwargs": model_kwargs})
        self.dit_config = config["dit"]
        self.model = build_dit(model_kwargs)
        self.ema = copy.deepcopy(self.model).requires_grad_(False)
        # Compile only the training forward: the state dict keeps the official key names.
        self.forward_model = torch.compile(self.model) if self.dit_config["compile"] else self.model
        self._step_start = None

    def _losses(self, latents, labels, **fixed):
        transport = self.dit_config["transport"]
        return training_loss(
            self.forward_model, latents, dict(y=labels),
            use_lognorm=transport["use_lognorm"], use_cosine_loss=transport["use_cosine_loss"], **fixed,
        )

    def training_step(self, batch, batch_idx):
        latents, labels = batch
        losses = self._losses(latents, labels)
        # Under DDP: the mean over the ranks' batches (the loss the averaged gradient belongs to).
        self.log("train/loss", losses["loss"], prog_bar=True, sync_dist=True)
        self.log_dict({f"train/{name}": value for name, value in losses.items() if name != "loss"}, sync_dist=True)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"])
        return losses["loss"]

    def on_train_batch_start(self, batch, batch_idx):
        self._step_start = time.perf_counter()

    def on_before_optimizer_step(self, optimizer):
        # Before clipping: the norm the clipping acts on.
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        self.log("train/grad_norm", torch.nn.utils.get_total_norm(grads))

    @torch.no_grad()
    def on_train_batch_end(self, outputs, batch, batch_idx):
        decay = self.dit_config["ema_decay"]
        ema, model = list(self.ema.parameters()), list(self.model.parameters())
        torch._foreach_lerp_(ema, model, 1.0 - decay)
        # The EMA needs no syncing: DDP keeps the weights, and so their averages, equal on every rank.
        self.log("train/latents_per_s", len(batch[0]) / (time.perf_counter() - self._step_start),
                 sync_dist=True, reduce_fx="sum")

    def validation_step(self, batch, batch_idx):
        """The loss at a fixed grid of t with fixed noise: deterministic, comparable across runs."""
        latents, labels = batch
        generator = torch.Generator(device=latents.device).manual_seed(self.dit_config["seed"] * 100_003 + batch_idx)
        noise = torch.randn(latents.shape, generator=generator, device=latents.device)
        grid = (torch.arange(self.dit_config["val_timesteps"], device=latents.device) + 0.5) / self.dit_config["val_timesteps"]
        losses = [self._losses(latents, labels, t=t.expand(len(latents)), noise=noise)["loss"] for t in grid]
        self.log("val/loss", torch.stack(losses).mean(), prog_bar=True, sync_dist=True, batch_size=len(latents))

    def configure_optimizers(self):
        settings = self.dit_config["optimizer"]
        return torch.optim.AdamW(self.model.parameters(), lr=settings["lr"], betas=(0.9, settings["beta2"]),
                                 weight_decay=settings["weight_decay"])


def export_official(path: Path, module: DiTTraining, optimizer: torch.optim.Optimizer, config: dict) -> None:
    """The official checkpoint layout: {'model', 'ema', 'opt', 'config'}."""
    checkpoint = {
        "model": module.model.state_dict(),
        "ema": module.ema.state_dict(),
        "opt": optimizer.state_dict(),
        "config": config,
    }
    with atomic_output(path) as tmp:
        torch.save(checkpoint, tmp)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--latents", type=Path, required=True, help="folder holding train.zarr and val.zarr")
    p.add_argument("--vae", required=True, help="the VA-VAE the latents were made with (checked by sha256)")
    p.add_argument("--out-dir", type=Path, required=True, help="where dit.pt, metrics.csv, curves.png and training/ go")
    p.add_argument("--config", required=True, help="JSON/YAML text or file with the data and dit sections")
    p.add_argument("--per-user", type=int, default=None,
                   help="train on this many train latents per user only (the low-data study)")
    p.add_argument("--subset-seed", type=int, default=0, help="seed of the per-user draw")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    die_with_launcher()
    args = parse_args(argv)
    config = load_config(args.config, "data", "dit")
    config = {"data": {k: config["data"][k] for k in ("size", "channels", "num_classes")}, "dit": config["dit"]}
    dit_config = config["dit"]
    pl.seed_everything(dit_config["seed"], workers=True)

    data = LatentDataModule(args.latents / "train.zarr", args.latents / "val.zarr", dit_config["batch_size"],
                            num_workers=dit_config["num_workers"], vae_path=args.vae,
                            memory_limit_mb=dit_config["memory_limit_mb"])
    data.setup("fit")
    subset = None
    if args.per_user is not None:
        indices = per_user_subset(data.train.labels, args.per_user, args.subset_seed)
        data.train_indices = indices
        subset = {"per_user": args.per_user, "seed": args.subset_seed, "paths": [data.train.paths[i] for i in indices]}
        config["train_subset"] = {k: v for k, v in subset.items() if k != "paths"}  # part of the resume fingerprint
    latent_shape = tuple(data.train.latents_shape)
    model_kwargs = dit_kwargs(config, latent_shape)
    work_dir = args.out_dir / "training"
    resume_from = prepare_work_dir(work_dir, config)
    module = DiTTraining(config, model_kwargs)

    n_params = sum(p.numel() for p in module.model.parameters())
    say(f"{dit_config['model_type']}: {n_params / 1e6:.2f} M parameters on {latent_shape[0]}×{latent_shape[1]}×"
          f"{latent_shape[2]} latents, {config['data']['num_classes']} classes (null label {module.model.null_label})")
    trained_on = f"{len(subset['paths'])} ({args.per_user} per user)" if subset else str(len(data.train))
    say(f"Data: {trained_on} train / {len(data.val)} val latents from {args.latents}, batch {dit_config['batch_size']}")
    if resume_from:
        say(f"Resuming from {resume_from} (optimizer, EMA and step included)")

    checkpoint_dir = work_dir / "checkpoints"
    last = ModelCheckpoint(dirpath=checkpoint_dir, save_last=True, save_top_k=0,
                           every_n_train_steps=dit_config["checkpoint_every_n_steps"])
    trainer = trainer_from_config(
        dit_config["trainer"], work_dir, [last], seed=dit_config["seed"],
        gradient_clip_val=dit_config["optimizer"]["max_grad_norm"],
        # Every n steps across epochs (the validation loss is costly: val_timesteps passes over the val store).
        val_check_interval=dit_config["val_every_n_steps"],
        check_val_every_n_epoch=None,
    )
    elapsed = fit(trainer, module, data, resume_from,
                  f"for {dit_config['trainer']['max_steps']} steps (checkpoints in {checkpoint_dir})")

    if trainer.is_global_zero:
        export_config = {**config, "model": model_kwargs, "train_subset": subset,
                         "latent_stats": {"mean": data.train.mean.tolist(), "std": data.train.std.tolist()}}
        export_official(args.out_dir / "dit.pt", module, trainer.optimizers[0], export_config)
        collect_metrics(work_dir, args.out_dir / "metrics.csv")
        plot_curves(args.out_dir / "metrics.csv", args.out_dir / "curves.png", title="LightningDiT training",
                    panels={"loss": ["train/loss", "val/loss"], "loss terms": ["train/mse", "train/cosine"],
                            "gradient norm (before clipping)": ["train/grad_norm"],
                            "throughput (latents/s)": ["train/latents_per_s"]})
        print(f"Trained {trainer.global_step} steps in {elapsed:.0f} s; wrote {args.out_dir / 'dit.pt'}, metrics.csv and curves.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
