"""The VA-VAE training loss: L1 + LPIPS reconstruction, KL, PatchGAN and vision-foundation alignment.

A port of LightningDiT's `vavae/ldm/modules/losses/contperceptual.py` (LPIPSWithDiscriminator,
the default non-pp_style path) with the official argument names, defaults, attribute names
(`logvar`, `discriminator`, `perceptual_loss`) and log keys. How the official AutoencoderKL calls it
(`vavae/ldm/models/autoencoder.py`, manual optimisation): one autoencoder forward per step, then
`loss(..., optimizer_idx=0, last_layer=decoder.conv_out.weight, z=z, aux_feature=aux_feature,
enc_last_layer=encoder.conv_out.weight)` for the encoder/decoder optimiser and
`loss(..., optimizer_idx=1)` for the discriminator optimiser. Note that the official autoencoder
optimiser holds the encoder, decoder, quant convs and linear_proj only, so `logvar` stays at
logvar_init.

Differences from the official code, none of which changes a loss value, a gradient or a weight:
- before disc_start (whenever the step's disc_factor is 0) the discriminator is not run. The
  official code runs it three times per step there (the generator term, the real and the fake
  logits) and multiplies what it gives by 0: zero gradients, which Adam turns into no update
  (m = v = 0), while it still counts the step. Here the autoencoder's adversarial term is left
  out (it is exactly 0), and the discriminator's loss is an exact 0 built from its weights, so
  they get the same zero gradients and Adam the same states, without the discriminator's
  forward and backward passes (a quarter of the default VA-VAE's step time at 32 px). So the log has no
  `g_loss`, `logits_real` and `logits_fake` before disc_start, `d_weight` logs 0, and
  the discriminator's BatchNorm running statistics (read only by validation logits) start at
  disc_start instead of averaging the unused passes;
- the discriminator pass does not compute the reconstruction, LPIPS and KL terms it never uses;
- `autoencoder_terms` and `autoencoder_total` split the autoencoder's loss into its terms and
  their weighted sum, so that the training step can back-propagate the reconstruction loss once
  and read the adaptive weights from the gradients it leaves
  (`mdgen.training.vavae.VAVAETraining._autoencoder_backward_once`); `forward` is the official
  loss, adaptive weights by torch.autograd.grad;
- `cond`/`disc_conditional`, per-pixel `weights`, `use_actnorm` and `pp_style` are not ported
  (the official VA-VAE configs leave them at their defaults).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

from mdgen.losses.discriminator import (
    adopt_weight,
    hinge_d_loss,
    NLayerDiscriminator,
    vanilla_d_loss,
    weights_init,
)

if TYPE_CHECKING:  # timm is slow to import and only needed by whoever builds the foundation model
    from mdgen.losses.foundation import FoundationModel

# Upper bounds of the adaptive weights, from the official calculate_adaptive_weight(_vf).
D_WEIGHT_MAX = 1e4
VF_WEIGHT_MAX = 1e8


# ---------------------------------------------------------------------------------------------
# Loss math
# ---------------------------------------------------------------------------------------------


def vf_loss(
    z: torch.Tensor,
    aux_feature: torch.Tensor,
    distmat_margin: float,
    cos_margin: float,
    distmat_weight: float = 1.0,
    cos_weight: float = 1.0,
) -> torch.Tensor:
    """Vision-foundation alignment (VF) loss of VA-VAE (Yao et al. 2025; official contperceptual.py).

    z, aux_feature: (B, C, H, W), the latent and the foundation features on the same grid and
    with the same channel count (the official `reverse_proj` maps z to the 1024 foundation channels).

    - marginal distance-matrix loss: the (H*W) × (H*W) cosine-similarity matrices between all
      positions of z and of aux_feature should agree; differences below distmat_margin are free;
    - marginal cosine loss: at each position z should point along aux_feature, up to cos_margin.
    Returns distmat_weight * distmat_loss + cos_weight * cos_loss, a scalar.
    """
    if z.shape != aux_feature.shape:
        raise ValueError(
            f"VF loss needs z and aux_feature of the same shape (B, C, H, W), got {tuple(z.shape)} and "
            f"{tuple(aux_feature.shape)}: project one onto the other's channels (linear_proj) first"
        )
    z_norm = F.normalize(z.flatten(2), dim=1)  # (B, C, H*W), unit vectors per position
    aux_norm = F.normalize(aux_feature.flatten(2), dim=1)
    z_cos_sim = torch.einsum("bci,bcj->bij", z_norm, z_norm)  # (B, H*W, H*W)
    aux_cos_sim = torch.einsum("bci,bcj->bij", aux_norm, aux_norm)
    distmat_loss = F.relu(torch.abs(z_cos_sim - aux_cos_sim) - distmat_margin).mean()
    cos_loss = F.relu(1 - cos_margin - F.cosine_similarity(aux_feature, z, dim=1)).mean()  # over (B, H, W)
    return distmat_loss * distmat_weight + cos_loss * cos_weight


def adaptive_weight(loss_a: torch.Tensor, loss_b: torch.Tensor, layer: torch.Tensor, clamp_max: float) -> torch.Tensor:
    """‖∂loss_a/∂layer‖ / (‖∂loss_b/∂layer‖ + 1e-4), clamped to [0, clamp_max] and detached.

    Scales loss_b so that its gradient at `layer` is as large as loss_a's (the adaptive GAN weight of
    Esser et al. 2021, "Taming Transformers"; VA-VAE uses it for the VF loss too). Both losses must depend on
    `layer`, and the graph is kept for the backward pass that follows.
    """
    grad_a = torch.autograd.grad(loss_a, layer, retain_graph=True)[0]
    grad_b = torch.autograd.grad(loss_b, layer, retain_graph=True)[0]
    return gradient_ratio(grad_a, grad_b, clamp_max)


def gradient_ratio(grad_a: torch.Tensor, grad_b: torch.Tensor, clamp_max: float) -> torch.Tensor:
    """The adaptive weight from the two gradients at the layer: ‖grad_a‖ / (‖grad_b‖ + 1e-4), clamped, detached."""
    weight = torch.norm(grad_a) / (torch.norm(grad_b) + 1e-4)
    return torch.clamp(weight, 0.0, clamp_max).detach()


@dataclass
class AutoencoderTerms:
    """The autoencoder's loss terms before their weights, all scalars but rec_loss.

    rec_loss: L1 + perceptual_weight · LPIPS per pixel (B, C, H, W); nll: the Gaussian negative
    log-likelihood of rec_loss, summed over pixels and averaged over the batch; kl: the posterior's KL
    divergence, averaged over the batch; g_loss: the generator's adversarial loss, None while
    disc_factor is 0 (before disc_start); vf: the VF alignment loss, None without it.
    """

    rec_loss: torch.Tensor
    nll: torch.Tensor
    kl: torch.Tensor
    g_loss: torch.Tensor | None
    vf: torch.Tensor | None
    disc_factor: float


# ---------------------------------------------------------------------------------------------
# The loss module
# ---------------------------------------------------------------------------------------------


class LPIPSWithDiscriminator(nn.Module):
    """VA-VAE loss with the official defaults (the VA-VAE config sets disc_start 5001, kl_weight 1e-6,
    disc_weight 0.5, vf_weight 0.1, adaptive_vf True, distmat_margin 0.25, cos_margin 0.5).

    perceptual: the LPIPS module (mdgen.losses.perceptual.PerceptualLoss), required when
        perceptual_weight > 0. foundation_model: the frozen FoundationModel, or None without VF loss;
        kept here for the training module, the loss itself receives its features as `aux_feature`.
    pixelloss_weight is accepted and stored but, as in the official code, not used.
    """

    def __init__(
        self,
        disc_start: int,
        logvar_init: float = 0.0,
        kl_weight: float = 1.0,
        pixelloss_weight: float = 1.0,
        disc_num_layers: int = 3,
        disc_in_channels: int = 3,
        disc_factor: float = 1.0,
        disc_weight: float = 1.0,
        perceptual_weight: float = 1.0,
        disc_loss: str = "hinge",
        vf_weight: float = 1e2,
        adaptive_vf: bool = False,
        cos_margin: float = 0.0,
        distmat_margin: float = 0.0,
        distmat_weight: float = 1.0,
        cos_weight: float = 1.0,
        perceptual: nn.Module | None = None,
        foundation_model: FoundationModel | None = None,
    ):
        super().__init__()
        if disc_loss not in ("hinge", "vanilla"):
            raise ValueError(f"disc_loss must be 'hinge' or 'vanilla', got {disc_loss!r}")
        if perceptual_weight > 0 and perceptual is None:
            raise ValueError(
                f"perceptual_weight is {perceptual_weight} but no perceptual module was given: pass "
                "perceptual=PerceptualLoss(build_lpips(...)), or set perceptual_weight: 0"
            )
        self.kl_weight = kl_weight
        self.pixel_weight = pixelloss_weight
        self.perceptual_loss = perceptual
        self.perceptual_weight = perceptual_weight
        self.foundation_model = foundation_model
        # Output log-variance of the Gaussian likelihood (a learnable scalar in the official code).
        self.logvar = nn.Parameter(torch.ones(size=()) * logvar_init)

        self.discriminator = NLayerDiscriminator(input_nc=disc_in_channels, n_layers=disc_num_layers).apply(
            weights_init
        )
        self.discriminator_iter_start = disc_start
        self.disc_loss = hinge_d_loss if disc_loss == "hinge" else vanilla_d_loss
        self.disc_factor = disc_factor
        self.discriminator_weight = disc_weight

        self.vf_weight = vf_weight
        self.adaptive_vf = adaptive_vf
        self.cos_margin = cos_margin
        self.distmat_margin = distmat_margin
        self.distmat_weight = distmat_weight
        self.cos_weight = cos_weight

    def forward(
        self,
        inputs: torch.Tensor,
        reconstructions: torch.Tensor,
        posteriors,
        optimizer_idx: int,
        global_step: int,
        last_layer: torch.Tensor | None = None,
        split: str = "train",
        z: torch.Tensor | None = None,
        aux_feature: torch.Tensor | None = None,
        enc_last_layer: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss for the autoencoder (optimizer_idx 0) or the discriminator (optimizer_idx 1), and its log.

        inputs, reconstructions: (B, C, H, W) in [-1, 1]. posteriors: has .kl() -> (B,).
        last_layer: the decoder's last weight (adaptive GAN weight); enc_last_layer: the encoder's
        last weight (adaptive VF weight). z, aux_feature: (B, C', h, w) for the VF loss, or None.
        """
        if optimizer_idx == 0:
            return self._autoencoder_loss(
                inputs, reconstructions, posteriors, global_step, last_layer, split, z, aux_feature, enc_last_layer
            )
        if optimizer_idx == 1:
            return self._discriminator_loss(inputs, reconstructions, global_step, split)
        raise ValueError(f"optimizer_idx must be 0 (autoencoder) or 1 (discriminator), got {optimizer_idx!r}")

    def _autoencoder_loss(
        self, inputs, reconstructions, posteriors, global_step, last_layer, split, z, aux_feature, enc_last_layer
    ):
        terms = self.autoencoder_terms(inputs, reconstructions, posteriors, global_step, z, aux_feature)
        if terms.g_loss is None:
            d_weight = terms.nll.new_zeros(())  # the official term is d_weight · 0 · g_loss: exactly 0
        else:
            d_weight = self._adaptive_weight_or_zero(terms.nll, terms.g_loss, last_layer, D_WEIGHT_MAX, "last_layer")
        vf_weight = None
        if terms.vf is not None:
            if self.adaptive_vf:
                vf_weight = self._adaptive_weight_or_zero(
                    terms.nll, terms.vf, enc_last_layer, VF_WEIGHT_MAX, "enc_last_layer"
                )
            else:
                vf_weight = terms.nll.new_tensor(1.0)
        return self.autoencoder_total(terms, d_weight, vf_weight, split)

    def autoencoder_terms(
        self,
        inputs: torch.Tensor,
        reconstructions: torch.Tensor,
        posteriors,
        global_step: int,
        z: torch.Tensor | None = None,
        aux_feature: torch.Tensor | None = None,
    ) -> AutoencoderTerms:
        """The autoencoder's loss terms before their weights (see AutoencoderTerms)."""
        inputs, reconstructions = inputs.contiguous(), reconstructions.contiguous()
        rec_loss = torch.abs(inputs - reconstructions)  # (B, C, H, W)
        if self.perceptual_weight > 0:
            p_loss = self.perceptual_loss(inputs, reconstructions)  # (B, 1, 1, 1), added to every pixel
            rec_loss = rec_loss + self.perceptual_weight * p_loss
        nll_loss = rec_loss / torch.exp(self.logvar) + self.logvar
        nll_loss = torch.sum(nll_loss) / nll_loss.shape[0]  # summed over pixels, mean over the batch
        kl_loss = posteriors.kl()  # (B,)
        kl_loss = torch.sum(kl_loss) / kl_loss.shape[0]

        if (z is None) != (aux_feature is None):
            raise ValueError("the VF loss needs both z and aux_feature; pass both, or neither to switch it off")
        disc_factor = adopt_weight(self.disc_factor, global_step, threshold=self.discriminator_iter_start)
        g_loss = -torch.mean(self.discriminator(reconstructions)) if disc_factor > 0 else None
        alignment_loss = None
        if z is not None:
            alignment_loss = vf_loss(
                z, aux_feature, self.distmat_margin, self.cos_margin, self.distmat_weight, self.cos_weight
            )
        return AutoencoderTerms(rec_loss, nll_loss, kl_loss, g_loss, alignment_loss, disc_factor)

    def autoencoder_total(
        self,
        terms: AutoencoderTerms,
        d_weight: torch.Tensor,
        vf_weight: torch.Tensor | None,
        split: str = "train",
        include_nll: bool = True,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """nll + kl_weight · kl + d_weight · disc_weight · disc_factor · g_loss + vf_weight · self.vf_weight · vf,
        and the official log.

        d_weight and vf_weight are the adaptive weights before their configured factors (vf_weight
        1 without adaptive_vf; None without the VF loss). include_nll False leaves the nll term out of
        the returned loss (for a caller that has back-propagated it already); the log always holds
        the whole total.
        """
        d_weight = d_weight * self.discriminator_weight
        weighted = [self.kl_weight * terms.kl]
        if terms.g_loss is not None:
            weighted.append(d_weight * terms.disc_factor * terms.g_loss)
        if terms.vf is not None:
            vf_weight = vf_weight * self.vf_weight
            weighted.append(vf_weight * terms.vf)
        loss = terms.nll
        for term in weighted:  # the official order of the sum
            loss = loss + term
        log = {
            f"{split}/total_loss": loss.clone().detach().mean(),
            f"{split}/logvar": self.logvar.detach(),
            f"{split}/kl_loss": terms.kl.detach().mean(),
            f"{split}/nll_loss": terms.nll.detach().mean(),
            f"{split}/rec_loss": terms.rec_loss.detach().mean(),
            f"{split}/d_weight": d_weight.detach(),
            f"{split}/disc_factor": terms.nll.new_tensor(float(terms.disc_factor)),
        }
        if terms.g_loss is not None:
            log[f"{split}/g_loss"] = terms.g_loss.detach().mean()
        if terms.vf is not None:
            log[f"{split}/vf_loss"] = terms.vf.detach().mean()
            log[f"{split}/vf_weight"] = vf_weight.detach()
        return (loss if include_nll else sum(weighted[1:], weighted[0])), log

    def _adaptive_weight_or_zero(self, nll_loss, other_loss, layer, clamp_max, layer_name):
        if layer is None:
            raise ValueError(f"the adaptive loss weight needs {layer_name}: pass the layer's weight tensor")
        try:
            return adaptive_weight(nll_loss, other_loss, layer, clamp_max)
        except RuntimeError:
            # Validation runs without autograd: the official code then uses weight 0.
            if self.training:
                raise
            return nll_loss.new_zeros(())

    def _discriminator_loss(self, inputs, reconstructions, global_step, split):
        disc_factor = adopt_weight(self.disc_factor, global_step, threshold=self.discriminator_iter_start)
        if disc_factor == 0:
            # The official 0 · d_loss: every weight gets a zero gradient (so Adam counts the step
            # and moves nothing), without running the discriminator.
            d_loss = torch.stack([p.sum() for p in self.discriminator.parameters()]).sum() * 0.0
            return d_loss, {f"{split}/disc_loss": d_loss.detach()}
        logits_real = self.discriminator(inputs.contiguous().detach())
        logits_fake = self.discriminator(reconstructions.contiguous().detach())
        d_loss = disc_factor * self.disc_loss(logits_real, logits_fake)
        log = {
            f"{split}/disc_loss": d_loss.clone().detach().mean(),
            f"{split}/logits_real": logits_real.detach().mean(),
            f"{split}/logits_fake": logits_fake.detach().mean(),
        }
        return d_loss, log

    # -----------------------------------------------------------------------------------------
    # Official checkpoints
    # -----------------------------------------------------------------------------------------

    def load_official_loss_state(self, state_dict: dict[str, torch.Tensor]) -> list[str]:
        """Load the discriminator and logvar of an official VA-VAE checkpoint's state dict.

        Takes the LightningModule state dict (keys `loss.discriminator.*`, `loss.logvar`, ...).
        `loss.discriminator.*` must match this discriminator exactly (all keys, all shapes);
        `loss.logvar` is loaded when present. Returns the official keys that were loaded; an empty
        list when the checkpoint holds no loss state (then the caller should say so).
        The official `loss.perceptual_loss.*` entries (taming's LPIPS) are not loaded: they are the
        same frozen ImageNet VGG16 and LPIPS calibration weights that build_lpips reads.
        """
        prefix = "loss.discriminator."
        found = {key[len(prefix) :]: value for key, value in state_dict.items() if key.startswith(prefix)}
        loaded = []
        if found:
            expected = self.discriminator.state_dict()
            missing = sorted(set(expected) - set(found))
            unexpected = sorted(set(found) - set(expected))
            wrong_shape = [
                f"{prefix}{key}: checkpoint {tuple(found[key].shape)}, ours {tuple(expected[key].shape)}"
                for key in sorted(set(expected) & set(found))
                if found[key].shape != expected[key].shape
            ]
            if missing or unexpected or wrong_shape:
                raise ValueError(
                    "the checkpoint's discriminator does not match ours: missing "
                    f"{[prefix + k for k in missing]}, unexpected {[prefix + k for k in unexpected]}, "
                    f"shape mismatches {wrong_shape}; set disc_in_channels and disc_num_layers to the "
                    "checkpoint's (official: 3 and 3)"
                )
            self.discriminator.load_state_dict(found, strict=True)
            loaded += [prefix + key for key in found]
        if "loss.logvar" in state_dict:
            logvar = state_dict["loss.logvar"]
            if logvar.numel() != 1:
                raise ValueError(f"loss.logvar should be a scalar, the checkpoint has shape {tuple(logvar.shape)}")
            with torch.no_grad():
                self.logvar.copy_(logvar.reshape(()))
            loaded.append("loss.logvar")
        return loaded
