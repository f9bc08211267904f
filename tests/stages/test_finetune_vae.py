"""The finetune_vae stage, run for real on a tiny simulated data set: it learns, exports the official
layout, resumes after a kill, starts over on a changed config or a cut checkpoint, and stops on
non-finite gradients."""

import csv
import dataclasses
import json
import sys

import pytest
import torch
from conftest import finetune, kill_at_checkpoint, tiny_config

from mdgen.losses import LPIPSWithDiscriminator
from mdgen.models.vavae import load_vavae, VAVAE, vavae_kwargs
from mdgen.stages import finetune_vae
from mdgen.training import vavae as vavae_training


def train_rec_loss(metrics_csv):
    with open(metrics_csv, newline="") as f:
        return [(int(r["step"]), float(r["train/rec_loss"])) for r in csv.DictReader(f) if r.get("train/rec_loss")]


def test_tiny_finetune_learns_and_exports_the_official_layout(tiny_manifest, tmp_path):
    config = tiny_config()
    assert finetune(tiny_manifest, tmp_path, config) == 0

    losses = [loss for _, loss in train_rec_loss(tmp_path / "metrics.csv")]
    assert len(losses) == 20  # 40 global steps = 20 batches: each batch steps both optimizers
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.7 * first, f"reconstruction loss {first:.3f} -> {last:.3f}"

    checkpoint = torch.load(tmp_path / "vavae.pt", map_location="cpu", weights_only=True)
    keys = set(checkpoint["state_dict"])
    assert {"encoder.conv_in.weight", "decoder.conv_out.weight", "quant_conv.weight", "post_quant_conv.weight"} <= keys
    assert "loss.logvar" in keys and "loss.discriminator.main.0.weight" in keys  # resumable official-style
    assert checkpoint["config"]["model"]["embed_dim"] == 4
    model = load_vavae(tmp_path / "vavae.pt")
    assert model.encode(torch.zeros(1, 3, 32, 32)).mode().shape == (1, 4, 16, 16)
    assert (tmp_path / "curves.png").stat().st_size > 10_000


def test_adversarial_terms_are_off_before_disc_start(tiny_manifest, tmp_path):
    assert finetune(tiny_manifest, tmp_path, tiny_config()) == 0
    with open(tmp_path / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/disc_factor")]
    # The logged step counts batches; disc_start counts optimizer steps, two per batch (official).
    before = [r for r in rows if 2 * int(r["step"]) < 10]
    after = [r for r in rows if 2 * int(r["step"]) >= 10]
    assert before and after
    assert all(float(r["train/disc_factor"]) == 0 and float(r["train/disc_loss"]) == 0 for r in before)
    assert all(float(r["train/disc_factor"]) == 1 and float(r["train/d_weight"]) > 0 for r in after)


@pytest.mark.fault
def test_interrupted_finetune_resumes_at_the_saved_step_with_the_same_optimizer_state(
    tiny_manifest, tmp_path, monkeypatch
):
    config = tiny_config(vae={"trainer": {"max_steps": 400}})
    last = tmp_path / "training" / "checkpoints" / "last.ckpt"
    command = [
        sys.executable,
        "-m",
        "mdgen.stages.finetune_vae",
        "--manifest",
        str(tiny_manifest),
        "--out-dir",
        str(tmp_path),
        "--config",
        json.dumps(config),
    ]
    saved = kill_at_checkpoint(command, last)
    assert not (tmp_path / "vavae.pt").exists()
    saved_step = saved["global_step"]

    # Rerun with the same config; capture the state the trainer starts from.
    seen = {}

    class Capture(finetune_vae.pl.Callback):
        def on_train_start(self, trainer, module):
            seen["step"] = trainer.global_step
            seen["optimizers"] = [o.state_dict() for o in trainer.optimizers]
            trainer.should_stop = True  # the resume is what this test is about

    build = finetune_vae.trainer_from_config
    monkeypatch.setattr(
        finetune_vae,
        "trainer_from_config",
        lambda cfg, work_dir, callbacks, **kw: build(cfg, work_dir, [*callbacks, Capture()], **kw),
    )
    assert finetune(tiny_manifest, tmp_path, config) == 0
    assert seen["step"] == saved_step
    for restored, stored in zip(seen["optimizers"], saved["optimizer_states"]):
        assert restored["state"].keys() == stored["state"].keys()
        for key, state in stored["state"].items():
            torch.testing.assert_close(restored["state"][key]["exp_avg"], state["exp_avg"])
            assert restored["state"][key]["step"] == state["step"]
    assert (tmp_path / "vavae.pt").exists()


def test_changed_config_starts_over(tiny_manifest, tmp_path, capsys):
    assert finetune(tiny_manifest, tmp_path, tiny_config(vae={"trainer": {"max_steps": 8}})) == 0
    assert (
        finetune(tiny_manifest, tmp_path, tiny_config(vae={"trainer": {"max_steps": 8}, "base_learning_rate": 1e-4}))
        == 0
    )
    output = capsys.readouterr().out
    assert "configuration changed" in output and "Resuming" not in output


@pytest.mark.fault
def test_a_truncated_last_checkpoint_is_set_aside_and_training_starts_over(tiny_manifest, tmp_path, capsys):
    config = tiny_config(vae={"trainer": {"max_steps": 8}})
    assert finetune(tiny_manifest, tmp_path, config) == 0
    last = tmp_path / "training/checkpoints/last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # as a kill during the write leaves it
    (tmp_path / "vavae.pt").unlink()
    capsys.readouterr()
    assert finetune(tiny_manifest, tmp_path, config) == 0
    output = capsys.readouterr().out
    assert "last.ckpt cannot be read" in output and "starting over" in output and "Resuming" not in output
    assert (tmp_path / "training/checkpoints/last.ckpt.unreadable").exists()
    assert torch.load(last, weights_only=False)["global_step"] == 8  # a new, complete one
    assert (tmp_path / "vavae.pt").exists()


def test_finetune_from_an_official_checkpoint_reports_what_it_loaded(tiny_manifest, tmp_path, capsys):
    config = tiny_config(vae={"trainer": {"max_steps": 4}})
    source = VAVAE(**vavae_kwargs(config) | {"use_vf": "dinov2"})
    state = source.official_state_dict() | {
        "loss.logvar": torch.tensor(0.5),
        "foundation_model.model.cls_token": torch.zeros(1, 1, 8),
    }
    torch.save({"state_dict": state}, tmp_path / "official.pt")
    config["vae"]["weight_init"] = str(tmp_path / "official.pt")
    assert finetune(tiny_manifest, tmp_path / "out", config) == 0
    output = capsys.readouterr().out
    assert "foundation_model" in output and "linear_proj" in output and "loss.logvar" in output
    exported = torch.load(tmp_path / "out" / "vavae.pt", weights_only=True)["state_dict"]
    assert exported["loss.logvar"].item() == 0.5  # logvar is not trained, as in the official code


def test_finetune_with_lpips_and_vf_alignment_runs(tiny_manifest, tmp_path, monkeypatch):
    """The full loss on CPU: LPIPS (random VGG backbone) and a tiny stand-in DINOv2 for VF alignment."""
    from mdgen.losses import foundation

    small = dict(model_name="vit_small_patch14_dinov2", embed_dim=64, depth=1, num_heads=2)
    real = foundation.FoundationModel
    monkeypatch.setattr(
        vavae_training,
        "FoundationModel",
        lambda kind, weights, random_weights: real(kind, weights, random_weights=random_weights, **small),
    )
    config = tiny_config(
        vae={
            "use_vf": "dinov2",
            "trainer": {"max_steps": 12},
            "lossconfig": {"perceptual_weight": 1.0, "disc_start": 0},
            "perceptual": {"random_backbone": True},
            "foundation": {"random_weights": True},
        }
    )
    # A narrow alignment head: the export's config and the trained model must both see it.
    narrow = lambda cfg: vavae_kwargs(cfg) | {"vf_feature_dim": 64}
    monkeypatch.setattr(finetune_vae, "vavae_kwargs", narrow)
    monkeypatch.setattr(vavae_training, "vavae_kwargs", narrow)
    assert finetune(tiny_manifest, tmp_path, config) == 0
    with open(tmp_path / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/vf_loss")]
    assert rows and all(float(r["train/vf_weight"]) > 0 for r in rows)
    state = torch.load(tmp_path / "vavae.pt", weights_only=True)["state_dict"]
    assert state["linear_proj.weight"].shape == (64, 4, 1, 1)
    ckpt = torch.load(tmp_path / "training" / "checkpoints" / "last.ckpt", weights_only=False)
    assert not any(k.startswith(vavae_training.FROZEN_PREFIXES) for k in ckpt["state_dict"])


@pytest.mark.fault
def test_non_finite_gradients_stop_the_vae_before_the_step(tiny_manifest, tmp_path, monkeypatch):
    calls = {"count": 0}
    real_terms = LPIPSWithDiscriminator.autoencoder_terms

    def terms_that_turn_nan(self, *args, **kwargs):
        terms = real_terms(self, *args, **kwargs)
        calls["count"] += torch.is_grad_enabled()  # training steps only, not validation
        return dataclasses.replace(terms, nll=terms.nll * float("nan")) if calls["count"] == 5 else terms

    monkeypatch.setattr(LPIPSWithDiscriminator, "autoencoder_terms", terms_that_turn_nan)
    with pytest.raises(SystemExit, match="VAVAETraining: non-finite gradients at step 8 "):
        finetune(tiny_manifest, tmp_path, tiny_config())  # two optimizer steps per batch: the 5th batch starts at 8
    assert not (tmp_path / "vavae.pt").exists()
    checkpoint = torch.load(tmp_path / "training/checkpoints/last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == 8
    assert all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values() if v.is_floating_point())
