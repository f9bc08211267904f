"""LightningDiT: the class-conditional latent diffusion transformer of "Reconstruction vs. Generation"
(Yao et al. 2025), here conditioned on the person (one class per user) instead of the ImageNet class.

A DiT (Peebles & Xie 2023) with adaLN-Zero blocks, plus the LightningDiT changes: SwiGLU feed-forward,
2-D rotary position embeddings on queries and keys (EVA-02's VisionRotaryEmbeddingFast), RMSNorm,
optional QK-norm and optional shift-free adaLN. It predicts the flow-matching velocity of latents.

Module and parameter names and shapes are exactly those of the official code (hustvl/LightningDiT,
`models/lightningdit.py`), so the `model` or `ema` weights of an official checkpoint load strictly
and give the official outputs. Conventions of the official code that we keep:

- t is the flow time in [0, 1] of the Linear transport path, x_t = t * data + (1 - t) * noise, so
  t = 0 is pure noise; it goes into the sinusoidal timestep embedding unscaled (no * 1000).
- The fixed 2-D sin-cos `pos_embed` is an nn.Parameter with requires_grad=False: it is in the state
  dict. So are the rotary tables `feat_rope.freqs_cos` / `feat_rope.freqs_sin` (persistent buffers).
- The null (unconditional) label is `num_classes`: the embedding table has num_classes + 1 rows
  whenever class_dropout_prob > 0.
- Classifier-free guidance runs the conditional and unconditional halves in one batch and, inside
  the CFG interval, leaves the high-noise part (t < cfg_interval_start) unguided. The official code
  guides only the first 3 latent channels (inherited from DiT); we guide all channels unless
  guidance_channels=3 asks for the official behaviour.

The constructor defaults are the released model's settings (configs/lightningdit_xl_vavae_f16d32.yaml:
use_swiglu, use_rope, use_rmsnorm on, use_qknorm and wo_shift off); the official constructor has
these three switched off by default, and its configs switch them on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Mlp, PatchEmbed
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from mdgen.io import atomic_output
from mdgen.models.checkpoints import CheckpointMismatchError, load_strictly, read_checkpoint  # noqa: F401

DIT_LAYOUT = "a state dict or an official training checkpoint {'model', 'ema', 'opt', 'config'}"

# Wrapper prefixes that training code puts in front of every key: DistributedDataParallel, torch.compile.
WRAPPER_PREFIXES = {"module.": "DistributedDataParallel", "_orig_mod.": "torch.compile"}


def modulate(x: Tensor, shift: Tensor | None, scale: Tensor) -> Tensor:
    """adaLN: scale and shift the normalised tokens (N, T, D) by per-sample (N, D) vectors
    (x · (1 + scale) + shift, in one fused multiply-add)."""
    if shift is None:
        return x * (1 + scale.unsqueeze(1))
    return torch.addcmul(shift.unsqueeze(1), x, 1 + scale.unsqueeze(1))


# ---------------------------------------------------------------------------------------------
# Embedders: timestep, label, rotary position
# ---------------------------------------------------------------------------------------------


class TimestepEmbedder(nn.Module):
    """Embeds scalar flow times into vectors: sinusoidal features, then a 2-layer MLP (as DiT)."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size, bias=True),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size, bias=True),
        )

    @staticmethod
    def timestep_embedding(t: Tensor, dim: int, max_period: int = 10000) -> Tensor:
        """(N,) possibly fractional times -> (N, dim) [cos | sin] features (GLIDE's embedding)."""
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half).to(t.device)
        args = t[:, None].float() * freqs[None]  # (N, half)
        embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
        return embedding

    def forward(self, t: Tensor) -> Tensor:
        t_freq = self.timestep_embedding(t, self.frequency_embedding_size)  # (N, 256)
        return self.mlp(t_freq.to(self.mlp[0].weight.dtype))  # (N, D)


class LabelEmbedder(nn.Module):
    """Embeds labels into vectors; replaces labels by the null label `num_classes` for CFG training.

    The table has a row for the null label only when dropout_prob > 0 (official, as DiT).
    """

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float):
        super().__init__()
        use_cfg_embedding = dropout_prob > 0
        self.embedding_table = nn.Embedding(num_classes + use_cfg_embedding, hidden_size)
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob

    def token_drop(self, labels: Tensor, force_drop_ids: Tensor | None = None) -> Tensor:
        """Replace each label by the null label with probability dropout_prob, or where force_drop_ids == 1."""
        if force_drop_ids is None:
            drop_ids = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
        else:
            drop_ids = force_drop_ids == 1
        return torch.where(drop_ids, self.num_classes, labels)

    def forward(self, labels: Tensor, train: bool, force_drop_ids: Tensor | None = None) -> Tensor:
        if (train and self.dropout_prob > 0) or force_drop_ids is not None:
            labels = self.token_drop(labels, force_drop_ids)
        return self.embedding_table(labels)  # (N, D)


class VisionRotaryEmbeddingFast(nn.Module):
    """2-D rotary embedding of EVA-02, as the official code builds it (freqs_for='lang', theta 10000).

    dim is half a head: the first half of each head's channels rotates with the token's row, the
    second half with its column. Tokens are in row-major order. The cos/sin tables (T, head_dim)
    are persistent buffers, so they are in the state dict.
    """

    def __init__(self, dim: int, pt_seq_len: int = 16):
        super().__init__()
        inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))  # (dim/2,)
        # the official positions: arange(ft_seq_len) / ft_seq_len * pt_seq_len with ft_seq_len = pt_seq_len
        positions = torch.arange(pt_seq_len) / pt_seq_len * pt_seq_len
        freqs = (positions[:, None] * inv_freq[None]).repeat_interleave(2, dim=-1)  # (L, dim): one angle per pair
        rows = freqs[:, None, :].expand(pt_seq_len, pt_seq_len, dim)
        cols = freqs[None, :, :].expand(pt_seq_len, pt_seq_len, dim)
        freqs = torch.cat([rows, cols], dim=-1).reshape(pt_seq_len * pt_seq_len, 2 * dim)  # (T, head_dim)
        self.register_buffer("freqs_cos", freqs.cos())
        self.register_buffer("freqs_sin", freqs.sin())

    def forward(self, t: Tensor) -> Tensor:
        return t * self.freqs_cos + rotate_half(t) * self.freqs_sin  # (N, heads, T, head_dim)


# ---------------------------------------------------------------------------------------------
# Building blocks: normalisation, attention, feed-forward, transformer block, final layer
# ---------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """RMSNorm of Llama: normalise in float32, cast back, then scale by a learned weight."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


class Attention(nn.Module):
    """Multi-head self-attention with optional QK-norm and rotary embedding, fused (SDPA)."""

    def __init__(
        self, dim: int, num_heads: int = 8, qkv_bias: bool = False, qk_norm: bool = False, use_rmsnorm: bool = False
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden_size {dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        norm_layer = RMSNorm if use_rmsnorm else nn.LayerNorm
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm = norm_layer(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = norm_layer(self.head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, rope: VisionRotaryEmbeddingFast | None = None) -> Tensor:
        N, T, D = x.shape
        qkv = self.qkv(x).reshape(N, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (N, heads, T, head_dim)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = rope(q), rope(k)
        x = F.scaled_dot_product_attention(q, k, v)  # (N, heads, T, head_dim)
        x = x.transpose(1, 2).reshape(N, T, D)  # (N, T, D)
        return self.proj(x)


class SwiGLUFFN(nn.Module):
    """SwiGLU feed-forward: w3(silu(x W1) * x W2), with W1 and W2 fused into one layer `w12`."""

    def __init__(self, in_features: int, hidden_features: int):
        super().__init__()
        self.w12 = nn.Linear(in_features, 2 * hidden_features, bias=True)
        self.w3 = nn.Linear(hidden_features, in_features, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        x1, x2 = self.w12(x).chunk(2, dim=-1)  # each (N, T, hidden)
        return self.w3(F.silu(x1) * x2)


class LightningDiTBlock(nn.Module):
    """A transformer block with adaLN-Zero conditioning (optionally without the shift terms)."""

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        use_qknorm: bool = False,
        use_swiglu: bool = False,
        use_rmsnorm: bool = False,
        wo_shift: bool = False,
    ):
        super().__init__()
        if use_rmsnorm:
            self.norm1 = RMSNorm(hidden_size)
            self.norm2 = RMSNorm(hidden_size)
        else:
            self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
            self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(
            hidden_size, num_heads=num_heads, qkv_bias=True, qk_norm=use_qknorm, use_rmsnorm=use_rmsnorm
        )
        mlp_hidden_dim = int(hidden_size * mlp_ratio)
        if use_swiglu:
            # 2/3 of the GELU MLP's width keeps the parameter count of the 2-matrix MLP (official)
            self.mlp = SwiGLUFFN(hidden_size, int(2 / 3 * mlp_hidden_dim))
        else:
            self.mlp = Mlp(
                in_features=hidden_size,
                hidden_features=mlp_hidden_dim,
                act_layer=partial(nn.GELU, approximate="tanh"),
                drop=0,
            )
        self.adaLN_modulation = nn.Sequential(
            nn.SiLU(),
            nn.Linear(hidden_size, (4 if wo_shift else 6) * hidden_size, bias=True),
        )
        self.wo_shift = wo_shift

    def forward(self, x: Tensor, c: Tensor, feat_rope: VisionRotaryEmbeddingFast | None = None) -> Tensor:
        if self.wo_shift:
            scale_msa, gate_msa, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(4, dim=1)
            shift_msa = shift_mlp = None
        else:
            shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        # x + gate · branch(x), each residual update one fused multiply-add
        x = torch.addcmul(x, gate_msa.unsqueeze(1), self.attn(modulate(self.norm1(x), shift_msa, scale_msa), feat_rope))
        x = torch.addcmul(x, gate_mlp.unsqueeze(1), self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp)))
        return x  # (N, T, D)


class FinalLayer(nn.Module):
    """adaLN (always with shift) and a linear map from tokens to patches of the output."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int, use_rmsnorm: bool = False):
        super().__init__()
        if use_rmsnorm:
            self.norm_final = RMSNorm(hidden_size)
        else:
            self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size, bias=True))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        x = modulate(self.norm_final(x), shift, scale)
        return self.linear(x)  # (N, T, patch_size ** 2 * out_channels)


# ---------------------------------------------------------------------------------------------
# LightningDiT
# ---------------------------------------------------------------------------------------------


class LightningDiT(nn.Module):
    """Latent diffusion transformer conditioned on a flow time and a label (here: the user).

    input_size: latent side (image side / VAE downsampling, 256 / 16 = 16 for the released model).
    num_classes: number of labels (users); the label `num_classes` is the null label (`null_label`),
        which exists only with class_dropout_prob > 0 (`null_label` is None otherwise).
    learn_sigma: predict 2 * in_channels channels and drop the second half (official, kept for checkpoints).
    use_checkpoint: recompute each block in the backward pass (torch.utils.checkpoint, non-reentrant).
    """

    def __init__(
        self,
        input_size: int = 32,
        patch_size: int = 2,
        in_channels: int = 32,
        hidden_size: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        class_dropout_prob: float = 0.1,
        num_classes: int = 1000,
        learn_sigma: bool = False,
        use_qknorm: bool = False,
        use_swiglu: bool = True,
        use_rope: bool = True,
        use_rmsnorm: bool = True,
        wo_shift: bool = False,
        use_checkpoint: bool = False,
    ):
        super().__init__()
        if input_size % patch_size:
            raise ValueError(f"input_size {input_size} must be divisible by patch_size {patch_size}")
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} must be divisible by num_heads {num_heads}")
        if hidden_size % 4:
            raise ValueError(f"hidden_size {hidden_size} must be divisible by 4 for the 2-D sin-cos embedding")
        if use_rope and (hidden_size // num_heads) % 4:
            raise ValueError(
                f"the 2-D rotary embedding needs a head size divisible by 4; hidden_size "
                f"{hidden_size} / num_heads {num_heads} = {hidden_size // num_heads}"
            )
        self.input_size = input_size
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.hidden_size = hidden_size
        self.depth = depth
        self.num_heads = num_heads
        self.num_classes = num_classes
        # the label that means "no user"; it has an embedding row only when labels are dropped in training
        self.null_label = num_classes if class_dropout_prob > 0 else None
        self.learn_sigma = learn_sigma
        self.use_rope = use_rope
        self.use_rmsnorm = use_rmsnorm
        self.use_checkpoint = use_checkpoint

        # registration order = the official state-dict order
        self.x_embedder = PatchEmbed(input_size, patch_size, in_channels, hidden_size, bias=True)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob)
        num_patches = self.x_embedder.num_patches
        # fixed sin-cos embedding, filled in initialize_weights; a frozen Parameter as official (in the state dict)
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, hidden_size), requires_grad=False)
        if use_rope:
            self.feat_rope = VisionRotaryEmbeddingFast(
                dim=hidden_size // num_heads // 2, pt_seq_len=input_size // patch_size
            )
        else:
            self.feat_rope = None
        self.blocks = nn.ModuleList(
            [
                LightningDiTBlock(
                    hidden_size,
                    num_heads,
                    mlp_ratio=mlp_ratio,
                    use_qknorm=use_qknorm,
                    use_swiglu=use_swiglu,
                    use_rmsnorm=use_rmsnorm,
                    wo_shift=wo_shift,
                )
                for _ in range(depth)
            ]
        )
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels, use_rmsnorm=use_rmsnorm)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        # Transformer linear layers: Xavier uniform, zero bias (as DiT).
        def _basic_init(module):
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.constant_(module.bias, 0)

        self.apply(_basic_init)

        # Fixed sin-cos position embedding (frozen).
        grid_size = self.input_size // self.patch_size
        self.pos_embed.data.copy_(get_2d_sincos_pos_embed(self.hidden_size, grid_size).float().unsqueeze(0))

        # Patch embedding: initialised like a linear layer over the flattened patch, not like a conv.
        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view([w.shape[0], -1]))
        nn.init.constant_(self.x_embedder.proj.bias, 0)

        # Label embedding table and timestep MLP: N(0, 0.02).
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)

        # adaLN-Zero: zero modulation makes every block the identity at the start.
        for block in self.blocks:
            nn.init.constant_(block.adaLN_modulation[-1].weight, 0)
            nn.init.constant_(block.adaLN_modulation[-1].bias, 0)

        # Zero output layer: the initial prediction is 0.
        nn.init.constant_(self.final_layer.adaLN_modulation[-1].weight, 0)
        nn.init.constant_(self.final_layer.adaLN_modulation[-1].bias, 0)
        nn.init.constant_(self.final_layer.linear.weight, 0)
        nn.init.constant_(self.final_layer.linear.bias, 0)

    def unpatchify(self, x: Tensor) -> Tensor:
        """(N, T, patch_size ** 2 * C) -> (N, C, H, W)."""
        c, p = self.out_channels, self.patch_size
        h = w = self.input_size // p
        x = x.reshape(x.shape[0], h, w, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(x.shape[0], c, h * p, w * p)

    def forward(
        self, x: Tensor, t: Tensor, y: Tensor, force_drop_ids: Tensor | None = None, hidden_at: int | None = None
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Predict the velocity.

        x: (N, C, H, W) latents with H = W = input_size.
        t: (N,) flow time in [0, 1], 0 = noise, 1 = data.
        y: (N,) labels in [0, num_classes]; num_classes is the null label.
        force_drop_ids: optional (N,), 1 where y is replaced by the null label (in any mode). Without
            it, labels are dropped with probability class_dropout_prob in training mode only.
        hidden_at: also return the tokens after block `hidden_at` (1-based), for REPA's alignment.
        Returns (N, in_channels, H, W), and with hidden_at the tokens (N, T, D) in row-major patch order.
        """
        self._check_latents(x)
        if hidden_at is not None and not 1 <= hidden_at <= self.depth:
            raise ValueError(f"hidden_at must name a block, 1..{self.depth}; got {hidden_at}")
        x = self.x_embedder(x) + self.pos_embed  # (N, T, D), T = H * W / patch_size ** 2
        t = self.t_embedder(t)  # (N, D)
        y = self.y_embedder(y, self.training, force_drop_ids)  # (N, D)
        c = t + y  # (N, D)
        hidden = None
        for index, block in enumerate(self.blocks, start=1):
            if self.use_checkpoint and torch.is_grad_enabled():
                x = checkpoint(block, x, c, self.feat_rope, use_reentrant=False)
            else:
                x = block(x, c, self.feat_rope)  # (N, T, D)
            if index == hidden_at:
                hidden = x
        x = self.final_layer(x, c)  # (N, T, patch_size ** 2 * out_channels)
        x = self.unpatchify(x)  # (N, out_channels, H, W)
        if self.learn_sigma:
            x, _ = x.chunk(2, dim=1)  # (N, in_channels, H, W)
        return x if hidden_at is None else (x, hidden)

    def forward_with_cfg(
        self,
        x: Tensor,
        t: Tensor,
        y: Tensor,
        cfg_scale: float,
        cfg_interval_start: float = 0.0,
        guidance_channels: int | None = None,
    ) -> Tensor:
        """Classifier-free guidance in one batched forward over the conditional and unconditional halves.

        x: (2B, C, H, W) = [z, z]; only the first half is read (official), it is run with both label halves.
        t: (2B,) flow times.
        y: (2B,) = [labels, null_label repeated B times].
        cfg_scale: s in uncond + s * (cond - uncond); s = 1 returns the conditional prediction exactly.
        cfg_interval_start: no guidance where t < cfg_interval_start, the high-noise part (t = 0 is noise).
            0 guides everywhere. The official `cfg_interval=True, cfg_interval_start=s` is ours with s;
            its `cfg_interval=False` is ours with 0. The official code reads t[0] for the whole batch;
            we decide per sample, which is the same when all t are equal, as in sampling.
        guidance_channels: guide only the first k channels and return the raw predictions in the rest;
            None guides all channels, 3 reproduces the official code (DiT's 3-channel artefact).
        Returns (2B, C, H, W): the guided prediction in both halves (the unguided channels keep the
        conditional prediction in the first half and the unconditional one in the second).
        """
        if len(x) % 2 or len(x) != len(t) or len(x) != len(y):
            raise ValueError(
                f"forward_with_cfg takes x, t, y of the same even batch size 2B ([conditional, "
                f"unconditional]); got {len(x)}, {len(t)}, {len(y)}"
            )
        if self.null_label is None:
            raise ValueError(
                "this model was built with class_dropout_prob=0, so it has no null-label embedding "
                "and cannot do classifier-free guidance"
            )
        guided_channels = self.in_channels if guidance_channels is None else guidance_channels
        if not 0 < guided_channels <= self.in_channels:
            raise ValueError(
                f"guidance_channels must be in 1..{self.in_channels} or None (all); got {guidance_channels}"
            )
        half = x[: len(x) // 2]
        combined = torch.cat([half, half], dim=0)  # (2B, C, H, W)
        model_out = self.forward(combined, t, y)  # (2B, C, H, W)
        eps, rest = model_out[:, :guided_channels], model_out[:, guided_channels:]
        cond_eps, uncond_eps = eps.chunk(2, dim=0)  # each (B, k, H, W)
        # = uncond + s * (cond - uncond), written so that s = 1 gives cond bit for bit
        half_eps = cond_eps + (cfg_scale - 1) * (cond_eps - uncond_eps)
        # CFG interval (Kynkäänniemi et al. 2024, official sample.cfg_interval_start): unguided at high noise
        unguided = (t[: len(half)] < cfg_interval_start).view(-1, 1, 1, 1)
        half_eps = torch.where(unguided, cond_eps, half_eps)
        eps = torch.cat([half_eps, half_eps], dim=0)  # (2B, k, H, W)
        return torch.cat([eps, rest], dim=1)  # (2B, C, H, W)

    def _check_latents(self, x: Tensor) -> None:
        expected = (self.in_channels, self.input_size, self.input_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"LightningDiT expects latents (N, {expected[0]}, {expected[1]}, {expected[2]}) "
                f"(in_channels, input_size, input_size); got {tuple(x.shape)}"
            )

    def extra_repr(self) -> str:
        return (
            f"input_size={self.input_size}, patch_size={self.patch_size}, in_channels={self.in_channels}, "
            f"hidden_size={self.hidden_size}, depth={self.depth}, num_heads={self.num_heads}, "
            f"num_classes={self.num_classes}, use_rope={self.use_rope}, use_rmsnorm={self.use_rmsnorm}"
        )

    def load_pretrained(self, path_or_checkpoint, key: str = "ema", transfer: bool = False) -> PretrainedReport:
        """Load official or own weights strictly; returns what was loaded and adapted.

        Accepts a path (read with torch.load(weights_only=True)) or an already loaded dict: an
        official training checkpoint {'model', 'ema', 'opt', 'config'} (the weights under `key`:
        'ema' for sampling, 'model' for the raw weights) or a bare state dict. A wrapper prefix on
        every key ('module.' from DDP, '_orig_mod.' from torch.compile) is stripped. Every other
        difference raises CheckpointMismatchError, naming the keys and shapes, before any weight changes.

        transfer: start from a model trained on other classes and latent grids (the released ImageNet
        LightningDiT for 31 users): the label table and the fixed position tables are adapted (see
        `transfer_state`), every other tensor must still match exactly.
        """
        source, checkpoint = read_checkpoint(path_or_checkpoint, DIT_LAYOUT)
        report = PretrainedReport(path=source)
        if isinstance(checkpoint.get(key), Mapping):
            state_dict, report.key = checkpoint[key], key
        elif checkpoint and all(isinstance(value, Tensor) for value in checkpoint.values()):
            state_dict = checkpoint  # a bare state dict, as the official inference.py also accepts
        else:
            raise ValueError(
                f"{source or '<in-memory checkpoint>'} has no {key!r} entry and is not a bare state "
                f"dict; its top-level keys are {sorted(map(str, checkpoint))[:10]}. Official "
                f"training checkpoints hold 'ema' (for sampling) and 'model'."
            )
        state_dict = _strip_wrapper_prefixes(dict(state_dict), report)
        if transfer:
            state_dict = transfer_state(self, state_dict, report)

        report.loaded = load_strictly(
            self, state_dict, source, lambda missing: _mismatch_hints(checkpoint.get("config"))
        )
        return report


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------


@dataclass
class PretrainedReport:
    """What `LightningDiT.load_pretrained` did: the caller prints it."""

    path: str | None
    key: str | None = None  # the checkpoint entry the weights came from; None for a bare state dict
    loaded: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        entry = f"[{self.key!r}]" if self.key else " (bare state dict)"
        lines = [
            f"LightningDiT weights from {self.path or '<in-memory checkpoint>'}{entry}: "
            f"loaded {len(self.loaded)} tensors"
        ]
        return "\n".join(lines + [f"  adapted: {sentence}" for sentence in self.adapted])


def _mismatch_hints(checkpoint_config) -> list[str]:
    hints = []
    if isinstance(checkpoint_config, Mapping):
        data = checkpoint_config.get("data") or {}
        hints.append(
            f"The checkpoint's own config: model {dict(checkpoint_config.get('model') or {})}, "
            f"num_classes {data.get('num_classes')}, image_size {data.get('image_size')}."
        )
    hints.append(
        "Build the model with the checkpoint's settings: size (depth, hidden_size, num_heads, patch_size), "
        "input_size = image size / VAE downsampling, in_channels, num_classes, class_dropout_prob > 0, "
        "use_qknorm, use_swiglu, use_rope, use_rmsnorm, wo_shift, learn_sigma."
    )
    return hints


# Tensors that are fixed functions of the latent grid (sin-cos position embedding, rotary tables):
# on another grid the model's own values are the right ones, and nothing learned is lost.
POSITION_TABLES = ("pos_embed", "feat_rope.freqs_cos", "feat_rope.freqs_sin")
LABEL_TABLE = "y_embedder.embedding_table.weight"
# Spread of the new user rows around the mean class row, relative to the rows' own std: enough to
# tell users apart at the start, small against what training moves them by.
USER_ROW_NOISE = 0.1


def transfer_state(model: LightningDiT, state_dict: dict, report: PretrainedReport) -> dict:
    """A checkpoint trained on other classes, as `model`'s state dict (see load_pretrained):

    - the label table (K + 1 rows: K classes and the null label last) becomes num_classes + 1 rows:
      the null row is the checkpoint's null row (the unconditional velocity CFG relies on), and
      every user row is the mean of the checkpoint's class rows (a generic "some class" condition)
      plus Gaussian noise of USER_ROW_NOISE × the rows' std, seeded by torch's global RNG;
    - the fixed position tables keep the model's values when the latent grid differs.

    Everything else is left for the strict load to check.
    """
    state_dict = dict(state_dict)
    table = state_dict.get(LABEL_TABLE)
    want = model.state_dict()[LABEL_TABLE]
    if table is not None and table.shape[1] == want.shape[1] and table.shape[0] != want.shape[0]:
        if model.null_label is None:
            raise ValueError(
                "transferring a label table needs the null label of classifier-free guidance: build the model "
                "with class_dropout_prob > 0"
            )
        classes = table[:-1]  # (K, D); the last row is the null label (official: num_classes = 1000 → row 1000)
        noise = torch.randn(model.num_classes, table.shape[1], dtype=table.dtype, device=table.device)
        spread = classes.std()
        users = classes.mean(dim=0, keepdim=True) + USER_ROW_NOISE * spread * noise
        state_dict[LABEL_TABLE] = torch.cat([users, table[-1:]])  # (num_classes + 1, D)
        shown = "" if spread.is_meta else f" {spread.item():.4f}"
        report.adapted.append(
            f"{LABEL_TABLE}: {tuple(table.shape)} -> {tuple(want.shape)}: null row from the checkpoint's "
            f"row {table.shape[0] - 1}, {model.num_classes} user rows = mean of its {len(classes)} class rows "
            f"+ noise ({USER_ROW_NOISE} × their std{shown})"
        )
    own = model.state_dict()
    for name in POSITION_TABLES:
        if name in state_dict and name in own and state_dict[name].shape != own[name].shape:
            report.adapted.append(
                f"{name}: {tuple(state_dict[name].shape)} -> {tuple(own[name].shape)}: a fixed function of the "
                "latent grid, recomputed for this one"
            )
            state_dict[name] = own[name]
    return state_dict


def _strip_wrapper_prefixes(state_dict: dict, report: PretrainedReport) -> dict:
    """Strip 'module.' / '_orig_mod.' when every key carries it (repeatedly: DDP around torch.compile)."""
    stripped = True
    while stripped and state_dict:
        stripped = False
        for prefix, wrapper in WRAPPER_PREFIXES.items():
            if all(name.startswith(prefix) for name in state_dict):
                state_dict = {name[len(prefix) :]: value for name, value in state_dict.items()}
                report.adapted.append(f"stripped the {wrapper} prefix {prefix!r} from {len(state_dict)} keys")
                stripped = True
    return state_dict


# ---------------------------------------------------------------------------------------------
# Positional embedding and rotary helpers
# ---------------------------------------------------------------------------------------------


def get_2d_sincos_pos_embed(embed_dim: int, grid_size: int) -> Tensor:
    """(grid_size ** 2, embed_dim) fixed embedding of a square grid, tokens in row-major order.

    The official (MAE) layout: the first half of the channels encodes the column, the second half
    the row, each as [sin | cos] of the position times 1 / 10000 ** (k / (embed_dim / 4)). float64.
    """
    coords = torch.arange(grid_size, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")
    emb_cols = get_1d_sincos_pos_embed(embed_dim // 2, cols.reshape(-1))  # (T, D/2)
    emb_rows = get_1d_sincos_pos_embed(embed_dim // 2, rows.reshape(-1))  # (T, D/2)
    return torch.cat([emb_cols, emb_rows], dim=1)  # (T, D)


def get_1d_sincos_pos_embed(embed_dim: int, positions: Tensor) -> Tensor:
    """(M,) positions -> (M, embed_dim) [sin | cos] features."""
    omega = torch.arange(embed_dim // 2, dtype=torch.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000**omega  # (D/2,)
    angles = positions.to(torch.float64)[:, None] * omega[None]  # (M, D/2)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def rotate_half(x: Tensor) -> Tensor:
    """Rotate interleaved channel pairs by 90 degrees: (x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...)."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    return torch.stack((-x2, x1), dim=-1).flatten(-2)


# ---------------------------------------------------------------------------------------------
# Sizes
# ---------------------------------------------------------------------------------------------

LightningDiT_models = {
    # the official table (models/lightningdit.py)
    "LightningDiT-B/1": partial(LightningDiT, depth=12, hidden_size=768, patch_size=1, num_heads=12),
    "LightningDiT-B/2": partial(LightningDiT, depth=12, hidden_size=768, patch_size=2, num_heads=12),
    "LightningDiT-L/2": partial(LightningDiT, depth=24, hidden_size=1024, patch_size=2, num_heads=16),
    "LightningDiT-XL/1": partial(LightningDiT, depth=28, hidden_size=1152, patch_size=1, num_heads=16),
    "LightningDiT-XL/2": partial(LightningDiT, depth=28, hidden_size=1152, patch_size=2, num_heads=16),
    "LightningDiT-1p0B/1": partial(LightningDiT, depth=24, hidden_size=1536, patch_size=1, num_heads=24),
    "LightningDiT-1p0B/2": partial(LightningDiT, depth=24, hidden_size=1536, patch_size=2, num_heads=24),
    "LightningDiT-1p6B/1": partial(LightningDiT, depth=28, hidden_size=1792, patch_size=1, num_heads=28),
    "LightningDiT-1p6B/2": partial(LightningDiT, depth=28, hidden_size=1792, patch_size=2, num_heads=28),
    # DiT's sizes that the official table lacks
    "LightningDiT-S/1": partial(LightningDiT, depth=12, hidden_size=384, patch_size=1, num_heads=6),
    "LightningDiT-S/2": partial(LightningDiT, depth=12, hidden_size=384, patch_size=2, num_heads=6),
    "LightningDiT-L/1": partial(LightningDiT, depth=24, hidden_size=1024, patch_size=1, num_heads=16),
    # ours, for CPU: 64 tokens on 8 × 8 (Tiny/1) or 16 × 16 latents (Tiny/2), 16 tokens on 16 × 16
    # latents (Tiny/4, a quarter of Tiny/2's time per step), and the tests (Micro)
    "LightningDiT-Tiny/1": partial(LightningDiT, depth=6, hidden_size=192, patch_size=1, num_heads=3),
    "LightningDiT-Tiny/2": partial(LightningDiT, depth=6, hidden_size=192, patch_size=2, num_heads=3),
    "LightningDiT-Tiny/4": partial(LightningDiT, depth=6, hidden_size=192, patch_size=4, num_heads=3),
    "LightningDiT-Micro/1": partial(LightningDiT, depth=2, hidden_size=64, patch_size=1, num_heads=2),
}

# Other names for registry sizes: the seed config's `model_type: LightningDiT-XL` is XL with patch size 1.
MODEL_ALIASES = {"LightningDiT-XL": "LightningDiT-XL/1"}


def registry_size(name: str) -> partial:
    """The registry entry of a size name or alias ("LightningDiT-XL" is "LightningDiT-XL/1"); its
    `keywords` hold depth, hidden_size, patch_size and num_heads."""
    size = LightningDiT_models.get(MODEL_ALIASES.get(name, name))
    if size is None:
        aliases = ", ".join(f"{alias} (= {target})" for alias, target in MODEL_ALIASES.items())
        raise ValueError(
            f"unknown LightningDiT model {name!r}; known: {', '.join(LightningDiT_models)}; aliases: {aliases}"
        )
    return size


def create_model(name: str, **kwargs) -> LightningDiT:
    """Build a registry size; kwargs are the other LightningDiT arguments (input_size, num_classes, ...).

    name is a key of LightningDiT_models or an alias: "LightningDiT-XL" is "LightningDiT-XL/1".
    """
    size = registry_size(name)
    fixed = sorted(set(kwargs) & set(size.keywords))
    if fixed:
        raise ValueError(
            f"{name} fixes {', '.join(f'{k}={size.keywords[k]}' for k in fixed)}; pick another "
            f"size or build LightningDiT(...) directly"
        )
    return size(**kwargs)


# ---------------------------------------------------------------------------------------------
# Building from a config, and the train_dit export
# ---------------------------------------------------------------------------------------------

MODEL_FLAGS = (
    "use_qknorm",
    "use_swiglu",
    "use_rope",
    "use_rmsnorm",
    "wo_shift",
    "class_dropout_prob",
    "use_checkpoint",
)


def dit_kwargs(config: dict, latent_shape: tuple[int, int, int]) -> dict:
    """build_dit arguments: the registry name and flags from the config, sizes from the latents."""
    channels, height, width = latent_shape
    if height != width:
        raise ValueError(f"LightningDiT needs square latents, the store holds {height}×{width}")
    dit = config["dit"]
    return {
        "model_type": dit["model_type"],
        "input_size": height,
        "in_channels": channels,
        "num_classes": config["data"]["num_classes"],
        **{flag: dit[flag] for flag in MODEL_FLAGS},
    }


def build_dit(kwargs: Mapping) -> LightningDiT:
    """A registry size from dit_kwargs' dict (`model_type` plus LightningDiT arguments)."""
    kwargs = dict(kwargs)
    return create_model(kwargs.pop("model_type"), **kwargs)


def save_official(
    path,
    model: LightningDiT,
    ema: LightningDiT,
    optimizer_state: Mapping,
    config: dict,
    training_only: Mapping[str, Mapping] | None = None,
) -> None:
    """Write the official training-checkpoint layout {'model', 'ema', 'opt', 'config'} atomically.

    config["model"] holds dit_kwargs' dict, so load_dit can rebuild the model. training_only adds
    state dicts of modules the model does not hold (REPA's projector) under their own top-level
    keys, apart from 'model' and 'ema', which the official code and load_dit load strictly.
    """
    reserved = {"model", "ema", "opt", "config"} & set(training_only or {})
    if reserved:
        raise ValueError(f"training_only may not use the official keys {sorted(reserved)}")
    if not isinstance(config.get("model"), Mapping) or "model_type" not in config["model"]:
        raise ValueError(
            "save_official needs config['model'] with dit_kwargs' dict (model_type, input_size, ...), "
            f"so load_dit can rebuild the model; got config keys {sorted(config)}"
        )
    checkpoint = {"model": model.state_dict(), "ema": ema.state_dict(), "opt": optimizer_state, "config": config}
    checkpoint |= {key: dict(state) for key, state in (training_only or {}).items()}
    with atomic_output(path) as tmp:
        torch.save(checkpoint, tmp)


def load_dit(path, use_ema: bool = True) -> tuple[LightningDiT, dict]:
    """The LightningDiT of a save_official file, loaded strictly with its EMA (or raw) weights, in
    eval mode, and the file's config (with `model` and `latent_stats`)."""
    source, checkpoint = read_checkpoint(path, DIT_LAYOUT)
    config = checkpoint.get("config")
    if not isinstance(config, Mapping) or not isinstance(config.get("model"), Mapping):
        raise ValueError(
            f"{source} has no config['model'] (dit_kwargs' dict), so it was not written by train_dit; "
            "for an official checkpoint build the model and call load_pretrained"
        )
    model = build_dit(config["model"])
    model.load_pretrained(checkpoint, key="ema" if use_ema else "model")
    return model.eval(), dict(config)
