"""The PatchGAN discriminator and GAN loss helpers of the VA-VAE loss.

A copy of what LightningDiT's `vavae/ldm/modules/losses/contperceptual.py` imports from
taming-transformers (`taming/modules/discriminator/model.py`, `taming/modules/losses/vqperceptual.py`,
CompVis/taming-transformers @ 3ba01b2). Module and parameter names are taming's (`main.0.weight`,
`main.3.running_mean`, ...) so that an official checkpoint's `loss.discriminator.*` loads strictly.
Only the BatchNorm variant is kept: the official VA-VAE configs never set `use_actnorm`.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class NLayerDiscriminator(nn.Module):
    """PatchGAN discriminator of pix2pix: one real/fake logit per overlapping image patch.

    With the default n_layers=3 a 256 × 256 image gives 30 × 30 logits and a 64 × 64 image 6 × 6
    (each of the three stride-2 convolutions halves the size, the two final stride-1 4 × 4
    convolutions with padding 1 remove one pixel each).
    """

    def __init__(self, input_nc: int = 3, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        kernel_size, padding = 4, 1
        # BatchNorm has its own shift, so the convolutions before it have no bias (taming's use_bias).
        sequence = [nn.Conv2d(input_nc, ndf, kernel_size, stride=2, padding=padding), nn.LeakyReLU(0.2, True)]
        channel_mult = 1
        for n in range(1, n_layers):
            previous_mult, channel_mult = channel_mult, min(2**n, 8)
            sequence += [
                nn.Conv2d(ndf * previous_mult, ndf * channel_mult, kernel_size, stride=2, padding=padding, bias=False),
                nn.BatchNorm2d(ndf * channel_mult),
                nn.LeakyReLU(0.2, True),
            ]
        previous_mult, channel_mult = channel_mult, min(2**n_layers, 8)
        sequence += [
            nn.Conv2d(ndf * previous_mult, ndf * channel_mult, kernel_size, stride=1, padding=padding, bias=False),
            nn.BatchNorm2d(ndf * channel_mult),
            nn.LeakyReLU(0.2, True),
        ]
        sequence += [nn.Conv2d(ndf * channel_mult, 1, kernel_size, stride=1, padding=padding)]
        self.main = nn.Sequential(*sequence)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, input_nc, H, W) -> patch logits (B, 1, H', W')."""
        return self.main(x)


def weights_init(module: nn.Module) -> None:
    """DCGAN initialisation, applied with `discriminator.apply(weights_init)` (taming's weights_init).

    Matches on the class name as taming does, so every Conv*/BatchNorm* class is covered; the
    convolution biases keep PyTorch's default initialisation, as in taming.
    """
    classname = module.__class__.__name__
    if "Conv" in classname:
        nn.init.normal_(module.weight.data, 0.0, 0.02)
    elif "BatchNorm" in classname:
        nn.init.normal_(module.weight.data, 1.0, 0.02)
        nn.init.constant_(module.bias.data, 0)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Hinge discriminator loss: 0.5 * (mean(relu(1 - real)) + mean(relu(1 + fake)))."""
    loss_real = torch.mean(F.relu(1.0 - logits_real))
    loss_fake = torch.mean(F.relu(1.0 + logits_fake))
    return 0.5 * (loss_real + loss_fake)


def vanilla_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating GAN discriminator loss: 0.5 * (mean(softplus(-real)) + mean(softplus(fake)))."""
    return 0.5 * (torch.mean(F.softplus(-logits_real)) + torch.mean(F.softplus(logits_fake)))


def adopt_weight(weight: float, global_step: int, threshold: int = 0, value: float = 0.0) -> float:
    """`value` (0) before step `threshold`, `weight` from then on: switches the GAN terms on at disc_start."""
    if global_step < threshold:
        return value
    return weight
