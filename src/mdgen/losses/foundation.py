"""Frozen vision foundation models (DINOv2, MAE) whose patch features VA-VAE aligns its latents to.

LightningDiT's `vavae/ldm/models/foundation_models.py` builds them with
`timm.create_model("hf-hub:timm/<name>", pretrained=True, dynamic_img_size=True)`, which downloads.
Here the same timm architectures read their weights from a local file: the `model.safetensors` of
the timm Hugging Face repository (e.g. huggingface.co/timm/vit_large_patch14_dinov2.lvd142m), or a
.pth/.bin state dict; timm's checkpoint filter also converts Meta's original DINOv2/MAE checkpoints.
"""

from __future__ import annotations

import os

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

# kind -> (timm model name, patch size). Both are ViT-L: 1024 feature channels.
FOUNDATION_MODELS = {
    "dinov2": ("vit_large_patch14_dinov2.lvd142m", 14),
    "mae": ("vit_large_patch16_224.mae", 16),
}

# The official code drops exactly one token (the class token) before reshaping to the patch grid.
OFFICIAL_PREFIX_TOKENS = 1


class FoundationModel(nn.Module):
    """A frozen timm ViT that maps images to a feature map on the VAE's latent grid.

    kind: "dinov2" or "mae".
    weights: path of the timm weight file; None only with random_weights=True.
    random_weights: with weights None, build the architecture with random weights (tests only).
    model_name: another timm model name (default: the official one for `kind`).
    **model_kwargs: passed to timm.create_model, e.g. embed_dim=64, depth=2, num_heads=2 for a
        small model in tests that goes through the same loading code.
    """

    def __init__(
        self,
        kind: str,
        weights: str | None,
        *,
        random_weights: bool = False,
        model_name: str | None = None,
        **model_kwargs,
    ):
        super().__init__()
        if kind not in FOUNDATION_MODELS:
            raise ValueError(f"unknown foundation model kind {kind!r}: expected one of {sorted(FOUNDATION_MODELS)}")
        official_name, official_patch = FOUNDATION_MODELS[kind]
        name = model_name or official_name
        if ":" in name:
            # "hf-hub:..." / "local-dir:..." names make timm ignore the local file and fetch weights.
            raise ValueError(f"model_name must be a plain timm model name without a source prefix, got {name!r}")

        if weights is not None:
            if not os.path.isfile(weights):
                raise FileNotFoundError(
                    f"{kind} weight file {weights} does not exist (vae.foundation.weights): expected the "
                    f"model.safetensors of the timm model {name} (huggingface.co/timm/{name})"
                )
            # A `file` in the pretrained config makes timm load it instead of downloading, through the
            # model's checkpoint filter (position embedding resampling, DINOv2/MAE key conversion) and
            # a strict load_state_dict.
            try:
                model = timm.create_model(
                    name,
                    pretrained=True,
                    pretrained_cfg_overlay=dict(file=weights),
                    dynamic_img_size=True,
                    **model_kwargs,
                )
            except RuntimeError as error:  # strict load_state_dict lists the missing/unexpected keys
                raise RuntimeError(
                    f"{weights} does not fit the timm model {name} {model_kwargs or ''}: expected the "
                    f"model.safetensors of huggingface.co/timm/{name}. {error}"
                ) from error
        elif random_weights:
            model = timm.create_model(name, pretrained=False, dynamic_img_size=True, **model_kwargs)
        else:
            raise FileNotFoundError(
                f"the {kind} foundation model needs its weights: download model.safetensors of the timm model "
                f"{name} (huggingface.co/timm/{name}) and set vae.foundation.weights in the config to its path"
            )

        if model_name is None and (
            model.patch_embed.patch_size[0] != official_patch or model.num_prefix_tokens != OFFICIAL_PREFIX_TOKENS
        ):
            raise ValueError(
                f"{name} with {model_kwargs} has patch size {model.patch_embed.patch_size} and "
                f"{model.num_prefix_tokens} prefix tokens; the official {kind} has {official_patch} and "
                f"{OFFICIAL_PREFIX_TOKENS}"
            )
        self.kind = kind
        self.model = model.eval().requires_grad_(False)
        self.patch_size = tuple(model.patch_embed.patch_size)

    @property
    def feature_dim(self) -> int:
        """Channels of the feature map: 1024 for the official ViT-L models."""
        return self.model.embed_dim

    def train(self, mode: bool = True) -> FoundationModel:
        # Frozen: a LightningModule's .train() must not switch dropout/drop-path on.
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """x: (B, 1 or 3, H, W) in [-1, 1] -> features (B, feature_dim, grid_h, grid_w).

        Preprocessing as in the official code, because the released VA-VAE was trained with it:
        the [-1, 1] image goes in without ImageNet mean/std normalisation, and is resized
        (bilinear, align_corners=False, no antialias) so that the ViT's patch grid equals the latent
        grid. Officially DINOv2 always gets 224 × 224 (a 256 px image with a 16 × 16 latent grid,
        16 patches of 14 px) and MAE the image as it is (256 px, 16 patches of 16 px); resizing to
        grid × patch gives those sizes and also works for other image and latent sizes (the
        official reshape to (H/16, W/16) fits 256 px DINOv2 inputs only).
        """
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        batch, grid_h, grid_w = x.shape[0], grid[0], grid[1]
        size = (grid_h * self.patch_size[0], grid_w * self.patch_size[1])
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        tokens = self.model.forward_features(x)  # (B, prefix + grid_h * grid_w, D)
        patches = tokens[:, self.model.num_prefix_tokens :]  # (B, grid_h * grid_w, D)
        return patches.reshape(batch, grid_h, grid_w, -1).permute(0, 3, 1, 2)  # (B, D, grid_h, grid_w)
