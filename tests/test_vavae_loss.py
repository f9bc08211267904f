"""VA-VAE loss: official discriminator layout, GAN switch-on at disc_start, adaptive weights, VF loss,
KL/NLL by hand, LPIPS and foundation models loaded from local files only, official checkpoint state."""

import math

import lpips
import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file

from mdgen.losses import (
    adaptive_weight,
    adopt_weight,
    build_lpips,
    FoundationModel,
    hinge_d_loss,
    LPIPSWithDiscriminator,
    NLayerDiscriminator,
    PerceptualLoss,
    vanilla_d_loss,
    vf_loss,
    weights_init,
)
from mdgen.losses.perceptual import VGG16_FILENAME

# taming/modules/discriminator/model.py (CompVis/taming-transformers @ 3ba01b2), n_layers=3, ndf=64,
# input_nc=3: conv(bias) LReLU | conv BN LReLU | conv BN LReLU | conv(stride 1) BN LReLU | conv(bias).
OFFICIAL_DISCRIMINATOR_SHAPES = {
    "main.0.weight": (64, 3, 4, 4),
    "main.0.bias": (64,),
    "main.2.weight": (128, 64, 4, 4),
    "main.3.weight": (128,),
    "main.3.bias": (128,),
    "main.3.running_mean": (128,),
    "main.3.running_var": (128,),
    "main.3.num_batches_tracked": (),
    "main.5.weight": (256, 128, 4, 4),
    "main.6.weight": (256,),
    "main.6.bias": (256,),
    "main.6.running_mean": (256,),
    "main.6.running_var": (256,),
    "main.6.num_batches_tracked": (),
    "main.8.weight": (512, 256, 4, 4),
    "main.9.weight": (512,),
    "main.9.bias": (512,),
    "main.9.running_mean": (512,),
    "main.9.running_var": (512,),
    "main.9.num_batches_tracked": (),
    "main.11.weight": (1, 512, 4, 4),
    "main.11.bias": (1,),
}

SMALL_VIT = dict(embed_dim=64, depth=2, num_heads=2)


class Posterior:
    """Diagonal Gaussian with the official DiagonalGaussianDistribution.kl() (summed per sample)."""

    def __init__(self, mean, logvar):
        self.mean, self.logvar = mean, logvar

    def kl(self):
        return 0.5 * torch.sum(self.mean**2 + torch.exp(self.logvar) - 1.0 - self.logvar, dim=[1, 2, 3])


def tiny_autoencoder_step(seed=0):
    """A conv encoder and a conv decoder: the decoder weight plays decoder.conv_out.weight."""
    torch.manual_seed(seed)
    encoder, decoder = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(4, 3, 3, padding=1)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    mean, logvar = encoder(x).chunk(2, dim=1)
    posterior = Posterior(mean, logvar)
    z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
    return x, decoder(z), posterior, z, encoder, decoder


def gan_loss(**kwargs):
    torch.manual_seed(1)
    return LPIPSWithDiscriminator(disc_start=100, kl_weight=1e-6, disc_weight=0.5, perceptual_weight=0.0, **kwargs)


# ---------------------------------------------------------------------------------------------
# Discriminator and GAN helpers
# ---------------------------------------------------------------------------------------------


def test_discriminator_matches_the_official_taming_layout():
    discriminator = NLayerDiscriminator(input_nc=3, ndf=64, n_layers=3)
    shapes = {key: tuple(value.shape) for key, value in discriminator.state_dict().items()}
    assert shapes == OFFICIAL_DISCRIMINATOR_SHAPES
    # PatchGAN: 64 -> 32 -> 16 -> 8 (stride 2) -> 7 -> 6 (stride 1, 4 x 4, padding 1)
    assert discriminator(torch.randn(2, 3, 64, 64)).shape == (2, 1, 6, 6)
    assert discriminator(torch.randn(1, 3, 256, 256)).shape == (1, 1, 30, 30)
    assert NLayerDiscriminator(input_nc=1)(torch.randn(2, 1, 64, 64)).shape == (2, 1, 6, 6)


def test_weights_init_is_dcgan_normal():
    torch.manual_seed(0)
    discriminator = NLayerDiscriminator().apply(weights_init)
    conv = discriminator.main[8].weight  # 2M values
    assert abs(conv.mean().item()) < 1e-3 and conv.std().item() == pytest.approx(0.02, rel=0.02)
    batchnorm = discriminator.main[9]
    assert batchnorm.weight.mean().item() == pytest.approx(1.0, abs=0.005)
    assert batchnorm.weight.std().item() == pytest.approx(0.02, rel=0.2)
    assert torch.equal(batchnorm.bias, torch.zeros(512))


def test_gan_helpers_by_hand():
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.0, 1.0])
    # relu(1 - real) = [0, 0.5, 2] (mean 5/6), relu(1 + fake) = [0, 1, 2] (mean 1)
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (5 / 6 + 1))
    softplus = lambda v: math.log1p(math.exp(v))  # noqa: E731
    expected = 0.5 * (sum(softplus(-r) for r in (2, 0.5, -1)) / 3 + sum(softplus(f) for f in (-2, 0, 1)) / 3)
    assert vanilla_d_loss(real, fake).item() == pytest.approx(expected)
    assert adopt_weight(0.7, global_step=4, threshold=5) == 0.0
    assert adopt_weight(0.7, global_step=5, threshold=5) == 0.7


# ---------------------------------------------------------------------------------------------
# Loss terms
# ---------------------------------------------------------------------------------------------


def test_kl_and_nll_equal_their_closed_forms():
    # sample 0: mean (1, 0), logvar (0, 0) -> KL 0.5 * 1; sample 1: mean 0, var (2, 1) -> 0.5 * (1 - ln 2)
    mean = torch.tensor([[1.0, 0.0], [0.0, 0.0]]).reshape(2, 1, 1, 2)
    logvar = torch.tensor([[0.0, 0.0], [math.log(2.0), 0.0]]).reshape(2, 1, 1, 2)
    expected_kl = (0.5 + 0.5 * (1 - math.log(2.0))) / 2
    inputs = torch.zeros(2, 3, 32, 32)
    reconstructions = torch.cat([torch.full((1, 3, 32, 32), 0.5), torch.full((1, 3, 32, 32), -0.25)])
    summed_l1 = 3 * 32 * 32 * (0.5 + 0.25)  # 2304

    loss_fn = gan_loss()
    loss, log = loss_fn(inputs, reconstructions, Posterior(mean, logvar), 0, global_step=0)
    assert log["train/kl_loss"].item() == pytest.approx(expected_kl, rel=1e-6)
    assert log["train/nll_loss"].item() == pytest.approx(summed_l1 / 2)  # logvar 0: summed L1 / batch
    assert log["train/rec_loss"].item() == pytest.approx(0.375)  # mean L1 per pixel
    assert loss.item() == pytest.approx(summed_l1 / 2 + 1e-6 * expected_kl)

    # nll = sum(L1 / exp(logvar) + logvar) / batch, the Gaussian-like likelihood with a learned scale
    loss_fn = gan_loss(logvar_init=1.0)
    _, log = loss_fn(inputs, reconstructions, Posterior(mean, logvar), 0, global_step=0, split="val")
    assert log["val/nll_loss"].item() == pytest.approx((summed_l1 / math.e + 3 * 32 * 32 * 2) / 2, rel=1e-6)
    assert log["val/logvar"].item() == 1.0


def test_adversarial_term_is_exactly_zero_before_disc_start():
    x, xrec, posterior, _, _, decoder = tiny_autoencoder_step()
    loss_fn = gan_loss()
    loss, log = loss_fn(x, xrec, posterior, 0, global_step=99, last_layer=decoder.weight)
    assert torch.equal(loss, log["train/nll_loss"] + 1e-6 * log["train/kl_loss"])
    assert log["train/d_weight"].item() == 0.0 and log["train/disc_factor"].item() == 0.0
    assert "train/g_loss" not in log  # the discriminator is not run before disc_start

    # the decoder gets exactly the gradient of the reconstruction + KL loss alone
    (gradient,) = torch.autograd.grad(loss, decoder.weight, retain_graph=True)
    nll = torch.sum(torch.abs(x - xrec)) / 2
    kl = posterior.kl()
    (expected,) = torch.autograd.grad(nll + 1e-6 * torch.sum(kl) / 2, decoder.weight, retain_graph=True)
    assert torch.equal(gradient, expected)

    d_loss, d_log = loss_fn(x, xrec, posterior, 1, global_step=99)
    assert d_loss.item() == 0.0 and set(d_log) == {"train/disc_loss"}


def test_discriminator_update_before_disc_start_is_the_official_zero_step():
    """The official 0 · hinge(D(x), D(x̂)) and the loss without discriminator passes give every
    discriminator weight the same zero gradient, so Adam ends in the same weights and states."""
    x, xrec, posterior, _, _, _ = tiny_autoencoder_step()
    ours, official = gan_loss(), gan_loss()
    official.discriminator.load_state_dict(ours.discriminator.state_dict())
    losses = {
        ours: lambda: ours(x, xrec, posterior, 1, global_step=99)[0],
        official: lambda: 0.0 * hinge_d_loss(official.discriminator(x), official.discriminator(xrec.detach())),
    }
    for module, loss in losses.items():
        optimizer = torch.optim.Adam(module.discriminator.parameters(), lr=1e-3, betas=(0.5, 0.9))
        for _ in range(2):
            optimizer.zero_grad()
            loss().backward()
            optimizer.step()
        module.adam_state = optimizer.state_dict()["state"]
    for (name, p), q in zip(ours.discriminator.named_parameters(), official.discriminator.parameters()):
        assert torch.equal(p.grad, q.grad) and not p.grad.any(), name
        assert torch.equal(p, q), name
    for index, state in official.adam_state.items():
        assert all(torch.equal(value, ours.adam_state[index][key]) for key, value in state.items())
    assert official.adam_state[0]["step"].item() == 2


def test_adversarial_term_is_weighted_adaptively_from_disc_start():
    x, xrec, posterior, _, _, decoder = tiny_autoencoder_step()
    loss_fn = gan_loss()
    loss, log = loss_fn(x, xrec, posterior, 0, global_step=100, last_layer=decoder.weight)
    d_weight, g_loss = log["train/d_weight"], log["train/g_loss"]
    assert log["train/disc_factor"].item() == 1.0
    assert torch.isfinite(d_weight) and 0 < d_weight.item() < 0.5 * 1e4
    nll_plus_kl = log["train/nll_loss"] + 1e-6 * log["train/kl_loss"]
    assert loss.item() != nll_plus_kl.item()
    assert loss.item() == pytest.approx((nll_plus_kl + d_weight * g_loss).item(), rel=1e-6)

    # d_weight = 0.5 (disc_weight) * |grad nll| / (|grad g| + 1e-4) at the decoder's last layer
    with torch.no_grad():
        logits_fake = loss_fn.discriminator(xrec)  # BatchNorm in train mode: batch statistics, same logits
    nll = torch.sum(torch.abs(x - xrec)) / 2
    (grad_nll,) = torch.autograd.grad(nll, decoder.weight, retain_graph=True)
    (grad_g,) = torch.autograd.grad(-loss_fn.discriminator(xrec).mean(), decoder.weight, retain_graph=True)
    assert g_loss.item() == pytest.approx(-logits_fake.mean().item(), rel=1e-5)
    assert d_weight.item() == pytest.approx(0.5 * grad_nll.norm().item() / (grad_g.norm().item() + 1e-4), rel=1e-4)

    d_loss, d_log = loss_fn(x, xrec, posterior, 1, global_step=100)
    expected = hinge_d_loss(loss_fn.discriminator(x), loss_fn.discriminator(xrec.detach()))
    assert d_loss.item() == pytest.approx(expected.item(), rel=1e-6) and d_loss.item() > 0
    assert d_loss.requires_grad and not any(p.grad is not None for p in decoder.parameters())


def test_validation_without_autograd_uses_zero_weights_but_training_must_have_gradients():
    x, xrec, posterior, z, encoder, decoder = tiny_autoencoder_step()
    loss_fn = gan_loss(adaptive_vf=True).eval()
    with torch.no_grad():
        loss, log = loss_fn(
            x,
            xrec,
            posterior,
            0,
            global_step=100,
            last_layer=decoder.weight,
            split="val",
            z=z,
            aux_feature=z.flip(0),
            enc_last_layer=encoder.weight,
        )
    assert log["val/d_weight"].item() == 0.0 and log["val/vf_weight"].item() == 0.0
    assert loss.item() == pytest.approx((log["val/nll_loss"] + 1e-6 * log["val/kl_loss"]).item(), rel=1e-6)

    loss_fn.train()
    with torch.no_grad(), pytest.raises(RuntimeError):
        loss_fn(x, xrec, posterior, 0, global_step=100, last_layer=decoder.weight)
    with pytest.raises(ValueError, match="last_layer"):
        loss_fn(x, xrec, posterior, 0, global_step=100)


def test_adaptive_weight_by_hand_and_its_clamp():
    layer = nn.Parameter(torch.ones(4))
    # gradients 3 * ones and ones: 3 * |1| / (|1| + 1e-4), |1| = 2
    assert adaptive_weight(3 * layer.sum(), layer.sum(), layer, 1e4).item() == pytest.approx(6 / 2.0001)
    assert adaptive_weight(1e6 * layer.sum(), layer.sum(), layer, 1e4).item() == 1e4
    assert adaptive_weight(layer.sum(), 0 * layer.sum(), layer, 1e8).item() == pytest.approx(2 / 1e-4)

    _, xrec, _, _, _, decoder = tiny_autoencoder_step()
    weight = adaptive_weight(xrec.abs().sum(), -NLayerDiscriminator()(xrec).mean(), decoder.weight, 1e4)
    assert torch.isfinite(weight) and weight.item() > 0 and not weight.requires_grad


def test_vf_loss_by_hand_on_a_2x2_grid():
    # z points along x, y, x, y; the foundation features along x, x, x, y (lengths do not matter).
    x_axis, y_axis = torch.tensor([3.0, 0.0]), torch.tensor([0.0, 0.5])
    z = torch.stack([x_axis, y_axis, x_axis, y_axis], dim=1).reshape(1, 2, 2, 2)
    aux = torch.stack([2 * x_axis, x_axis, x_axis, y_axis], dim=1).reshape(1, 2, 2, 2)
    # Cosine-similarity matrices differ by 1 at the ordered pairs (0,1), (1,2), (1,3) and their mirrors:
    # 6 of 16 entries -> distmat loss 6 * (1 - 0.25) / 16. Cosine(z, aux) is 1, 0, 1, 1 -> cos loss
    # mean(relu(0.5 - cos)) = 0.5 / 4.
    assert vf_loss(z, aux, distmat_margin=0.25, cos_margin=0.5).item() == pytest.approx(6 * 0.75 / 16 + 0.125)
    assert vf_loss(z, aux, 0.25, 0.5, distmat_weight=2.0, cos_weight=3.0).item() == pytest.approx(0.9375)


def test_vf_loss_is_zero_when_aligned_or_within_margins():
    torch.manual_seed(0)
    z, aux = torch.randn(2, 8, 4, 4), torch.randn(2, 8, 4, 4)
    assert vf_loss(z, z, 0.0, 0.0).item() < 1e-6  # only rounding of cos(z, z) = 1
    assert vf_loss(z, z, 0.1, 0.1).item() == 0.0
    # |cos difference| <= 2 and 1 - 2 - cos <= 0: margins of 2 forgive everything
    assert vf_loss(z, aux, 2.0, 2.0).item() == 0.0
    assert vf_loss(z, aux, 0.25, 0.5).item() > 0.1
    with pytest.raises(ValueError, match="same shape"):
        vf_loss(z, torch.randn(2, 16, 4, 4), 0.0, 0.0)


def test_vf_loss_in_the_total_with_fixed_and_adaptive_weight():
    x, xrec, posterior, z, encoder, decoder = tiny_autoencoder_step()
    aux = torch.randn_like(z)
    expected_vf = vf_loss(z, aux, 0.25, 0.5)
    margins = dict(distmat_margin=0.25, cos_margin=0.5, vf_weight=0.1)

    loss, log = gan_loss(**margins)(x, xrec, posterior, 0, global_step=0, z=z, aux_feature=aux)
    assert log["train/vf_loss"].item() == pytest.approx(expected_vf.item())
    assert log["train/vf_weight"].item() == pytest.approx(0.1)
    nll_plus_kl = log["train/nll_loss"] + 1e-6 * log["train/kl_loss"]
    assert loss.item() == pytest.approx((nll_plus_kl + 0.1 * expected_vf).item(), rel=1e-6)

    loss, log = gan_loss(adaptive_vf=True, **margins)(
        x, xrec, posterior, 0, global_step=0, z=z, aux_feature=aux, enc_last_layer=encoder.weight
    )
    nll = torch.sum(torch.abs(x - xrec)) / 2
    expected_weight = 0.1 * adaptive_weight(nll, expected_vf, encoder.weight, 1e8)
    assert log["train/vf_weight"].item() == pytest.approx(expected_weight.item(), rel=1e-4)
    assert loss.item() == pytest.approx((nll_plus_kl + expected_weight * expected_vf).item(), rel=1e-5)
    with pytest.raises(ValueError, match="both z and aux_feature"):
        gan_loss()(x, xrec, posterior, 0, global_step=0, z=z)


def test_loss_settings_are_checked():
    with pytest.raises(ValueError, match="perceptual_weight"):
        LPIPSWithDiscriminator(disc_start=0)
    with pytest.raises(ValueError, match="hinge"):
        LPIPSWithDiscriminator(disc_start=0, perceptual_weight=0, disc_loss="wasserstein")


# ---------------------------------------------------------------------------------------------
# Official checkpoint state
# ---------------------------------------------------------------------------------------------


def test_load_official_loss_state():
    torch.manual_seed(3)
    official = NLayerDiscriminator().apply(weights_init)
    state = {f"loss.discriminator.{key}": value for key, value in official.state_dict().items()}
    state |= {
        "loss.logvar": torch.tensor(0.5),
        "loss.perceptual_loss.net.slice1.0.weight": torch.zeros(64, 3, 3, 3),
        "encoder.conv_in.weight": torch.zeros(128, 3, 3, 3),
    }
    loss_fn = gan_loss()
    loaded = loss_fn.load_official_loss_state(state)
    assert sorted(loaded) == sorted(f"loss.discriminator.{key}" for key in OFFICIAL_DISCRIMINATOR_SHAPES) + [
        "loss.logvar"
    ]
    for key, value in official.state_dict().items():
        assert torch.equal(loss_fn.discriminator.state_dict()[key], value), key
    assert loss_fn.logvar.item() == 0.5 and loss_fn.logvar.requires_grad

    assert gan_loss().load_official_loss_state({"encoder.conv_in.weight": torch.zeros(1)}) == []
    del state["loss.discriminator.main.9.running_var"]
    with pytest.raises(ValueError, match=r"missing \['loss.discriminator.main.9.running_var'\]"):
        gan_loss().load_official_loss_state(state)
    grey = {f"loss.discriminator.{k}": v for k, v in NLayerDiscriminator(input_nc=1).state_dict().items()}
    with pytest.raises(ValueError, match=r"main.0.weight: checkpoint \(64, 1, 4, 4\), ours \(64, 3, 4, 4\)"):
        gan_loss().load_official_loss_state(grey)


# ---------------------------------------------------------------------------------------------
# LPIPS with local VGG16 weights
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vgg16_file(tmp_path_factory):
    """torchvision's vgg16 state dict in the real file format (random values)."""
    torch.manual_seed(4)
    path = tmp_path_factory.mktemp("hub") / VGG16_FILENAME
    torch.save(torchvision.models.vgg16(weights=None).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def random_lpips(tmp_path_factory):
    hub = tmp_path_factory.mktemp("empty_hub")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.hub, "get_dir", lambda: str(hub))
        return build_lpips(None, random_backbone=True)


def test_build_lpips_loads_the_vgg16_file_and_the_packaged_calibration(vgg16_file):
    model = build_lpips(str(vgg16_file))
    file = torch.load(vgg16_file, weights_only=True)
    convolutions = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    slices = [model.net.slice1, model.net.slice2, model.net.slice3, model.net.slice4, model.net.slice5]
    for index in convolutions:
        (layer,) = [getattr(s, str(index)) for s in slices if hasattr(s, str(index))]
        assert torch.equal(layer.weight, file[f"features.{index}.weight"])
        assert torch.equal(layer.bias, file[f"features.{index}.bias"])
    # the five LPIPS slices together are torchvision's vgg16.features[:30] with the file's weights
    vgg = torchvision.models.vgg16(weights=None)
    vgg.load_state_dict(file)
    image = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.net(image).relu5_3, vgg.features[:30](image))
    calibration = torch.load(lpips.__path__[0] + "/weights/v0.1/vgg.pth", map_location="cpu", weights_only=True)
    assert torch.equal(model.lin4.model[1].weight, calibration["lin4.model.1.weight"])
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_build_lpips_finds_the_hub_cache_and_explains_a_missing_file(vgg16_file, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(vgg16_file.parent.parent))
    (vgg16_file.parent.parent / "checkpoints").mkdir(exist_ok=True)
    (vgg16_file.parent.parent / "checkpoints" / VGG16_FILENAME).symlink_to(vgg16_file)
    model = build_lpips(None)
    assert torch.equal(
        getattr(model.net.slice5, "28").weight, torch.load(vgg16_file, weights_only=True)["features.28.weight"]
    )

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(FileNotFoundError) as error:
        build_lpips(None)
    for part in (
        "vae.perceptual.vgg16_weights",
        VGG16_FILENAME,
        str(tmp_path),
        "perceptual_weight: 0",
        "random_backbone",
    ):
        assert part in str(error.value)

    not_vgg = tmp_path / "resnet.pth"
    torch.save({"features.0.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(2, 2)}, not_vgg)
    with pytest.raises(ValueError, match=r"features.0.weight: file \(64, 3, 7, 7\), LPIPS \(64, 3, 3, 3\)"):
        build_lpips(str(not_vgg))


def test_perceptual_loss_is_per_sample_zero_on_equal_images_and_replicates_grey(random_lpips):
    perceptual = PerceptualLoss(random_lpips)
    perceptual.train()
    assert not perceptual.lpips.training
    torch.manual_seed(5)
    x, y = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.equal(perceptual(x, x), torch.zeros(2, 1, 1, 1))
    distance = perceptual(x, y.requires_grad_())
    assert distance.shape == (2, 1, 1, 1) and (distance > 0).all()
    distance.sum().backward()
    assert y.grad.abs().sum() > 0

    grey_x, grey_y = x[:, :1], y[:, :1].detach()
    torch.testing.assert_close(
        perceptual(grey_x, grey_y), perceptual(grey_x.repeat(1, 3, 1, 1), grey_y.repeat(1, 3, 1, 1))
    )
    with pytest.raises(ValueError, match="1- or 3-channel"):
        perceptual(torch.zeros(1, 2, 8, 8), torch.zeros(1, 2, 8, 8))


def test_perceptual_term_is_added_to_every_pixel(random_lpips):
    x, xrec, posterior, _, _, _ = tiny_autoencoder_step()
    perceptual = PerceptualLoss(random_lpips)
    loss_fn = LPIPSWithDiscriminator(disc_start=100, perceptual_weight=2.0, perceptual=perceptual)
    _, log = loss_fn(x, xrec, posterior, 0, global_step=0)
    p_loss = perceptual(x, xrec)  # (B, 1, 1, 1)
    expected_rec = (torch.abs(x - xrec) + 2.0 * p_loss).mean()
    assert log["train/rec_loss"].item() == pytest.approx(expected_rec.item(), rel=1e-6)
    assert log["train/nll_loss"].item() == pytest.approx(
        (torch.abs(x - xrec).sum() / 2 + 2.0 * 3 * 32 * 32 * p_loss.mean()).item(), rel=1e-5
    )


# ---------------------------------------------------------------------------------------------
# Foundation models from local timm weights
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_vit_files(tmp_path_factory):
    """Small ViTs with the official timm architectures (DINOv2 as .safetensors, MAE as .pth)."""
    folder = tmp_path_factory.mktemp("timm")
    torch.manual_seed(6)
    dinov2 = timm.create_model("vit_large_patch14_dinov2.lvd142m", pretrained=False, **SMALL_VIT)
    mae = timm.create_model("vit_large_patch16_224.mae", pretrained=False, **SMALL_VIT)
    save_file({k: v.contiguous() for k, v in dinov2.state_dict().items()}, folder / "model.safetensors")
    torch.save(mae.state_dict(), folder / "mae.pth")
    return {"dinov2": folder / "model.safetensors", "mae": folder / "mae.pth"}


@pytest.mark.parametrize("kind", ["dinov2", "mae"])
def test_foundation_model_loads_the_file_and_lands_on_the_latent_grid(kind, small_vit_files):
    model = FoundationModel(kind, str(small_vit_files[kind]), **SMALL_VIT)
    if kind == "dinov2":
        from safetensors.torch import load_file

        file = load_file(small_vit_files[kind])
    else:
        file = torch.load(small_vit_files[kind], weights_only=True)
    state = model.model.state_dict()
    assert set(state) == set(file)
    assert all(torch.equal(state[key], file[key]) for key in file)
    assert model.feature_dim == 64

    torch.manual_seed(7)
    for size, grid in ((128, (8, 8)), (256, (16, 16)), (256, (16, 8))):
        image = torch.rand(2, 3, size, size, requires_grad=True) * 2 - 1
        features = model(image, grid)
        assert features.shape == (2, 64, *grid) and features.grad_fn is None

    # The official recipe for 256 px images (foundation_models.py): DINOv2 gets 224 x 224, MAE the image.
    image = torch.rand(2, 3, 256, 256) * 2 - 1
    official_input = (
        F.interpolate(image, size=(224, 224), mode="bilinear", align_corners=False) if kind == "dinov2" else image
    )
    with torch.no_grad():
        official = model.model.forward_features(official_input)[:, 1:].reshape(2, 16, 16, -1).permute(0, 3, 1, 2)
    assert torch.equal(model(image, (16, 16)), official)

    grey = image[:, :1]
    assert torch.equal(model(grey, (8, 8)), model(grey.repeat(1, 3, 1, 1), (8, 8)))


def test_foundation_model_stays_frozen_and_explains_missing_weights(small_vit_files, tmp_path):
    model = FoundationModel("dinov2", None, random_weights=True, **SMALL_VIT)
    wrapper = nn.ModuleDict({"foundation": model}).train()
    assert not any(module.training for module in wrapper["foundation"].modules())
    assert not any(p.requires_grad for p in model.parameters())

    with pytest.raises(FileNotFoundError, match="vae.foundation.weights") as error:
        FoundationModel("dinov2", None)
    assert "vit_large_patch14_dinov2.lvd142m" in str(error.value) and "model.safetensors" in str(error.value)
    with pytest.raises(FileNotFoundError, match="vae.foundation.weights"):
        FoundationModel("mae", str(tmp_path / "absent.safetensors"))
    with pytest.raises(RuntimeError, match="does not fit the timm model"):
        FoundationModel("dinov2", str(small_vit_files["dinov2"]), embed_dim=64, depth=3, num_heads=2)
    with pytest.raises(ValueError, match="dinov2"):
        FoundationModel("clip", None, random_weights=True)
