"""Sampling a class-conditional LightningDiT: classifier-free guidance and one user's images.

The `sample` stage and the DiT's fidelity probe (mdgen.training.pictures) draw samples the same
way, with the `sample` config section's settings.
"""

from __future__ import annotations

import torch

from mdgen.transport import sample_ode


def guided_velocity(model, labels: torch.Tensor, settings: dict):
    """v(x, t) with classifier-free guidance: one batched forward over [x, x] with [labels, null]."""
    if settings["cfg_scale"] == 1:  # no guidance: the conditional velocity alone, half the compute
        return lambda x, t: model(x, t, labels)
    if model.null_label is None:
        raise SystemExit(
            "This DiT was trained without label dropout (dit.class_dropout_prob: 0), so it has no "
            "unconditional prediction to guide with: set sample.cfg_scale: 1, or retrain with dropout."
        )
    null = torch.full_like(labels, model.null_label)
    y = torch.cat([labels, null])

    def velocity(x, t):
        combined = model.forward_with_cfg(
            torch.cat([x, x]),
            torch.cat([t, t]),
            y,
            settings["cfg_scale"],
            cfg_interval_start=settings["cfg_interval_start"],
            guidance_channels=settings["guidance_channels"],
        )
        return combined[: len(x)]

    return velocity


def sample_user(model, vae, user: int, count: int, settings: dict, latent_shape, mean, std) -> torch.Tensor:
    """`count` decoded images (B, C, H, W) in [-1, 1] for one user, on the model's device."""
    generator = torch.Generator().manual_seed(settings["seed"] * 1_000_003 + user)
    device = mean.device
    noise = torch.randn((count, *latent_shape), generator=generator).to(
        device
    )  # drawn on the CPU: any device, same noise
    images = []
    for batch in noise.split(settings["batch_size"]):
        labels = torch.full((len(batch),), user, dtype=torch.long, device=device)
        latents = sample_ode(
            guided_velocity(model, labels, settings),
            batch,
            num_steps=settings["num_sampling_steps"],
            method=settings["sampling_method"],
            shift=settings["timestep_shift"],
        )
        images.append(vae.decode(latents * std + mean).clamp(-1, 1))
    return torch.cat(images)
