"""The LightningDiT's training task: rectified flow on latents, with an EMA copy of the weights and,
optionally, REPA's representation alignment."""

from __future__ import annotations

import copy
import functools
import time

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from mdgen.data.dataset import MicroDopplerDataset
from mdgen.data.latents import sha256_file
from mdgen.losses import FoundationModel
from mdgen.losses.repa import build_projector, repa_loss
from mdgen.models.lightningdit import build_dit, registry_size
from mdgen.models.teacher import load_teacher
from mdgen.progress import progress
from mdgen.training import compiled, fused_adam, lr_decay_factor
from mdgen.transport import training_loss


class DiTTraining(pl.LightningModule):
    """Rectified-flow training of a LightningDiT with an EMA copy of its weights, and REPA when
    dit.repa.weight > 0: train batches then carry the encoder features of the clean images
    (B, T, repa_feature_dim) as a third element."""

    def __init__(self, config: dict, model_kwargs: dict, repa_feature_dim: int | None = None):
        super().__init__()
        self.save_hyperparameters({"config": config, "model_kwargs": model_kwargs})
        self.dit_config = config["dit"]
        self.model = build_dit(model_kwargs)
        self.ema = copy.deepcopy(self.model).requires_grad_(False)
        # Compile only the training forward: the state dict keeps the official key names. Kept out of
        # the submodules, so that checkpoints hold self.model once, under its own names.
        model, accelerator = self.model, self.dit_config["trainer"]["accelerator"]
        self.__dict__["forward_model"] = compiled(model, accelerator) if self.dit_config["compile"] else model
        self.repa = self.dit_config["repa"]
        self.projector = None  # REPA's, training-only: never part of self.model's state dict
        if self.repa["weight"] > 0:
            if repa_feature_dim is None:
                raise ValueError("dit.repa.weight > 0 needs the encoder's feature width (repa_feature_dim)")
            if not 1 <= self.repa["depth"] <= self.model.depth:
                raise ValueError(
                    f"dit.repa.depth {self.repa['depth']} is not a block of {model_kwargs['model_type']} "
                    f"(1..{self.model.depth})"
                )
            self.projector = build_projector(self.model.hidden_size, self.repa["projector_dim"], repa_feature_dim)
        self._step_start = None

    def _losses(self, latents, labels, features=None, **fixed):
        transport = self.dit_config["transport"]
        hidden = {}

        # Validation runs eager: a compiled graph per val shape and grad mode would cost more than it saves.
        model = self.forward_model if self.training else self.model

        def velocity(x, t, y):
            if features is None:
                return model(x, t, y)
            prediction, hidden["tokens"] = model(x, t, y, hidden_at=self.repa["depth"])
            return prediction

        losses = training_loss(
            velocity,
            latents,
            dict(y=labels),
            use_lognorm=transport["use_lognorm"],
            use_cosine_loss=transport["use_cosine_loss"],
            **fixed,
        )
        if features is not None:
            losses["repa"] = repa_loss(self.projector(hidden["tokens"]), features)
            losses["loss"] = losses["loss"] + self.repa["weight"] * losses["repa"]
        return losses

    def on_load_checkpoint(self, checkpoint):
        # Checkpoints written before forward_model left the submodules hold it as a second copy of model.
        state = checkpoint["state_dict"]
        for key in [key for key in state if key.startswith("forward_model.")]:
            del state[key]

    def training_step(self, batch, batch_idx):
        latents, labels, *features = batch
        if (self.projector is not None) != bool(features):
            raise ValueError("REPA needs train batches of (latents, labels, encoder features), and only REPA does")
        losses = self._losses(latents, labels, *features)
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

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
        """The step, then the EMA's update with its weights (as the official loop does after
        `opt.step()`), here rather than in on_train_batch_end: Lightning runs the callbacks' batch-end
        hooks first, so a checkpoint saved at this step (and the pictures and fidelity probe drawn at
        it) would otherwise hold an EMA one update behind, and a run resumed from it, or re-exported
        from its last checkpoint, would not be the run that wrote it."""
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        with torch.no_grad():
            decay = self.dit_config["ema_decay"]
            torch._foreach_lerp_(list(self.ema.parameters()), list(self.model.parameters()), 1.0 - decay)
        # The EMA needs no syncing: DDP keeps the weights, and so their averages, equal on every rank.

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.log(
            "train/latents_per_s",
            len(batch[0]) / (time.perf_counter() - self._step_start),
            sync_dist=True,
            reduce_fx="sum",
        )

    def validation_step(self, batch, batch_idx):
        """The loss at a fixed grid of t with fixed noise: deterministic, comparable across runs; and
        the same loss without the label, to see whether the model uses it."""
        latents, labels = batch
        generator = torch.Generator(device=latents.device).manual_seed(self.dit_config["seed"] * 100_003 + batch_idx)
        noise = torch.randn(latents.shape, generator=generator, device=latents.device)
        grid = (torch.arange(self.dit_config["val_timesteps"], device=latents.device) + 0.5) / self.dit_config[
            "val_timesteps"
        ]
        losses = [self._losses(latents, labels, t=t.expand(len(latents)), noise=noise)["loss"] for t in grid]
        loss = torch.stack(losses).mean()
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=len(latents))
        if self.model.null_label is not None:
            # Does the model use who is walking? The same loss with the null label instead of the user's:
            # label_gain is the fraction of the loss the label saves (0: the user is ignored).
            null = torch.full_like(labels, self.model.null_label)
            without = [self._losses(latents, null, t=t.expand(len(latents)), noise=noise)["loss"] for t in grid]
            without = torch.stack(without).mean()
            self.log("val/loss_without_label", without, sync_dist=True, batch_size=len(latents))
            self.log("val/label_gain", 1 - loss / without, sync_dist=True, batch_size=len(latents))

    def configure_optimizers(self):
        settings = self.dit_config["optimizer"]
        parameters = [*self.model.parameters(), *(self.projector.parameters() if self.projector else [])]
        optimizer = torch.optim.AdamW(
            parameters,
            lr=settings["lr"],
            betas=(0.9, settings["beta2"]),
            weight_decay=settings["weight_decay"],
            fused=fused_adam(self.trainer),
        )
        if not settings["decay_steps"]:
            return optimizer
        factor = functools.partial(lr_decay_factor, total=self.trainer.max_steps, decay=settings["decay_steps"])
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


@torch.no_grad()
def encoder_tokens(encoder: torch.nn.Module, images: Dataset, grid: tuple[int, int], batch_size: int) -> torch.Tensor:
    """REPA's targets: the frozen encoder's features of every image (items with an `image`, as
    MicroDopplerDataset gives them) on the DiT's token grid, as (N, grid_h · grid_w, D) float32 on
    the CPU, in row-major patch order like the DiT's tokens."""
    device = next(encoder.parameters()).device
    tokens = []
    loader = DataLoader(images, batch_size=batch_size, shuffle=False)
    for batch in progress(loader, desc="encoder features", unit="batch"):
        features = encoder(batch["image"].to(device), grid=grid)  # (B, D, grid_h, grid_w)
        tokens.append(features.flatten(2).transpose(1, 2).float().cpu())  # (B, T, D)
    return torch.cat(tokens)


def repa_targets(config: dict, model_kwargs: dict, data, manifest: str, teacher: str | None, device) -> tuple:
    """REPA's targets for every item of the train store, (N, T, D), and what the DiT records about
    its encoder: the spectrogram teacher (`teacher`, which must have seen exactly the images the DiT
    trains on: all train images, or the low-data draw `data.train_indices`) or DINOv2/MAE from
    dit.repa.weights. The images are the manifest's train split, in the store's order."""
    repa, data_config = config["dit"]["repa"], config["data"]
    images = MicroDopplerDataset(
        manifest, "train", data_config["size"], data_config["channels"], colormap=data_config["colormap"]
    )
    if [row["path"] for row in images.rows] != data.train.paths:
        raise SystemExit(f"{manifest} is not the manifest the latent store {data.train_store} was extracted from")
    if repa["encoder"] == "domain":
        if teacher is None:
            raise SystemExit("dit.repa.encoder domain aligns to the spectrogram teacher: pass --teacher")
        seen = [images.rows[i] for i in (data.train_indices or range(len(images)))]
        encoder, saw = load_teacher(teacher, images_seen=seen)
        alignment = {"encoder": "domain", "sha256": sha256_file(teacher), "teacher_saw": saw | {"paths": None}}
    else:
        if not repa["weights"]:
            raise SystemExit(f"dit.repa.encoder {repa['encoder']} needs its weight file: set dit.repa.weights")
        encoder = FoundationModel(repa["encoder"], repa["weights"])
        alignment = {"encoder": repa["encoder"], "sha256": sha256_file(repa["weights"])}
    side = model_kwargs["input_size"] // registry_size(model_kwargs["model_type"]).keywords["patch_size"]
    return encoder_tokens(encoder.to(device), images, (side, side), config["dit"]["batch_size"]), alignment
