"""The VA-VAE's training task: its data module, its loss built from the config, and the
official training step (autoencoder update, then discriminator update, manual optimization),
with the official gradients back-propagated through the decoder once instead of twice."""

from __future__ import annotations

import functools
import time
import warnings

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from mdgen.data.dataset import MicroDopplerDataset
from mdgen.data.images import model_channels
from mdgen.losses import build_lpips, FeaturePerceptualLoss, FoundationModel, LPIPSWithDiscriminator, PerceptualLoss
from mdgen.losses.vavae_loss import D_WEIGHT_MAX, gradient_ratio, VF_WEIGHT_MAX
from mdgen.models.teacher import SpectrogramTeacher
from mdgen.models.vavae import VAVAE, vavae_kwargs
from mdgen.training import fused_adam, lr_decay_factor

# Lightning warns that manual optimization checkpoints hold the weights after the optimizer step;
# that is what we want (the state at global_step), so the warning is noise.
warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")

# Frozen networks whose weights come from their own files: kept out of Lightning checkpoints.
FROZEN_PREFIXES = ("loss.perceptual_loss.", "loss.foundation_model.")


def teacher_uses(vae: dict) -> list[str]:
    """What the spectrogram teacher does for a VA-VAE with these settings (the config's vae
    section): "VF alignment" (use_vf domain), "perceptual loss" (perceptual.network domain with a
    perceptual_weight above 0), both or neither."""
    uses = []
    if vae["use_vf"] == "domain":
        uses.append("VF alignment")
    if vae["lossconfig"]["perceptual_weight"] > 0 and vae["perceptual"]["network"] == "domain":
        uses.append("perceptual loss")
    return uses


def teacher_needed(uses: list[str]) -> str:
    """The start of the message when teacher_uses(vae) is not empty but no teacher was given."""
    return f"the VA-VAE's {' and '.join(uses)} need{'s' if len(uses) == 1 else ''} the spectrogram teacher"


def build_loss(config: dict, teacher: SpectrogramTeacher | None = None) -> LPIPSWithDiscriminator:
    """The VA-VAE loss with its frozen helpers (LPIPS backbone, vision foundation model) loaded.
    With use_vf domain the latents align to `teacher`, and with perceptual.network domain the
    perceptual loss compares its activations; the caller loads it (load_teacher)."""
    vae = config["vae"]
    loss_config = vae["lossconfig"]
    uses = teacher_uses(vae)
    if uses and teacher is None:
        raise ValueError(f"{teacher_needed(uses)}: pass its teacher.pt")
    perceptual = None
    if "perceptual loss" in uses:
        perceptual = FeaturePerceptualLoss(teacher)
    elif loss_config["perceptual_weight"] > 0:
        perceptual_config = vae["perceptual"]
        perceptual = PerceptualLoss(
            build_lpips(perceptual_config["vgg16_weights"], random_backbone=perceptual_config["random_backbone"])
        )
    foundation = None
    if vae["use_vf"] == "domain":
        foundation = teacher
    elif vae["use_vf"]:
        foundation_config = vae["foundation"]
        foundation = FoundationModel(
            vae["use_vf"], foundation_config["weights"], random_weights=foundation_config["random_weights"]
        )
    return LPIPSWithDiscriminator(
        **loss_config,
        disc_in_channels=model_channels(config["data"]),
        perceptual=perceptual,
        foundation_model=foundation,
    )


class SpectrogramData(pl.LightningDataModule):
    """Train and val splits of the manifest; no augmentation (see MicroDopplerDataset)."""

    def __init__(
        self, manifest: str, size: int, channels: int, batch_size: int, num_workers: int, colormap: str | None = None
    ):
        super().__init__()
        self.train = MicroDopplerDataset(manifest, "train", size, channels, colormap=colormap)
        self.val = MicroDopplerDataset(manifest, "val", size, channels, colormap=colormap)
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


def first_of_each_user(dataset: MicroDopplerDataset, count: int) -> torch.Tensor:
    """The first image of up to `count` users, spread over the users (N, C, H, W)."""
    firsts = {}
    for index, row in enumerate(dataset.rows):
        firsts.setdefault(row["user_id"], index)
    users = sorted(firsts)
    chosen = [users[round(i * (len(users) - 1) / max(count - 1, 1))] for i in range(min(count, len(users)))]
    return torch.stack([dataset[firsts[user]]["image"] for user in dict.fromkeys(chosen)])


class VAVAETraining(pl.LightningModule):
    """The official VA-VAE training step (LightningDiT vavae/ldm/models/autoencoder.py): one
    forward, an autoencoder update, then a discriminator update, with manual optimization."""

    def __init__(self, config: dict, teacher: SpectrogramTeacher | None = None):
        super().__init__()
        self.save_hyperparameters({"config": config})
        self.vae = VAVAE(**vavae_kwargs(config))
        self.loss = build_loss(config, teacher)
        self.learning_rate = config["vae"]["base_learning_rate"]
        self.decay_epochs = config["vae"]["decay_epochs"]
        self.automatic_optimization = False

    def aligned_latents(self, images: torch.Tensor, z: torch.Tensor):
        """(z, features) for the VF loss, or (None, None) without foundation-model alignment."""
        if self.loss.foundation_model is None:
            return None, None
        features = self.loss.foundation_model(images, grid=tuple(z.shape[-2:]))  # (B, vf_feature_dim, h, w)
        return self.vae.align(z, features)

    def _autoencoder_loss(self, images, reconstructions, posterior, z, split):
        z_aligned, features = self.aligned_latents(images, z)
        return self.loss(
            images,
            reconstructions,
            posterior,
            0,
            self.global_step,
            last_layer=self.vae.decoder_last_layer,
            split=split,
            z=z_aligned,
            aux_feature=features,
            enc_last_layer=self.vae.encoder_last_layer,
        )

    def training_step(self, batch, batch_idx):
        images = batch["image"]
        ae_optimizer, disc_optimizer = self.optimizers()
        start = time.perf_counter()
        ae_optimizer.zero_grad()
        if self._one_pass_through_the_decoder():
            reconstructions, posterior, ae_log = self._autoencoder_backward_once(images)
        else:
            reconstructions, posterior, ae_log = self._autoencoder_backward_official(images)
        ae_optimizer.step()

        disc_loss, disc_log = self.loss(images, reconstructions, posterior, 1, self.global_step, split="train")
        disc_optimizer.zero_grad()
        self.manual_backward(disc_loss)
        disc_optimizer.step()
        for schedule in self.lr_schedulers() or []:  # manual optimization: stepped here, once per batch
            schedule.step()

        # Under DDP the logged losses are the means over the ranks' batches, the throughput their sum.
        batch_size = len(images)
        self.log("train/rec_loss", ae_log["train/rec_loss"], prog_bar=True, sync_dist=True, batch_size=batch_size)
        self.log_dict(
            {k: v for k, v in (ae_log | disc_log).items() if k != "train/rec_loss"},
            sync_dist=True,
            batch_size=batch_size,
        )
        self.log(
            "train/images_per_s",
            batch_size / (time.perf_counter() - start),
            sync_dist=True,
            reduce_fx="sum",
            batch_size=batch_size,
        )

    def _one_pass_through_the_decoder(self) -> bool:
        """Whether the training step may cut its graph at the encoder (_autoencoder_backward_once):
        in one process without a gradient scaler. Under DDP each backward pass would all-reduce a
        part of the gradients (and the official weights are each rank's own), and fp16's scaled
        gradients would need unscaling: those keep the official step."""
        return self.trainer.world_size == 1 and getattr(self.trainer.precision_plugin, "scaler", None) is None

    def _autoencoder_backward_official(self, images):
        """The official autoencoder forward, loss (adaptive weights by torch.autograd.grad) and backward;
        returns (reconstructions, posterior, log)."""
        reconstructions, posterior, z = self.vae(images)
        ae_loss, ae_log = self._autoencoder_loss(images, reconstructions, posterior, z, "train")
        self.manual_backward(ae_loss)
        return reconstructions, posterior, ae_log

    def _autoencoder_backward_once(self, images):
        """The autoencoder's forward, loss and backward with the official gradients, the decoder and the
        perceptual network back-propagated once; returns (reconstructions, posterior, log).

        The official adaptive weights back-propagate the nll to the decoder's and the encoder's last
        weights (torch.autograd.grad) before the backward pass of the whole loss: the perceptual network
        and the decoder twice per step. Here the graph is cut at the encoder's output h. The nll is
        back-propagated first, down to h; its gradients at the decoder's last weight, and at h carried
        through the encoder's last layer, give the weights; the weighted rest of the loss follows down to
        h; then h's whole gradient runs through the encoder once. The same gradients up to float
        rounding, about a tenth less time per step at the default settings (benchmarks/vae_step.py).
        """
        h = self.vae.encoder_output(images)
        h_cut = h.detach().requires_grad_()
        posterior = self.vae.posterior(h_cut)
        z = posterior.sample()
        reconstructions = self.vae.decode(z)
        z_aligned, features = self.aligned_latents(images, z)
        terms = self.loss.autoencoder_terms(images, reconstructions, posterior, self.global_step, z_aligned, features)
        self.manual_backward(terms.nll, retain_graph=True)

        d_weight = terms.nll.new_zeros(())
        if terms.g_loss is not None:
            decoder_last = self.vae.decoder_last_layer
            g_grad = torch.autograd.grad(terms.g_loss, decoder_last, retain_graph=True)[0]
            d_weight = gradient_ratio(decoder_last.grad, g_grad, D_WEIGHT_MAX)  # .grad holds the nll's alone
        vf_weight = None
        if terms.vf is not None:
            vf_weight = terms.nll.new_tensor(1.0)
            if self.loss.adaptive_vf:
                encoder_last = self.vae.encoder_last_layer
                nll_grad = torch.autograd.grad(h, encoder_last, h_cut.grad, retain_graph=True)[0]
                vf_at_h = torch.autograd.grad(terms.vf, h_cut, retain_graph=True)[0]
                vf_grad = torch.autograd.grad(h, encoder_last, vf_at_h, retain_graph=True)[0]
                vf_weight = gradient_ratio(nll_grad, vf_grad, VF_WEIGHT_MAX)
        rest, log = self.loss.autoencoder_total(terms, d_weight, vf_weight, "train", include_nll=False)
        self.manual_backward(rest)
        self.manual_backward(h, gradient=h_cut.grad)
        return reconstructions, posterior, log

    def validation_step(self, batch, batch_idx):
        images = batch["image"]
        # The posterior mean, not a sample: validation curves are then deterministic and comparable.
        reconstructions, posterior, z = self.vae(images, sample_posterior=False)
        _, ae_log = self._autoencoder_loss(images, reconstructions, posterior, z, "val")
        _, disc_log = self.loss(images, reconstructions, posterior, 1, self.global_step, split="val")
        batch_size = len(images)
        self.log("val/rec_loss", ae_log["val/rec_loss"], prog_bar=True, sync_dist=True, batch_size=batch_size)
        self.log_dict(
            {k: v for k, v in (ae_log | disc_log).items() if k != "val/rec_loss"}, sync_dist=True, batch_size=batch_size
        )

    def configure_optimizers(self):
        # As the official code: the loss's logvar is not trained; linear_proj is (part of self.vae).
        settings = dict(lr=self.learning_rate, betas=(0.5, 0.9), fused=fused_adam(self.trainer))
        optimizers = [
            torch.optim.Adam(self.vae.parameters(), **settings),
            torch.optim.Adam(self.loss.discriminator.parameters(), **settings),
        ]
        if not self.decay_epochs:
            return optimizers  # constant, as the official code
        # vae.decay_epochs: both learning rates fall linearly to 0 over the last epochs, batch by batch
        batches = int(self.trainer.estimated_stepping_batches)  # every batch of every epoch (one rank's)
        decay = max(1, round(batches * self.decay_epochs / self.trainer.max_epochs))
        factor = functools.partial(lr_decay_factor, total=batches, decay=decay)
        return optimizers, [torch.optim.lr_scheduler.LambdaLR(optimizer, factor) for optimizer in optimizers]

    def on_save_checkpoint(self, checkpoint):
        checkpoint["state_dict"] = {
            k: v for k, v in checkpoint["state_dict"].items() if not k.startswith(FROZEN_PREFIXES)
        }

    def on_load_checkpoint(self, checkpoint):
        # Put the frozen weights (loaded from their own files) back, so the strict load succeeds.
        checkpoint["state_dict"].update({k: v for k, v in self.state_dict().items() if k.startswith(FROZEN_PREFIXES)})

    def official_loss_state(self) -> dict[str, torch.Tensor]:
        """`loss.discriminator.*` and `loss.logvar` as in official checkpoints, for further fine-tuning."""
        return {f"loss.{k}": v for k, v in self.loss.state_dict().items() if k.startswith(("discriminator.", "logvar"))}
