"""VA-VAE: official key names and shapes, numeric equality with the official code, checkpoint loading rules."""

import json
from pathlib import Path

import pytest
import torch

from mdgen.models.vavae import (
    CheckpointMismatchError,
    DiagonalGaussianDistribution,
    load_vavae,
    save_official,
    VAVAE,
    vavae_kwargs,
)

FIXTURES = Path(__file__).parent / "fixtures"
OFFICIAL = json.loads((FIXTURES / "vavae_official_keys.json").read_text())
TINY = dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,), resolution=32, z_channels=4, embed_dim=4)


def seeded(seed=0, **kwargs):
    torch.manual_seed(seed)
    return VAVAE(**{**TINY, **kwargs}).eval()


def shapes(model):
    return {key: list(value.shape) for key, value in model.state_dict().items()}


def fake_official_checkpoint(model):
    """What the released file looks like: the autoencoder plus the loss and the DINOv2 teacher."""
    state_dict = {
        **model.official_state_dict(),
        "loss.logvar": torch.zeros(()),
        "loss.discriminator.main.0.weight": torch.zeros(64, 3, 4, 4),
        "loss.perceptual_loss.net.slice1.0.weight": torch.zeros(64, 3, 3, 3),
        "foundation_model.model.cls_token": torch.zeros(1, 1, 1024),
        "foundation_model.model.patch_embed.proj.weight": torch.zeros(1024, 3, 14, 14),
    }
    return {"state_dict": state_dict}


# ---------------------------------------------------------------------------------------------
# Compatibility with the official code
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["f16d32_dinov2", "small"])
def test_key_names_shapes_and_order_equal_the_official_state_dict(name):
    config = OFFICIAL["_configs"][name]
    with torch.device("meta"):
        model = VAVAE(**config, use_vf="dinov2", reverse_proj=True)
    assert list(shapes(model).items()) == list(OFFICIAL[name].items())


def test_fixture_covers_attention_at_every_place_it_can_sit():
    keys = OFFICIAL["small"]
    for prefix in ("encoder.down.1.attn.0.", "encoder.mid.attn_1.", "decoder.mid.attn_1.", "decoder.up.1.attn.1."):
        assert prefix + "q.weight" in keys
    assert OFFICIAL["f16d32_dinov2"]["linear_proj.weight"] == [1024, 32, 1, 1]
    assert OFFICIAL["f16d32_dinov2"]["decoder.up.3.upsample.conv.weight"] == [256, 256, 3, 3]


def test_official_weights_give_the_official_outputs():
    reference = torch.load(FIXTURES / "vavae_small_reference.pt", weights_only=True)
    model = VAVAE(**reference["config"]).eval()
    report = model.load_pretrained(reference)
    assert len(report.loaded) == len(OFFICIAL["small"]) and not report.dropped and not report.adapted
    with torch.no_grad():
        posterior = model.encode(reference["input"])
        decoded = model.decode(posterior.mean)
    assert posterior.mean.shape == (2, 4, 16, 16) and decoded.shape == (2, 3, 32, 32)
    torch.testing.assert_close(posterior.mean, reference["mean"], rtol=0, atol=1e-5)
    torch.testing.assert_close(posterior.logvar, reference["logvar"], rtol=0, atol=1e-5)
    torch.testing.assert_close(decoded, reference["decoded"], rtol=0, atol=1e-5)
    assert reference["decoded"].abs().max() > 0.1  # the reference is not trivially zero


def test_f16d32_has_about_70_million_parameters_without_the_alignment_head():
    with torch.device("meta"):
        inference, training = VAVAE(), VAVAE(use_vf="dinov2")
    assert sum(p.numel() for p in inference.parameters()) == 69_836_067
    assert sum(p.numel() for p in training.parameters()) - 69_836_067 == 32 * 1024
    assert inference.downsample_factor == 16


# ---------------------------------------------------------------------------------------------
# Shapes and the posterior
# ---------------------------------------------------------------------------------------------


def test_encode_decode_shapes_for_a_16x_downsampling_model():
    model = seeded(ch_mult=(1, 2, 2, 2, 2), resolution=64, attn_resolutions=(4,), embed_dim=6)
    assert model.downsample_factor == 16
    with torch.no_grad():
        reconstruction, posterior, z = model(torch.rand(2, 3, 64, 64) * 2 - 1)
    assert z.shape == posterior.mean.shape == posterior.logvar.shape == (2, 6, 4, 4)
    assert reconstruction.shape == (2, 3, 64, 64)
    assert model.encoder_last_layer is model.encoder.conv_out.weight
    assert model.decoder_last_layer is model.decoder.conv_out.weight


def test_encode_rejects_sides_that_are_not_multiples_of_the_downsample_factor():
    with pytest.raises(ValueError, match=r"got shape \(1, 3, 31, 32\).*multiple of 2"):
        seeded().encode(torch.zeros(1, 3, 31, 32))


def test_double_z_false_is_refused_with_what_to_set():
    with pytest.raises(ValueError, match="double_z: true"):
        VAVAE(**TINY, double_z=False)


def test_posterior_sample_mode_kl_and_logvar_clamp():
    mean = torch.randn(2, 3, 4, 4)
    logvar = torch.randn(2, 3, 4, 4)
    posterior = DiagonalGaussianDistribution(torch.cat([mean, logvar], dim=1))
    assert torch.equal(posterior.mode(), mean)
    first = posterior.sample(torch.Generator().manual_seed(7))
    second = posterior.sample(torch.Generator().manual_seed(7))
    assert torch.equal(first, second) and not torch.equal(first, mean)
    noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(first, mean + torch.exp(0.5 * logvar) * noise)
    by_hand = torch.stack([0.5 * (m**2 + lv.exp() - 1 - lv).sum() for m, lv in zip(mean, logvar)])
    torch.testing.assert_close(posterior.kl(), by_hand)
    assert posterior.kl().shape == (2,)

    huge = DiagonalGaussianDistribution(torch.cat([mean, torch.full_like(logvar, 1e4)], dim=1))
    assert huge.logvar.max().item() == 20.0 and torch.isfinite(huge.var).all()
    tiny = DiagonalGaussianDistribution(torch.cat([mean, torch.full_like(logvar, -1e4)], dim=1))
    assert tiny.logvar.min().item() == -30.0

    fixed = DiagonalGaussianDistribution(torch.cat([mean, logvar], dim=1), deterministic=True)
    assert torch.equal(fixed.sample(), mean) and torch.equal(fixed.kl(), torch.zeros(2))


def test_align_projects_latents_up_or_features_down():
    z, features = torch.randn(2, 4, 16, 16), torch.randn(2, 64, 16, 16)
    up = seeded(use_vf="dinov2", reverse_proj=True, vf_feature_dim=64)
    projected, target = up.align(z, features)
    assert projected.shape == (2, 64, 16, 16) and target is features
    assert "linear_proj.bias" not in up.state_dict()
    down = seeded(use_vf="mae", reverse_proj=False, vf_feature_dim=64)
    latents, projected = down.align(z, features)
    assert latents is z and projected.shape == (2, 4, 16, 16)
    assert down.state_dict()["linear_proj.weight"].shape == (4, 64, 1, 1)
    with pytest.raises(ValueError, match="use_vf=None"):
        seeded().align(z, features)


# ---------------------------------------------------------------------------------------------
# Loading checkpoints
# ---------------------------------------------------------------------------------------------


def test_official_layout_checkpoint_loads_and_reports_what_was_dropped(tmp_path):
    source = seeded(1, use_vf="dinov2")
    path = tmp_path / "vavae-official.pt"
    torch.save(fake_official_checkpoint(source), path)

    model = seeded(2, use_vf="dinov2")
    report = model.load_pretrained(path)
    assert report.path == str(path) and len(report.loaded) == len(OFFICIAL["small"])
    assert {prefix: len(keys) for prefix, keys in report.dropped.items()} == {"loss.": 3, "foundation_model.": 2}
    text = str(report)
    assert f"loaded {len(OFFICIAL['small'])} tensors" in text
    assert "dropped 3 loss.* tensors: training loss" in text and "dropped 2 foundation_model.* tensors" in text
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key

    inference = seeded(3)  # use_vf=None: the alignment head is not needed
    report = inference.load_pretrained(path)
    assert report.dropped["linear_proj."] == ["linear_proj.weight"]
    assert len(report.loaded) == len(OFFICIAL["small"]) - 1


def test_checkpoint_wrapped_under_a_prefix_is_unwrapped():
    source = seeded(1)
    wrapped = {f"vae.{key}": value for key, value in source.state_dict().items()}
    wrapped["discriminator.conv.weight"] = torch.zeros(1)
    model = seeded(2)
    report = model.load_pretrained({"state_dict": wrapped})
    assert report.dropped == {"discriminator.": ["discriminator.conv.weight"]}
    assert any("stripped the prefix 'vae.'" in sentence for sentence in report.adapted)
    assert torch.equal(model.encoder.conv_in.weight, source.encoder.conv_in.weight)


def test_wrong_shape_fails_naming_the_key_and_both_shapes(tmp_path):
    path = tmp_path / "wide.pt"
    torch.save({"state_dict": seeded(ch=64).state_dict()}, path)
    model = seeded()
    before = model.encoder.conv_in.weight.clone()
    with pytest.raises(CheckpointMismatchError) as error:
        model.load_pretrained(path)
    message = str(error.value)
    assert "encoder.conv_in.weight: checkpoint (64, 3, 3, 3) vs model (32, 3, 3, 3)" in message
    assert str(path) in message and "ddconfig" in message and "ch=32" in message
    assert torch.equal(model.encoder.conv_in.weight, before)  # nothing was loaded


def test_missing_and_unexpected_keys_fail_naming_them():
    state_dict = seeded().state_dict()
    del state_dict["decoder.mid.attn_1.k.bias"]
    missing = r"missing from the checkpoint \(1\):\n    decoder.mid.attn_1.k.bias"
    with pytest.raises(CheckpointMismatchError, match=missing):
        seeded().load_pretrained(state_dict)
    state_dict = {**seeded().state_dict(), "decoder.extra.weight": torch.zeros(3)}
    unexpected = r"unexpected in the checkpoint \(1\):\n    decoder.extra.weight"
    with pytest.raises(CheckpointMismatchError, match=unexpected):
        seeded().load_pretrained(state_dict)
    # a training model asked to load an inference checkpoint is told about use_vf
    with pytest.raises(CheckpointMismatchError, match="no VF alignment head: build the model with use_vf: null"):
        seeded(use_vf="dinov2").load_pretrained(seeded().state_dict())


def test_rgb_checkpoint_adapted_to_grey_gives_the_rgb_model_on_grey_images(tmp_path):
    rgb = seeded(4)
    path = tmp_path / "rgb.pt"
    torch.save(fake_official_checkpoint(rgb), path)
    grey = seeded(5, in_channels=1, out_ch=1)
    report = grey.load_pretrained(path)
    assert len(report.adapted) == 2
    assert "encoder.conv_in: summed the 3 RGB input filters" in str(report)
    assert "decoder.conv_out: averaged the 3 RGB output filters" in str(report)

    image = torch.rand(2, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        grey_posterior, rgb_posterior = grey.encode(image), rgb.encode(image.repeat(1, 3, 1, 1))
        torch.testing.assert_close(grey_posterior.mean, rgb_posterior.mean, rtol=0, atol=1e-5)
        torch.testing.assert_close(grey_posterior.logvar, rgb_posterior.logvar, rtol=0, atol=1e-5)
        z = rgb_posterior.mean
        torch.testing.assert_close(grey.decode(z), rgb.decode(z).mean(dim=1, keepdim=True), rtol=0, atol=1e-5)


def test_save_official_and_load_vavae_round_trip(tmp_path):
    kwargs = {**TINY, "use_vf": "dinov2", "reverse_proj": True, "vf_feature_dim": 64}
    model = seeded(6, **kwargs)
    path = tmp_path / "out" / "vavae.pt"
    loss_state = {"loss.logvar": torch.tensor(0.5), "loss.discriminator.main.0.weight": torch.ones(8, 3, 4, 4)}
    save_official(path, model, {"model": kwargs, "stage": "vae"}, extra_state=loss_state)
    assert path.is_file() and [p.name for p in path.parent.iterdir()] == ["vavae.pt"]  # no temporary left

    saved = torch.load(path, weights_only=True)
    assert saved["config"]["stage"] == "vae" and torch.equal(saved["state_dict"]["loss.logvar"], torch.tensor(0.5))
    assert len(saved["state_dict"]) == len(OFFICIAL["small"]) + 2
    loaded = load_vavae(path).eval()
    image = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded(image, sample_posterior=False)[0], model(image, sample_posterior=False)[0])
    assert torch.equal(loaded.linear_proj.weight, model.linear_proj.weight)

    inference = load_vavae(path, use_vf=None)
    assert not any(key.startswith("linear_proj.") for key in inference.state_dict())
    assert torch.equal(inference.decoder.conv_out.weight, model.decoder.conv_out.weight)


def test_save_official_needs_the_constructor_kwargs(tmp_path):
    with pytest.raises(ValueError, match=r"config\['model'\]"):
        save_official(tmp_path / "x.pt", seeded(), {"ch": 32})
    with pytest.raises(ValueError, match=r"'lr'.*which VAVAE does not take"):
        save_official(tmp_path / "x.pt", seeded(), {"model": {**TINY, "lr": 1e-4}})
    with pytest.raises(ValueError, match=r"extra_state may only hold.*'decoder.extra'"):
        save_official(tmp_path / "x.pt", seeded(), {"model": TINY}, extra_state={"decoder.extra": torch.zeros(1)})
    assert not list(tmp_path.iterdir())


def test_official_f16d32_state_dict_loads_strictly_into_the_paper_preset_model():
    """The paper preset builds exactly the released architecture: every official key and shape fits."""
    from conftest import REPO

    from mdgen.config import load_config

    config = load_config(str(REPO / "config" / "presets" / "paper.yaml"), "data", "vae")
    model = VAVAE(**vavae_kwargs(config))
    official = json.loads((REPO / "tests" / "fixtures" / "vavae_official_keys.json").read_text())["f16d32_dinov2"]
    state = {key: torch.zeros(shape) for key, shape in official.items()}
    state |= {"loss.logvar": torch.zeros(()), "foundation_model.model.cls_token": torch.zeros(1, 1, 1024)}
    report = model.load_pretrained({"state_dict": state})
    assert len(report.loaded) == len(official) == len(model.state_dict())
    assert set(report.dropped) == {"loss.", "foundation_model."}
