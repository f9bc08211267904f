"""The presets of config/presets/: each builds the model its released weights need.

A tokenizer preset goes on top of the paper preset (`--configfile config/presets/paper.yaml
config/presets/tokenizers/<name>.yaml`); Snakemake merges the files in order, as `deep_update` does.
The official key shapes come from the f16d32 fixture with the latent width substituted, as the LDM
code sizes them (encoder.conv_out and quant_conv 2 × embed_dim, post_quant_conv and decoder.conv_in
embed_dim, linear_proj only with VF alignment).
"""

import json
import math

import pytest
import torch
import yaml
from conftest import REPO

from mdgen.config import deep_update, load_config
from mdgen.models.checkpoints import CheckpointMismatchError
from mdgen.models.vavae import VAVAE, vavae_kwargs

PRESETS = REPO / "config" / "presets"
TOKENIZERS = sorted((PRESETS / "tokenizers").glob("*.yaml"))
RELEASED_DIT_LATENTS = "vavae-f16d32-dinov2"  # the latent space the released ImageNet LightningDiT learned


def preset(*names) -> dict:
    merged = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    for path in names:
        merged = deep_update(merged, yaml.safe_load(path.read_text()))
    return load_config(json.dumps(merged), "data", "vae", "dit")


def official_shapes(embed_dim: int, aligned: bool) -> dict:
    shapes = json.loads((REPO / "tests" / "fixtures" / "vavae_official_keys.json").read_text())["f16d32_dinov2"]
    shapes |= {
        "encoder.conv_out.weight": [2 * embed_dim, 512, 3, 3],
        "encoder.conv_out.bias": [2 * embed_dim],
        "quant_conv.weight": [2 * embed_dim, 2 * embed_dim, 1, 1],
        "quant_conv.bias": [2 * embed_dim],
        "post_quant_conv.weight": [embed_dim, embed_dim, 1, 1],
        "post_quant_conv.bias": [embed_dim],
        "decoder.conv_in.weight": [512, embed_dim, 3, 3],
        "linear_proj.weight": [1024, embed_dim, 1, 1],
    }
    if not aligned:
        del shapes["linear_proj.weight"]
    return shapes


def test_there_is_a_preset_for_every_released_tokenizer():
    assert [path.stem for path in TOKENIZERS] == [
        "ldm-f16d16",
        "ldm-f16d32",
        "ldm-f16d64",
        "vavae-f16d32-dinov2",
        "vavae-f16d32-mae",
        "vavae-f16d64-dinov2",
        "vavae-f16d64-mae",
    ]


@pytest.mark.parametrize("path", TOKENIZERS, ids=lambda path: path.stem)
def test_a_tokenizer_preset_builds_the_model_its_released_file_holds(path):
    config = preset(PRESETS / "paper.yaml", path)
    embed_dim = int(path.stem.split("-")[1].removeprefix("f16d"))
    vae = config["vae"]
    assert vae["embed_dim"] == vae["ddconfig"]["z_channels"] == embed_dim
    assert vae["weight_init"].startswith("pretrained/") and f"f16d{embed_dim}" in vae["weight_init"]
    aligned = path.stem.startswith("vavae-")
    assert vae["use_vf"] == (path.stem.split("-")[2] if aligned else None)
    if aligned:  # the foundation model the file was aligned to, not the paper preset's DINOv2 by default
        assert ("patch16_224.mae" if vae["use_vf"] == "mae" else "dinov2") in vae["foundation"]["weights"]
    assert (config["dit"]["weight_init"] is not None) == (path.stem == RELEASED_DIT_LATENTS)

    model = VAVAE(**vavae_kwargs(config))
    shapes = official_shapes(embed_dim, aligned)
    state = {key: torch.zeros(shape) for key, shape in shapes.items()}
    state["loss.logvar"] = torch.zeros(())  # a released .ckpt carries its loss; it is dropped
    report = model.load_pretrained({"state_dict": state})
    assert len(report.loaded) == len(shapes) == len(model.state_dict())


def test_a_file_of_another_tokenizer_is_refused_with_both_shapes():
    config = preset(PRESETS / "paper.yaml", PRESETS / "tokenizers" / "vavae-f16d32-dinov2.yaml")
    model = VAVAE(**vavae_kwargs(config))
    state = {key: torch.zeros(shape) for key, shape in official_shapes(64, aligned=True).items()}
    with pytest.raises(CheckpointMismatchError) as error:
        model.load_pretrained({"state_dict": state})
    message = str(error.value)
    assert "quant_conv.weight: checkpoint (128, 128, 1, 1) vs model (64, 64, 1, 1)" in message
    assert "post_quant_conv.weight" in message and "linear_proj.weight" in message


def test_the_24gb_preset_trains_a_dit_with_checkpointing_in_bf16(tiny_latents, tmp_path):
    """The small-GPU settings, at a tiny size on the CPU: the train_dit stage runs with them and the
    export records them (their memory is measured by benchmarks/gpu_check.py on a GPU)."""
    from conftest import tiny_config

    from mdgen.stages import train_dit

    small_gpu = yaml.safe_load((PRESETS / "gpu-24gb.yaml").read_text())
    assert preset(PRESETS / "paper.yaml", PRESETS / "gpu-24gb.yaml")["dit"]["model_type"] == "LightningDiT-XL"
    settings = small_gpu["dit"]
    config = tiny_config(
        dit={
            "use_checkpoint": settings["use_checkpoint"],
            "batch_size": 4,  # the tiny store holds a few latents
            "trainer": {"precision": settings["trainer"]["precision"], "max_steps": 3},
        }
    )
    latents, vae = tiny_latents
    argv = ["--latents", str(latents), "--vae", str(vae), "--out-dir", str(tmp_path), "--config", json.dumps(config)]
    assert train_dit.main(argv) == 0
    exported = torch.load(tmp_path / "dit.pt", weights_only=True)
    assert exported["config"]["model"]["use_checkpoint"] is True
    assert all(torch.isfinite(value).all() for value in exported["ema"].values() if value.is_floating_point())


def test_the_paper_preset_keeps_the_official_recipe_whatever_the_cpu_default_sets():
    config = preset(PRESETS / "paper.yaml")
    vae, dit = config["vae"], config["dit"]
    assert config["data"]["size"] == 256
    assert vae["use_vf"] == "dinov2" and vae["perceptual"]["network"] == "lpips"
    assert vae["ddconfig"]["ch_mult"] == [1, 1, 2, 2, 4] and vae["ddconfig"]["attn_resolutions"] == [16]
    assert vae["base_learning_rate"] == 1e-5 and vae["lossconfig"]["disc_start"] == 1000
    assert dit["optimizer"]["lr"] == 2e-4 and dit["repa"]["weight"] == 0 and dit["compile"] is False


def test_the_study_preset_works_at_64_px_throughout_over_the_32_px_default():
    study = yaml.safe_load((PRESETS / "study.yaml").read_text())
    merged = deep_update(yaml.safe_load((REPO / "config" / "config.yaml").read_text()), study)
    assert merged["data"]["size"] == merged["teacher"]["size"] == merged["vae"]["ddconfig"]["resolution"] == 64
    assert merged["dit"]["model_type"] == "LightningDiT-Tiny/2" and merged["dit"]["compile"] is True


def test_the_cpu_va_vaes_train_without_their_gan():
    # Without the GAN the CPU VA-VAEs keep more of the person (docs/identity-study.md, sessions 14 and
    # 15): disc_start must lie beyond every optimizer step (two per batch) of their epochs, or raising
    # max_epochs would bring the GAN back unannounced. The paper preset keeps the official recipe (above).
    def optimizer_steps(config: dict) -> int:
        images = config["data"]["num_classes"] * config["simulator"]["train_per_user"]
        return 2 * math.ceil(images / config["vae"]["batch_size"]) * config["vae"]["trainer"]["max_epochs"]

    for config in (preset(), preset(PRESETS / "study.yaml")):
        assert config["vae"]["lossconfig"]["disc_start"] > optimizer_steps(config)
