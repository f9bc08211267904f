"""REPA: representation alignment of a diffusion transformer's hidden states (Yu et al. 2024,
arXiv 2410.06940; official REPA `models/sit.py` build_mlp and `loss.py` proj_loss).

The hidden tokens after an early block go through a small MLP projector and are pulled towards
a frozen encoder's patch features of the *clean* image by their cosine similarity, while the
model denoises the noisy latent. The projector exists only in training.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn, Tensor


def build_projector(hidden_size: int, projector_dim: int, feature_dim: int) -> nn.Sequential:
    """REPA's projector: Linear-SiLU-Linear-SiLU-Linear, hidden_size -> feature_dim per token."""
    return nn.Sequential(
        nn.Linear(hidden_size, projector_dim),
        nn.SiLU(),
        nn.Linear(projector_dim, projector_dim),
        nn.SiLU(),
        nn.Linear(projector_dim, feature_dim),
    )


def repa_loss(projected: Tensor, features: Tensor) -> Tensor:
    """Negative cosine similarity per token, averaged over tokens and batch (official proj_loss).

    projected: (B, T, D) projector outputs; features: (B, T, D) the encoder's patch features of
    the clean images, in the same row-major patch order. Returns a scalar in [-1, 1].
    """
    if projected.shape != features.shape:
        raise ValueError(
            f"REPA compares projected hidden states and encoder features token by token; got shapes "
            f"{tuple(projected.shape)} and {tuple(features.shape)}"
        )
    cosine = (F.normalize(projected, dim=-1) * F.normalize(features, dim=-1)).sum(dim=-1)  # (B, T)
    return -cosine.mean()
