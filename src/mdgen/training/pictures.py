"""Training progress as pictures in TensorBoard: what the VA-VAE makes of a few val images, and
what the DiT samples for a few users, every few hundred steps; and the DiT's fidelity probe.

Cheap by design (a handful of images, a few sampling steps) and only on rank 0; without a
TensorBoard logger on the Trainer the callbacks do nothing.
"""

from __future__ import annotations

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger
from torchvision.utils import make_grid

from mdgen.data.dataset import to_uint8
from mdgen.evaluation.classifier import predict
from mdgen.evaluation.identity import judge_view
from mdgen.sampling import sample_user
from mdgen.transport import sample_ode

PICTURE_SAMPLING_STEPS = 10


def tensorboard_of(trainer: pl.Trainer):
    """The SummaryWriter of the Trainer's TensorBoard logger, or None."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


class EveryNSteps(pl.Callback):
    """Calls `draw(trainer, pl_module)` -> (tag, images (N, C, H, W) in [-1, 1], columns) at step 0
    and whenever the global step passes another multiple of `every_n_steps`. With a `colormap`,
    1-channel magnitudes are shown through it, as the files would look."""

    def __init__(self, every_n_steps: int, colormap: str | None = None):
        self.every_n_steps = every_n_steps
        self.colormap = colormap
        self._last = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        due = self._last is None or step // self.every_n_steps > self._last // self.every_n_steps
        writer = tensorboard_of(trainer)
        if not due or writer is None or not trainer.is_global_zero:
            return
        self._last = step
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            tag, images, columns = self.draw(trainer, pl_module)
        pl_module.train(was_training)
        if self.colormap:
            images = torch.from_numpy(np.stack(to_uint8(images, self.colormap))).permute(0, 3, 1, 2) / 127.5 - 1
        grid = make_grid(((images.float().cpu() + 1) / 2).clamp(0, 1), nrow=columns, padding=1, pad_value=1.0)
        writer.add_image(tag, grid, global_step=step)

    def draw(self, trainer, pl_module) -> tuple[str, torch.Tensor, int]:
        raise NotImplementedError


class ReconstructionPictures(EveryNSteps):
    """Top row: fixed val images; bottom row: the VA-VAE's reconstructions (posterior means)."""

    def __init__(self, images: torch.Tensor, every_n_steps: int, colormap: str | None = None):
        super().__init__(every_n_steps, colormap)
        self.images = images  # (N, C, H, W) in [-1, 1]

    def draw(self, trainer, pl_module):
        images = self.images.to(pl_module.device)
        reconstructions, _, _ = pl_module.vae(images, sample_posterior=False)
        return "reconstructions (top: val input)", torch.cat([images, reconstructions.clamp(-1, 1)]), len(images)


class SamplePictures(EveryNSteps):
    """One sample per shown user from the EMA weights (fixed noise, Euler, a few steps, no guidance),
    decoded with the VA-VAE the latents came from."""

    def __init__(
        self, vae, users: list[int], latent_shape, mean, std, every_n_steps: int, seed: int = 0, colormap=None
    ):
        super().__init__(every_n_steps, colormap)
        self.vae = vae.eval().requires_grad_(False)
        self.users = torch.tensor(users)
        generator = torch.Generator().manual_seed(seed)
        self.noise = torch.randn((len(users), *latent_shape), generator=generator)
        self.mean, self.std = mean.view(-1, 1, 1), std.view(-1, 1, 1)

    def draw(self, trainer, pl_module):
        device = pl_module.device
        model, labels = pl_module.ema, self.users.to(device)
        latents = sample_ode(lambda x, t: model(x, t, labels), self.noise.to(device), num_steps=PICTURE_SAMPLING_STEPS)
        self.vae.to(device)
        images = self.vae.decode(latents * self.std.to(device) + self.mean.to(device))
        return "samples (one per user, EMA)", images, len(images)


class FidelityProbe(pl.Callback):
    """Steps-to-fidelity: every `every_n_steps` (and after the last step), `per_user` samples of
    every user from the EMA weights, sampled as the `sample` stage does (`settings`: the sample
    section), decoded, and classified by each judge: logged as `probe/<judge name>`, the fraction
    recognised as their user.

    judges: {name: classifier} taking images at `judge_size` in [-1, 1] (see
    mdgen.evaluation.identity.judge_view: samples are judged as the PNG files they would be).
    """

    def __init__(
        self,
        vae,
        judges: dict,
        judge_size: int,
        latent_shape,
        mean,
        std,
        settings: dict,
        *,
        every_n_steps: int,
        per_user: int,
        num_classes: int,
        colormap: str | None = None,
    ):
        self.vae = vae.eval().requires_grad_(False)
        self.judges, self.judge_size = judges, judge_size
        self.latent_shape, self.settings = latent_shape, settings
        self.mean, self.std = mean.view(-1, 1, 1), std.view(-1, 1, 1)
        self.every_n_steps, self.per_user, self.num_classes = every_n_steps, per_user, num_classes
        self.colormap = colormap
        self._last = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if not trainer.is_global_zero:  # under DDP every rank holds the same EMA: rank 0 measures
            return
        if step // self.every_n_steps > self._last // self.every_n_steps or step == trainer.max_steps:
            self._last = step
            self.measure(pl_module)

    @torch.no_grad()
    def measure(self, pl_module) -> dict[str, float]:
        device, was_training = pl_module.device, pl_module.training
        pl_module.eval()  # in training mode the DiT would drop labels
        self.vae.to(device)
        mean, std = self.mean.to(device), self.std.to(device)
        images, labels = [], []
        for user in range(self.num_classes):
            decoded = sample_user(
                pl_module.ema, self.vae, user, self.per_user, self.settings, self.latent_shape, mean, std
            )
            images += to_uint8(decoded, self.colormap)
            labels += [user] * len(decoded)
        view, labels = judge_view(images, self.judge_size), torch.tensor(labels)
        scores = {
            f"probe/{name}": (predict(judge, view)[0].cpu() == labels).float().mean().item()
            for name, judge in self.judges.items()
        }
        pl_module.train(was_training)
        pl_module.log_dict(scores)
        return scores
