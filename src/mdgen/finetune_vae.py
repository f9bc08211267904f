"""Stage `finetune_vae`: fine-tune the VA-VAE on the validated spectrograms (or train it from scratch).

    python -m mdgen.finetune_vae --manifest results/dataset/manifest.csv --out-dir results/vae \
        --config config/config.yaml

Writes `<out-dir>/vavae.pt` (official layout: `{'state_dict', 'config'}`), `metrics.csv` and
`curves.png`. The resumable state (Lightning's `last.ckpt`, both optimizers included) lives in
`<out-dir>/training/`, which is not a Snakemake output: rerunning after an interruption
continues from there; a changed configuration starts over.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from mdgen.config import load_config
from mdgen.data.dataset import MicroDopplerDataset
from mdgen.launch import die_with_launcher
from mdgen.losses import FoundationModel, LPIPSWithDiscriminator, PerceptualLoss, build_lpips
from mdgen.models.vavae import VAVAE, save_official
from mdgen.plots import plot_curves
from mdgen.training import collect_metrics, fit, prepare_work_dir, say, trainer_from_config

# Lightning warns that manual optimization checkpoints hold the weights after the optimizer step;
# that is what we want (the state at global_step), so the warning is noise.
warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")

# Frozen networks whose weights come from their own files: kept out of Lightning checkpoints.
FROZEN_PREFIXES = ("loss.perceptual_loss.", "loss.foundation_model.")


def vae_kwargs(config: dict) -> dict:
    """VAVAE constructor arguments: the seed's ddconfig + embed_dim, channels from the data section."""
    vae = config["vae"]
    channels = config["data"]["channels"]
    return dict(
        embed_dim=vae["embed_dim"],
        **vae["ddconfig"],
        in_channels=channels,
        out_ch=channels,
        use_vf=vae["use_vf"],
        reverse_proj=vae["reverse_proj"],
    )


def build_loss(config: dict) -> LPIPSWithDiscriminator:
    """The VA-VAE loss with its frozen helpers (LPIPS backbone, vision foundation model) loaded."""
    vae = config["vae"]
    loss_config = vae["lossconfig"]
    perceptual = None
    if loss_config["perceptual_weight"] > 0:
        perceptual_config = vae["perceptual"]
        perceptual = PerceptualLoss(build_lpips(perceptual_config["vgg16_weights"], random_backbone=perceptual_config["random_backbone"]))
    foundation = None
    if vae["use_vf"]:
        foundation_config = vae["foundation"]
        foundation = FoundationModel(vae["use_vf"], foundation_config["weights"], random_weights=foundation_config["random_weights"])
    return LPIPSWithDiscriminator(
        **loss_config, disc_in_channels=config["data"]["channels"], perceptual=perceptual, foundation_model=foundation
    )


class SpectrogramData(pl.LightningDataModule):
    """Train and val splits of the manifest; no augmentation (see MicroDopplerDataset)."""

    def __init__(self, manifest: str, size: int, channels: int, batch_size: int, num_workers: int):
        super().__init__()
        self.train = MicroDopplerDataset(manifest, "train", size, channels)
        self.val = MicroDopplerDataset(manifest, "val", size, channels)
        self.batch_size = batch_size
        self.num_workers = num_workers

    def _loader(self, dataset, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            drop_last=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val, shuffle=False)


class VAVAETraining(pl.LightningModule):
    """The official VA-VAE training step (LightningDiT vavae/ldm/models/autoencoder.py): one
    forward, an autoencoder update, then a discriminator update, with manual optimization."""

    def __init__(self, config: dict):
        super().__init__()
        self.save_hyperparameters({"config": config})
        self.vae = VAVAE(**vae_kwargs(config))
        self.loss = build_loss(config)
        self.learning_rate = config["vae"]["base_learning_rate"]
        self.automatic_optimization = False

    def aligned_latents(self, images: torch.Tensor, z: torch.Tensor):
        """(z, features) for the VF loss, or (None, None) without foundation-model alignment."""
        if self.loss.foundation_model is None:
            return None, None
        features = self.loss.foundation_model(images, grid=tuple(z.shape[-2:]))  # (B, 1024, h, w)
        return self.vae.align(z, features)

    def _autoencoder_loss(self, images, reconstructions, posterior, z, split):
        z_aligned, features = self.aligned_latents(images, z)
        return self.loss(
            images, reconstructions, posterior, 0, self.global_step,
            last_layer=self.vae.decoder_last_layer, split=split,
            z=z_aligned, aux_feature=features, enc_last_layer=self.vae.encoder_last_layer,
        )

    def training_step(self, batch, batch_idx):
        images = batch["image"]
        ae_optimizer, disc_optimizer = self.optimizers()
        start = time.perf_counter()
        reconstructions, posterior, z = self.vae(images)

        ae_loss, ae_log = self._autoencoder_loss(images, reconstructions, posterior, z, "train")
        ae_optimizer.zero_grad()
        self.manual_backward(ae_loss)
        ae_optimizer.step()

        disc_loss, disc_log = self.loss(images, reconstructions, posterior, 1, self.global_step, split="train")
        disc_optimizer.zero_grad()
        self.manual_backward(disc_loss)
        disc_optimizer.step()

        # Under DDP the logged losses are the means over the ranks' batches, the throughput their sum.
        batch_size = len(images)
        self.log("train/rec_loss", ae_log["train/rec_loss"], prog_bar=True, sync_dist=True, batch_size=batch_size)
        self.log_dict({k: v for k, v in (ae_log | disc_log).items() if k != "train/rec_loss"}, sync_dist=True,
                      batch_size=batch_size)
        self.log("train/images_per_s", batch_size / (time.perf_counter() - start), sync_dist=True, reduce_fx="sum",
                 batch_size=batch_size)

    def validation_step(self, batch, batch_idx):
        images = batch["image"]
        # The posterior mean, not a sample: validation curves are then deterministic and comparable.
        reconstructions, posterior, z = self.vae(images, sample_posterior=False)
        _, ae_log = self._autoencoder_loss(images, reconstructions, posterior, z, "val")
        _, disc_log = self.loss(images, reconstructions, posterior, 1, self.global_step, split="val")
        batch_size = len(images)
        self.log("val/rec_loss", ae_log["val/rec_loss"], prog_bar=True, sync_dist=True, batch_size=batch_size)
        self.log_dict({k: v for k, v in (ae_log | disc_log).items() if k != "val/rec_loss"}, sync_dist=True,
                      batch_size=batch_size)

    def configure_optimizers(self):
        # As the official code: the loss's logvar is not trained; linear_proj is (part of self.vae).
        betas = (0.5, 0.9)
        return [
            torch.optim.Adam(self.vae.parameters(), lr=self.learning_rate, betas=betas),
            torch.optim.Adam(self.loss.discriminator.parameters(), lr=self.learning_rate, betas=betas),
        ]

    def on_save_checkpoint(self, checkpoint):
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith(FROZEN_PREFIXES)}

    def on_load_checkpoint(self, checkpoint):
        # Put the frozen weights (loaded from their own files) back, so the strict load succeeds.
        checkpoint["state_dict"].update({k: v for k, v in self.state_dict().items() if k.startswith(FROZEN_PREFIXES)})

    def official_loss_state(self) -> dict[str, torch.Tensor]:
        """`loss.discriminator.*` and `loss.logvar` as in official checkpoints, for further fine-tuning."""
        return {f"loss.{k}": v for k, v in self.loss.state_dict().items() if k.startswith(("discriminator.", "logvar"))}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", required=True, help="results/dataset/manifest.csv")
    p.add_argument("--out-dir", type=Path, required=True, help="where vavae.pt, metrics.csv, curves.png and training/ go")
    p.add_argument("--config", required=True, help="JSON/YAML text or file with the data and vae sections")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    die_with_launcher()
    args = parse_args(argv)
    config = load_config(args.config, "data", "vae")
    config = {"data": {k: config["data"][k] for k in ("size", "channels")}, "vae": config["vae"]}
    vae_config = config["vae"]
    pl.seed_everything(vae_config["seed"], workers=True)

    work_dir = args.out_dir / "training"
    resume_from = prepare_work_dir(work_dir, config)
    data = SpectrogramData(args.manifest, config["data"]["size"], config["data"]["channels"],
                           vae_config["batch_size"], vae_config["num_workers"])
    module = VAVAETraining(config)

    n_params = sum(p.numel() for p in module.vae.parameters())
    say(f"VA-VAE: {n_params / 1e6:.2f} M parameters, latents {vae_config['embed_dim']}×"
          f"{config['data']['size'] // module.vae.downsample_factor}² for {config['data']['size']}² × {config['data']['channels']} images")
    say(f"Data: {len(data.train)} train / {len(data.val)} val spectrograms from {args.manifest}, batch {vae_config['batch_size']}")
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
    say(f"Loss: L1{' + LPIPS' if loss_config['perceptual_weight'] > 0 else ' (no LPIPS: perceptual_weight 0)'}"
          f" + KL + PatchGAN from step {loss_config['disc_start']}"
          + (f" + VF alignment with {vae_config['use_vf']}" if vae_config["use_vf"] else " (no VF alignment: use_vf null)"))

    checkpoint_dir = work_dir / "checkpoints"
    # last.ckpt every few steps (what a rerun resumes from); best.ckpt at validation.
    last = ModelCheckpoint(dirpath=checkpoint_dir, save_last=True, save_top_k=0,
                           every_n_train_steps=vae_config["checkpoint_every_n_steps"])
    best = ModelCheckpoint(dirpath=checkpoint_dir, filename="best", monitor="val/rec_loss", mode="min", save_top_k=1)
    # The discriminator update leaves the VA-VAE without gradients (and the reverse): DDP must know.
    trainer = trainer_from_config(vae_config["trainer"], work_dir, [last, best], seed=vae_config["seed"],
                                  find_unused_parameters=True)
    elapsed = fit(trainer, module, data, resume_from, f"(checkpoints in {checkpoint_dir})")

    if trainer.is_global_zero:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        export_config = {"model": vae_kwargs(config), **config}
        save_official(args.out_dir / "vavae.pt", module.vae, export_config, extra_state=module.official_loss_state())
        collect_metrics(work_dir, args.out_dir / "metrics.csv")
        plot_curves(args.out_dir / "metrics.csv", args.out_dir / "curves.png", title="VA-VAE fine-tuning",
                    panels={"reconstruction (L1 + perceptual)": ["train/rec_loss", "val/rec_loss"],
                            "adversarial": ["train/g_loss", "train/disc_loss"],
                            "KL": ["train/kl_loss"], "VF alignment": ["train/vf_loss"]},
                    xlabel="batch (two optimizer steps each)")
        print(f"Trained {trainer.global_step} optimizer steps in {elapsed:.0f} s; wrote {args.out_dir / 'vavae.pt'}, "
              f"metrics.csv and curves.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
