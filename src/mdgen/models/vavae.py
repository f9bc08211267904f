"""VA-VAE: the KL autoencoder of LightningDiT ("Reconstruction vs. Generation", Yao et al. 2025).

The architecture is the LDM KL-autoencoder (Rombach et al. 2022): a convolutional Encoder that
predicts the mean and log-variance of a diagonal Gaussian over latents at 1/16 of the image side,
and a Decoder back to pixels. VA-VAE adds `linear_proj`, a 1x1 convolution that aligns the latents
with features of a frozen vision foundation model (DINOv2 or MAE) during training.

Parameter names and shapes are exactly those of the official code (hustvl/LightningDiT,
`vavae/ldm/models/autoencoder.py::AutoencoderKL` and `vavae/ldm/modules/diffusionmodules/model.py`),
so the released `vavae-imagenet256-f16d32-dinov2.pt` loads strictly (after dropping its `loss.*`
and `foundation_model.*` tensors) and our state dict loads strictly into the official model.
The defaults are the released f16d32 model (`vavae/configs/f16d32_vfdinov2.yaml`).

Images are (B, in_channels, H, W) in [-1, 1]; latents are (B, embed_dim, H/16, W/16).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from mdgen.data.images import model_channels
from mdgen.io import atomic_output
from mdgen.models.checkpoints import CheckpointMismatchError, load_strictly, read_checkpoint  # noqa: F401

VAE_LAYOUT = "a state dict or {'state_dict': ...}"

VF_MODELS = (None, "dinov2", "mae", "domain")  # domain: the spectrogram teacher (mdgen.models.teacher)
# Feature channels of the official foundation models (ViT-L); the teacher's follow its width.
FOUNDATION_FEATURE_DIM = 1024

# Tensors of an official training checkpoint that are not part of the autoencoder.
TRAINING_ONLY_PREFIXES = {
    "loss.": "training loss (LPIPS network, patch discriminator)",
    "foundation_model.": "frozen vision foundation model, used only by the VF alignment loss",
}
ALIGNMENT_HEAD_PREFIX = "linear_proj."


# ---------------------------------------------------------------------------------------------
# Building blocks (official names: ResnetBlock, AttnBlock, Downsample, Upsample)
# ---------------------------------------------------------------------------------------------


def group_norm(channels: int) -> nn.GroupNorm:
    """The official `Normalize`: 32 groups, eps 1e-6, learned scale and shift."""
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """norm-swish-conv twice, plus a 1x1 `nin_shortcut` on the skip path when the width changes.

    The official block also has a timestep projection (`temb_proj`), but the autoencoder builds
    it with temb_channels=0, so neither the layer nor its weights exist; we leave it out.
    """

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=1, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, in_channels, H, W) -> (B, out_channels, H, W)."""
        h = self.conv1(F.silu(self.norm1(x)))  # swish, the official `nonlinearity`
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        if self.in_channels != self.out_channels:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all H*W positions, with 1x1 convolutions as projections."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.norm = group_norm(in_channels)
        self.q = nn.Conv2d(in_channels, in_channels, kernel_size=1, stride=1, padding=0)
        self.k = nn.Conv2d(in_channels, in_channels, kernel_size=1, stride=1, padding=0)
        self.v = nn.Conv2d(in_channels, in_channels, kernel_size=1, stride=1, padding=0)
        self.proj_out = nn.Conv2d(in_channels, in_channels, kernel_size=1, stride=1, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C, H, W) -> (B, C, H, W)."""
        B, C, H, W = x.shape
        h = self.norm(x)
        q = self.q(h).flatten(2).transpose(1, 2)  # (B, H*W, C)
        k = self.k(h).flatten(2).transpose(1, 2)  # (B, H*W, C)
        v = self.v(h).flatten(2).transpose(1, 2)  # (B, H*W, C)
        # Same as the official bmm/softmax with scale C**-0.5 (the default), in less memory.
        h = F.scaled_dot_product_attention(q, k, v)  # (B, H*W, C)
        h = h.transpose(1, 2).reshape(B, C, H, W)  # (B, C, H, W)
        return x + self.proj_out(h)


class Downsample(nn.Module):
    """Stride-2 3x3 convolution, padded on the right and bottom only (official `pad=(0,1,0,1)`)."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C, H, W) -> (B, C, H/2, W/2)."""
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling followed by a 3x3 convolution."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C, H, W) -> (B, C, 2H, 2W)."""
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class MidBlock(nn.Module):
    """ResnetBlock - AttnBlock - ResnetBlock at the lowest resolution (official `mid`)."""

    def __init__(self, channels: int, dropout: float):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels, dropout)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C, h, w) -> (B, C, h, w)."""
        return self.block_2(self.attn_1(self.block_1(x)))


class ResolutionLevel(nn.Module):
    """One resolution of the Encoder (`down.i`) or Decoder (`up.i`).

    ResnetBlocks, each followed by an AttnBlock when the level's resolution is one of
    `attn_resolutions`, then an optional `downsample` (Encoder) or `upsample` (Decoder).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_blocks: int,
        with_attn: bool,
        resample: str | None,
        dropout: float,
    ):
        super().__init__()
        self.block = nn.ModuleList(
            ResnetBlock(in_channels if i == 0 else out_channels, out_channels, dropout) for i in range(num_blocks)
        )
        self.attn = nn.ModuleList(AttnBlock(out_channels) for _ in range(num_blocks) if with_attn)
        self.resample = resample
        if resample == "downsample":
            self.downsample = Downsample(out_channels)
        elif resample == "upsample":
            self.upsample = Upsample(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, in_channels, H, W) -> (B, out_channels, H', W'), H' = H/2, H or 2H by `resample`."""
        for i, block in enumerate(self.block):
            x = block(x)
            if len(self.attn) > 0:
                x = self.attn[i](x)
        if self.resample == "downsample":
            x = self.downsample(x)
        elif self.resample == "upsample":
            x = self.upsample(x)
        return x


# ---------------------------------------------------------------------------------------------
# Encoder and Decoder
# ---------------------------------------------------------------------------------------------


class Encoder(nn.Module):
    """Image (B, in_channels, H, W) -> Gaussian moments (B, 2*z_channels, H/f, W/f), f = 2**(len(ch_mult)-1).

    Level i has width ch*ch_mult[i]; attention sits at the levels whose nominal resolution
    (`resolution` halved per level, from the config, not the input) is in `attn_resolutions`.
    """

    def __init__(
        self,
        ch: int,
        ch_mult: tuple[int, ...],
        num_res_blocks: int,
        attn_resolutions: tuple[int, ...],
        dropout: float,
        in_channels: int,
        resolution: int,
        z_channels: int,
        double_z: bool = True,
    ):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, ch, kernel_size=3, stride=1, padding=1)
        levels, block_in, curr_res = [], ch, resolution
        for i_level, mult in enumerate(ch_mult):
            is_last = i_level == len(ch_mult) - 1
            levels.append(
                ResolutionLevel(
                    block_in,
                    ch * mult,
                    num_res_blocks,
                    curr_res in attn_resolutions,
                    None if is_last else "downsample",
                    dropout,
                )
            )
            block_in = ch * mult
            curr_res = curr_res if is_last else curr_res // 2
        self.down = nn.ModuleList(levels)
        self.mid = MidBlock(block_in, dropout)
        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(
            block_in, 2 * z_channels if double_z else z_channels, kernel_size=3, stride=1, padding=1
        )

    def forward(self, x: Tensor) -> Tensor:
        """x (B, in_channels, H, W) -> (B, 2*z_channels, H/f, W/f)."""
        h = self.conv_in(x)  # (B, ch, H, W)
        for level in self.down:
            h = level(h)  # level i: (B, ch*ch_mult[i], H/2**(i+1), W/2**(i+1)); the last keeps H/f, W/f
        h = self.mid(h)  # (B, ch*ch_mult[-1], H/f, W/f)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, 2*z_channels, H/f, W/f)


class Decoder(nn.Module):
    """Latent (B, z_channels, h, w) -> image (B, out_ch, h*f, w*f), the Encoder mirrored.

    Each level has num_res_blocks + 1 ResnetBlocks. `up` is indexed by level like the Encoder's
    `down` (up.0 is the full-resolution level) although it runs from the last level to the first.
    """

    def __init__(
        self,
        ch: int,
        out_ch: int,
        ch_mult: tuple[int, ...],
        num_res_blocks: int,
        attn_resolutions: tuple[int, ...],
        dropout: float,
        resolution: int,
        z_channels: int,
    ):
        super().__init__()
        block_in = ch * ch_mult[-1]
        curr_res = resolution // 2 ** (len(ch_mult) - 1)
        self.conv_in = nn.Conv2d(z_channels, block_in, kernel_size=3, stride=1, padding=1)
        self.mid = MidBlock(block_in, dropout)
        levels = [None] * len(ch_mult)
        for i_level in reversed(range(len(ch_mult))):
            levels[i_level] = ResolutionLevel(
                block_in,
                ch * ch_mult[i_level],
                num_res_blocks + 1,
                curr_res in attn_resolutions,
                "upsample" if i_level != 0 else None,
                dropout,
            )
            block_in = ch * ch_mult[i_level]
            curr_res = curr_res * 2 if i_level != 0 else curr_res
        self.up = nn.ModuleList(levels)
        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, out_ch, kernel_size=3, stride=1, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        """z (B, z_channels, h, w) -> (B, out_ch, h*f, w*f)."""
        h = self.conv_in(z)  # (B, ch*ch_mult[-1], h, w)
        h = self.mid(h)  # (B, ch*ch_mult[-1], h, w)
        for level in reversed(self.up):
            h = level(h)  # level i: (B, ch*ch_mult[i], ...), upsampled x2 unless i == 0
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, out_ch, h*f, w*f)


# ---------------------------------------------------------------------------------------------
# Posterior
# ---------------------------------------------------------------------------------------------


class DiagonalGaussianDistribution:
    """Diagonal Gaussian over latents, from moments (B, 2C, h, w) = [mean, logvar] along dim 1.

    logvar is clamped to [-30, 20] as in the official code, which keeps exp(logvar) finite.
    With deterministic=True the std and var are zero, sampling returns the mean and kl() is zero.
    """

    def __init__(self, parameters: Tensor, deterministic: bool = False):
        self.parameters = parameters
        self.deterministic = deterministic
        self.mean, logvar = torch.chunk(parameters, 2, dim=1)  # (B, C, h, w) each
        self.logvar = torch.clamp(logvar, -30.0, 20.0)
        if deterministic:
            self.std = self.var = torch.zeros_like(self.mean)
        else:
            self.std = torch.exp(0.5 * self.logvar)
            self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """mean + std * eps, eps ~ N(0, I) drawn from `generator` (on its device) when given. (B, C, h, w)."""
        device = generator.device if generator is not None else self.mean.device
        noise = torch.randn(self.mean.shape, generator=generator, device=device, dtype=self.mean.dtype)
        return self.mean + self.std * noise.to(self.mean.device)

    def mode(self) -> Tensor:
        """The mean, (B, C, h, w)."""
        return self.mean

    def kl(self) -> Tensor:
        """KL(q || N(0, I)) per sample, (B,): 0.5 * sum(mean^2 + var - 1 - logvar) over dims 1, 2, 3."""
        if self.deterministic:
            return torch.zeros(self.mean.shape[0], device=self.mean.device, dtype=self.mean.dtype)
        return 0.5 * torch.sum(self.mean.pow(2) + self.var - 1.0 - self.logvar, dim=[1, 2, 3])


# ---------------------------------------------------------------------------------------------
# VA-VAE
# ---------------------------------------------------------------------------------------------


class VAVAE(nn.Module):
    """The official AutoencoderKL without its loss and foundation model (those live in training code).

    Keyword names are the official ones: `ddconfig` (double_z, z_channels, resolution, in_channels,
    out_ch, ch, ch_mult, num_res_blocks, attn_resolutions, dropout) plus embed_dim, use_vf and
    reverse_proj. `vf_feature_dim` is the foundation model's feature width (1024 for the ViT-L
    DINOv2 and MAE of the official code). reverse_proj defaults to True, the released config's
    value (the official class defaults to False). Weights use PyTorch's default initialisation, as
    the official model does; nothing is special-cased.
    """

    def __init__(
        self,
        embed_dim: int = 32,
        z_channels: int = 32,
        resolution: int = 256,
        in_channels: int = 3,
        out_ch: int = 3,
        ch: int = 128,
        ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4),
        num_res_blocks: int = 2,
        attn_resolutions: tuple[int, ...] = (16,),
        dropout: float = 0.0,
        double_z: bool = True,
        use_vf: str | None = None,
        reverse_proj: bool = True,
        vf_feature_dim: int = FOUNDATION_FEATURE_DIM,
    ):
        super().__init__()
        if not double_z:
            raise ValueError(
                "VAVAE is the KL autoencoder of LightningDiT and needs double_z=True (the encoder predicts a "
                "mean and a log-variance per latent channel); got double_z=False. Set double_z: true in the "
                "model config."
            )
        if use_vf not in VF_MODELS:
            raise ValueError(f"use_vf must be one of {VF_MODELS} (the official foundation models); got {use_vf!r}")
        if ch % 32 != 0:
            raise ValueError(
                f"ch must be a multiple of 32 (every GroupNorm has 32 groups, as in the official model); got ch={ch}"
            )
        self.embed_dim, self.z_channels = embed_dim, z_channels
        self.in_channels, self.out_ch = in_channels, out_ch
        self.ch, self.ch_mult, self.num_res_blocks = ch, tuple(ch_mult), num_res_blocks
        self.use_vf, self.reverse_proj, self.vf_feature_dim = use_vf, reverse_proj, vf_feature_dim

        self.encoder = Encoder(
            ch=ch,
            ch_mult=self.ch_mult,
            num_res_blocks=num_res_blocks,
            attn_resolutions=tuple(attn_resolutions),
            dropout=dropout,
            in_channels=in_channels,
            resolution=resolution,
            z_channels=z_channels,
            double_z=double_z,
        )
        self.decoder = Decoder(
            ch=ch,
            out_ch=out_ch,
            ch_mult=self.ch_mult,
            num_res_blocks=num_res_blocks,
            attn_resolutions=tuple(attn_resolutions),
            dropout=dropout,
            resolution=resolution,
            z_channels=z_channels,
        )
        self.quant_conv = nn.Conv2d(2 * z_channels, 2 * embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, z_channels, 1)
        if use_vf is not None:
            # reverse_proj (the released model): latents are projected up to the feature width.
            if reverse_proj:
                self.linear_proj = nn.Conv2d(embed_dim, vf_feature_dim, kernel_size=1, bias=False)
            else:
                self.linear_proj = nn.Conv2d(vf_feature_dim, embed_dim, kernel_size=1, bias=True)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def encoder_last_layer(self) -> nn.Parameter:
        """Weight the adaptive VF-loss weight is computed against."""
        return self.encoder.conv_out.weight

    @property
    def decoder_last_layer(self) -> nn.Parameter:
        """Weight the adaptive GAN-loss weight is computed against (official `get_last_layer`)."""
        return self.decoder.conv_out.weight

    def encode(self, x: Tensor) -> DiagonalGaussianDistribution:
        """x (B, in_channels, H, W) in [-1, 1] -> posterior over latents (B, embed_dim, H/f, W/f)."""
        return self.posterior(self.encoder_output(x))

    def encoder_output(self, x: Tensor) -> Tensor:
        """x (B, in_channels, H, W) in [-1, 1] -> the encoder's output h (B, 2*z_channels, H/f, W/f)."""
        f = self.downsample_factor
        if x.ndim != 4 or x.shape[1] != self.in_channels or x.shape[2] % f or x.shape[3] % f:
            raise ValueError(
                f"VAVAE.encode expects images (B, {self.in_channels}, H, W) with H and W multiples of {f}; "
                f"got shape {tuple(x.shape)}. Check data.channels against the model's in_channels, and crop "
                f"or resize images to a multiple of {f}."
            )
        return self.encoder(x)

    def posterior(self, h: Tensor) -> DiagonalGaussianDistribution:
        """The encoder's output h (B, 2*z_channels, h, w) -> the posterior from quant_conv's moments."""
        return DiagonalGaussianDistribution(self.quant_conv(h))  # moments (B, 2*embed_dim, h, w)

    def decode(self, z: Tensor) -> Tensor:
        """z (B, embed_dim, h, w) -> images (B, out_ch, h*f, w*f)."""
        if z.ndim != 4 or z.shape[1] != self.embed_dim:
            raise ValueError(f"VAVAE.decode expects latents (B, {self.embed_dim}, h, w); got shape {tuple(z.shape)}")
        z = self.post_quant_conv(z)  # (B, z_channels, h, w)
        return self.decoder(z)  # (B, out_ch, h*f, w*f)

    def forward(self, x: Tensor, sample_posterior: bool = True) -> tuple[Tensor, DiagonalGaussianDistribution, Tensor]:
        """x (B, in_channels, H, W) -> (reconstruction (B, out_ch, H, W), posterior, z (B, embed_dim, H/f, W/f)).

        z is a posterior sample, or its mean when sample_posterior is False. Unlike the official
        forward, z is not passed through linear_proj here: the loss calls `align`.
        """
        posterior = self.encode(x)
        z = posterior.sample() if sample_posterior else posterior.mode()  # (B, embed_dim, H/f, W/f)
        return self.decode(z), posterior, z

    def align(self, z: Tensor, features: Tensor) -> tuple[Tensor, Tensor]:
        """The pair the VF alignment loss compares, both (B, D, h, w).

        z (B, embed_dim, h, w); features (B, vf_feature_dim, h, w) from the foundation model.
        reverse_proj: (linear_proj(z), features) with D = vf_feature_dim;
        otherwise:    (z, linear_proj(features)) with D = embed_dim.
        """
        if self.use_vf is None:
            raise ValueError(
                "align needs the VF alignment head, but this VAVAE was built with use_vf=None; "
                "set use_vf: dinov2 (or mae) in the model config to train with VF alignment"
            )
        if self.reverse_proj:
            z = self.linear_proj(z)  # (B, vf_feature_dim, h, w)
        else:
            features = self.linear_proj(features)  # (B, embed_dim, h, w)
        if z.shape != features.shape:
            raise ValueError(
                f"latents and foundation-model features must align position by position; after "
                f"projection got {tuple(z.shape)} vs {tuple(features.shape)}"
            )
        return z, features

    def official_state_dict(self) -> dict[str, Tensor]:
        """The weights under the official AutoencoderKL names (ours are the same names; the export hook)."""
        return dict(self.state_dict())

    def extra_repr(self) -> str:
        return (
            f"ch={self.ch}, ch_mult={self.ch_mult}, num_res_blocks={self.num_res_blocks}, "
            f"z_channels={self.z_channels}, embed_dim={self.embed_dim}, in_channels={self.in_channels}, "
            f"out_ch={self.out_ch}, use_vf={self.use_vf!r}, reverse_proj={self.reverse_proj}"
        )

    def load_pretrained(self, path_or_state_dict) -> PretrainedReport:
        """Load official or own weights strictly; returns what was loaded, dropped and adapted.

        Accepts a path or an already loaded dict, either `{'state_dict': ...}` or a bare state
        dict. A Lightning checkpoint whose autoencoder sits under one prefix (keys like
        `vae.encoder.conv_in.weight`) is unwrapped: the prefix is stripped and keys outside it are
        dropped. Dropped: `loss.*`, `foundation_model.*`, and `linear_proj.*` when use_vf is None.
        A 3-channel checkpoint is adapted to in_channels=1 / out_ch=1 (grey images). Every other
        difference raises CheckpointMismatchError before any weight is changed.
        """
        source, checkpoint = read_checkpoint(path_or_state_dict, VAE_LAYOUT)
        return self._load_checkpoint(checkpoint, source)

    def _load_checkpoint(self, checkpoint: Mapping, source: str | None) -> PretrainedReport:
        state_dict = checkpoint.get("state_dict", checkpoint)
        if not isinstance(state_dict, Mapping):
            raise ValueError(f"{source}: 'state_dict' is a {type(state_dict).__name__}, expected a dict of tensors")
        report = PretrainedReport(path=source)
        state_dict = _unwrap_prefix(dict(state_dict), report)
        state_dict = self._drop_unused(state_dict, report)
        state_dict = self._adapt_grey(state_dict, report)

        report.loaded = load_strictly(self, state_dict, source, _mismatch_hints)
        return report

    def _drop_unused(self, state_dict: dict, report: PretrainedReport) -> dict:
        prefixes = list(TRAINING_ONLY_PREFIXES)
        if self.use_vf is None:
            prefixes.append(ALIGNMENT_HEAD_PREFIX)
        kept = {}
        for key, value in state_dict.items():
            prefix = next((p for p in prefixes if key.startswith(p)), None)
            if prefix is None:
                kept[key] = value
            else:
                report.dropped.setdefault(prefix, []).append(key)
        return kept

    def _adapt_grey(self, state_dict: dict, report: PretrainedReport) -> dict:
        """Map RGB first/last convolutions onto 1-channel ones, exactly for grey images.

        A grey image repeated on 3 channels gives conv_in the sum of its 3 input filters; the mean
        of the 3 output channels is a convolution with the mean filter and mean bias.
        """
        conv_in = state_dict.get("encoder.conv_in.weight")
        if self.in_channels == 1 and conv_in is not None and conv_in.ndim == 4 and conv_in.shape[1] == 3:
            state_dict["encoder.conv_in.weight"] = conv_in.sum(dim=1, keepdim=True)
            report.adapted.append(
                "encoder.conv_in: summed the 3 RGB input filters for a 1-channel input "
                "(a grey image gives the same features as its 3-channel copy)"
            )
        conv_out = state_dict.get("decoder.conv_out.weight")
        if self.out_ch == 1 and conv_out is not None and conv_out.ndim == 4 and conv_out.shape[0] == 3:
            state_dict["decoder.conv_out.weight"] = conv_out.mean(dim=0, keepdim=True)
            if "decoder.conv_out.bias" in state_dict:
                state_dict["decoder.conv_out.bias"] = state_dict["decoder.conv_out.bias"].mean(dim=0, keepdim=True)
            report.adapted.append(
                "decoder.conv_out: averaged the 3 RGB output filters and biases into 1 channel "
                "(the output is the mean of the RGB reconstruction)"
            )
        return state_dict


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------


@dataclass
class PretrainedReport:
    """What `VAVAE.load_pretrained` did: the caller prints it."""

    path: str | None
    loaded: list[str] = field(default_factory=list)
    dropped: dict[str, list[str]] = field(default_factory=dict)
    adapted: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"VA-VAE weights from {self.path or '<in-memory state dict>'}: loaded {len(self.loaded)} tensors"]
        meaning = {**TRAINING_ONLY_PREFIXES, ALIGNMENT_HEAD_PREFIX: "VF alignment head, unused with use_vf=None"}
        for prefix, keys in self.dropped.items():
            why = meaning.get(prefix, "outside the autoencoder")
            lines.append(f"  dropped {len(keys)} {prefix}* tensors: {why}")
        lines += [f"  adapted {sentence}" for sentence in self.adapted]
        return "\n".join(lines)


def _mismatch_hints(missing: list[str]) -> list[str]:
    hints = []
    if missing and all(key.startswith(ALIGNMENT_HEAD_PREFIX) for key in missing):
        hints.append(
            "The checkpoint has no VF alignment head: build the model with use_vf: null, or check reverse_proj."
        )
    hints.append(
        "Check the model section of the config against the one the checkpoint was trained with: ddconfig "
        "(ch, ch_mult, num_res_blocks, attn_resolutions, z_channels, in_channels, out_ch), embed_dim, use_vf "
        "and reverse_proj."
    )
    return hints


def _unwrap_prefix(state_dict: dict, report: PretrainedReport) -> dict:
    """Strip a single wrapper prefix ("vae.") found in front of the encoder's first weight."""
    anchor = "encoder.conv_in.weight"
    if anchor in state_dict:
        return state_dict
    prefixes = {key[: -len(anchor)] for key in state_dict if key.endswith("." + anchor)}
    if len(prefixes) != 1:
        return state_dict  # nothing or several candidates: the strict check reports the keys
    prefix = prefixes.pop()
    inside = {key[len(prefix) :]: value for key, value in state_dict.items() if key.startswith(prefix)}
    for key in state_dict:
        if not key.startswith(prefix):
            report.dropped.setdefault(key.split(".")[0] + ".", []).append(key)
    report.adapted.append(
        f"stripped the prefix '{prefix}' from {len(inside)} keys (a checkpoint wrapping the autoencoder)"
    )
    return inside


def _check_constructor_kwargs(kwargs: Mapping, source: str) -> None:
    accepted = set(inspect.signature(VAVAE.__init__).parameters) - {"self"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ValueError(
            f"{source}: config['model'] has {unknown}, which VAVAE does not take; it takes {sorted(accepted)}"
        )


def vavae_kwargs(config: dict) -> dict:
    """VAVAE constructor arguments: the seed's ddconfig + embed_dim, channels from the data section
    (one, the magnitude, for colour-mapped files: mdgen.data.images.model_channels)."""
    vae = config["vae"]
    channels = model_channels(config["data"])
    return dict(
        embed_dim=vae["embed_dim"],
        **vae["ddconfig"],
        in_channels=channels,
        out_ch=channels,
        use_vf=vae["use_vf"],
        reverse_proj=vae["reverse_proj"],
        vf_feature_dim=8 * config["teacher"]["width"] if vae["use_vf"] == "domain" else FOUNDATION_FEATURE_DIM,
    )


def save_official(path, model: VAVAE, config: dict, extra_state: Mapping[str, Tensor] | None = None) -> None:
    """Write {"state_dict": official names, "config": config} atomically; config["model"] holds VAVAE's kwargs.

    extra_state adds training-only tensors under the official names (`loss.discriminator.*`,
    `loss.logvar`), so the file can resume official-style fine-tuning; loaders drop them.
    """
    if not isinstance(config.get("model"), Mapping):
        raise ValueError(
            "save_official needs config['model'] with the VAVAE constructor kwargs, so load_vavae "
            f"can rebuild the model; got config keys {sorted(config)}"
        )
    _check_constructor_kwargs(config["model"], "save_official")
    state_dict = model.official_state_dict()
    extra_state = dict(extra_state or {})
    outside = [key for key in extra_state if not key.startswith(tuple(TRAINING_ONLY_PREFIXES))]
    if outside:
        raise ValueError(
            f"extra_state may only hold {list(TRAINING_ONLY_PREFIXES)} tensors, which loaders drop; got {outside[:5]}"
        )
    checkpoint = {
        "state_dict": {key: value.detach().cpu() for key, value in {**state_dict, **extra_state}.items()},
        "config": config,
    }
    with atomic_output(path) as tmp:
        torch.save(checkpoint, tmp)


def load_vavae(path, **overrides) -> VAVAE:
    """Rebuild a VAVAE from a file written by save_official and load it strictly.

    overrides replace constructor kwargs from the file, e.g. use_vf=None for inference, which
    drops the alignment head. The model is returned in training mode like any new nn.Module.
    """
    source, checkpoint = read_checkpoint(path, VAE_LAYOUT)
    config = checkpoint.get("config")
    if not isinstance(config, Mapping) or not isinstance(config.get("model"), Mapping):
        raise ValueError(
            f"{source} has no config['model'] (the VAVAE constructor kwargs), so it was not written "
            f"by save_official; for an official checkpoint build VAVAE(...) and call load_pretrained"
        )
    kwargs = {**config["model"], **overrides}
    _check_constructor_kwargs(kwargs, source)
    model = VAVAE(**kwargs)
    model._load_checkpoint(checkpoint, source)
    return model
