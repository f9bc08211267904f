"""Losses: the VA-VAE loss (L1 + LPIPS, KL, PatchGAN, vision-foundation alignment) and its parts,
and REPA's alignment loss for the DiT.

No weights are loaded on import; they come only from the local files passed to build_lpips and
FoundationModel. The names below are imported on first use, because timm and lpips (torchvision)
each take seconds to import and most users of this package need only one of them.
"""

from __future__ import annotations

import importlib

_MODULE_OF = {
    "NLayerDiscriminator": "discriminator",
    "adopt_weight": "discriminator",
    "hinge_d_loss": "discriminator",
    "vanilla_d_loss": "discriminator",
    "weights_init": "discriminator",
    "FOUNDATION_MODELS": "foundation",
    "FoundationModel": "foundation",
    "FeaturePerceptualLoss": "perceptual",
    "PerceptualLoss": "perceptual",
    "build_projector": "repa",
    "repa_loss": "repa",
    "build_lpips": "perceptual",
    "LPIPSWithDiscriminator": "vavae_loss",
    "adaptive_weight": "vavae_loss",
    "vf_loss": "vavae_loss",
}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
