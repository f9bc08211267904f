"""The train_dit stage, run for real on tiny latent stores: losses fall, the export has the official
layout, training resumes after a kill, the low-data draw and the fidelity probe, non-finite
gradients, and a start from released weights."""

import csv
import json
import sys

import numpy as np
import pytest
import torch
from conftest import kill_at_checkpoint, tiny_config, train

from mdgen.data.latents import LatentStoreWriter, open_latent_store
from mdgen.models.lightningdit import create_model
from mdgen.stages import train_dit


def metric(metrics_csv, name):
    with open(metrics_csv, newline="") as f:
        return [(int(r["step"]), float(r[name])) for r in csv.DictReader(f) if r.get(name)]


@pytest.fixture(scope="module")
def structured_latents(tiny_latents, tmp_path_factory):
    """The tiny stores with their latents replaced by a fixed pattern per user plus a little noise:
    data a DiT can learn in a few steps (a random VA-VAE's latents are close to noise)."""
    source, vae = tiny_latents
    folder = tmp_path_factory.mktemp("structured")
    patterns = torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(0)).numpy()
    for split in ("train", "val"):
        store = open_latent_store(source / f"{split}.zarr")
        latents = patterns[store.labels] + 0.1 * np.random.default_rng(1).standard_normal(
            (len(store.labels), 4, 16, 16)
        )
        writer = LatentStoreWriter(folder / f"{split}.zarr", store.labels, store.paths, "float32", chunk_size=4)
        writer.append(latents.astype(np.float32))
        writer.finish(dict(store.attrs) | {"mean": [0.0] * 4, "std": [1.0] * 4})
    return folder, vae


def test_training_and_validation_losses_fall(structured_latents, tmp_path):
    out = tmp_path
    config = tiny_config(
        dit={"trainer": {"max_steps": 200}, "val_every_n_steps": 20, "batch_size": 8, "optimizer": {"lr": 3e-3}}
    )
    assert train(structured_latents, out, config) == 0
    losses = [v for _, v in metric(out / "metrics.csv", "train/loss")]
    assert np.mean(losses[-10:]) < 0.85 * np.mean(losses[:10]), (losses[:10], losses[-10:])
    val = [v for _, v in metric(out / "metrics.csv", "val/loss")]
    assert len(val) >= 5 and val[-1] < 0.9 * val[0], val
    # Each user's latents are their own pattern: the label must come to save much of the loss.
    gain = [v for _, v in metric(out / "metrics.csv", "val/label_gain")]
    assert abs(gain[0]) < 0.05 and gain[-1] > 0.2, gain
    for name in ("train/mse", "train/cosine", "train/grad_norm", "train/lr", "train/latents_per_s"):
        assert metric(out / "metrics.csv", name), name
    assert (out / "curves.png").stat().st_size > 10_000


def test_export_has_the_official_layout_and_loads_strictly(tiny_dit):
    out, _ = tiny_dit
    checkpoint = torch.load(out / "dit.pt", weights_only=True)
    assert set(checkpoint) == {"model", "ema", "opt", "config"}
    kwargs = dict(checkpoint["config"]["model"])
    assert (kwargs["num_classes"], kwargs["in_channels"], kwargs["input_size"]) == (3, 4, 16)
    model = create_model(kwargs.pop("model_type"), **kwargs)
    report = model.load_pretrained(out / "dit.pt", key="ema")
    assert len(report.loaded) == len(model.state_dict())
    assert model.null_label == 3
    # The EMA trails the tiny_dit weights: close, not equal.
    differences = [(checkpoint["ema"][k] - v).abs().max().item() for k, v in checkpoint["model"].items()]
    assert 0 < max(differences) < 1


@pytest.mark.fault
def test_interrupted_training_resumes_at_the_saved_step_with_the_saved_ema(tiny_latents, tmp_path, monkeypatch):
    config = tiny_config(dit={"trainer": {"max_steps": 5000}})
    latents, vae = tiny_latents
    last = tmp_path / "training" / "checkpoints" / "last.ckpt"
    command = [
        sys.executable,
        "-m",
        "mdgen.stages.train_dit",
        "--latents",
        str(latents),
        "--vae",
        str(vae),
        "--out-dir",
        str(tmp_path),
        "--config",
        json.dumps(config),
    ]
    saved = kill_at_checkpoint(command, last)
    saved_ema = {k.removeprefix("ema."): v for k, v in saved["state_dict"].items() if k.startswith("ema.")}
    assert saved_ema

    seen = {}

    class Capture(train_dit.pl.Callback):
        def on_train_start(self, trainer, module):
            seen["step"] = trainer.global_step
            seen["ema"] = {k: v.clone() for k, v in module.ema.state_dict().items()}
            seen["adam_steps"] = [s["step"] for s in trainer.optimizers[0].state_dict()["state"].values()][:1]
            trainer.should_stop = True

    build = train_dit.trainer_from_config
    monkeypatch.setattr(
        train_dit,
        "trainer_from_config",
        lambda cfg, work_dir, callbacks, **kw: build(cfg, work_dir, [*callbacks, Capture()], **kw),
    )
    assert train(tiny_latents, tmp_path, config) == 0
    assert seen["step"] == saved["global_step"]
    assert seen["adam_steps"] == [s["step"] for s in saved["optimizer_states"][0]["state"].values()][:1]
    for key, value in saved_ema.items():
        torch.testing.assert_close(seen["ema"][key], value, rtol=0, atol=0)


def test_the_last_checkpoint_holds_the_exported_ema_so_a_rerun_exports_the_same_dit(tiny_latents, tmp_path):
    """A checkpoint saved at a step holds the EMA updated with that step: the run's last checkpoint
    and its dit.pt agree, and rerunning the finished stage (what Snakemake does when the sampling
    settings the fidelity probe reads change) re-exports the very same weights."""
    config = tiny_config(dit={"trainer": {"max_steps": 4}, "checkpoint_every_n_steps": 2})
    assert train(tiny_latents, tmp_path, config) == 0
    exported = torch.load(tmp_path / "dit.pt", weights_only=True)["ema"]
    last = torch.load(tmp_path / "training" / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 4
    saved = {k.removeprefix("ema."): v for k, v in last["state_dict"].items() if k.startswith("ema.")}
    assert saved.keys() == exported.keys()
    for key, value in exported.items():
        torch.testing.assert_close(saved[key], value, rtol=0, atol=0, msg=key)
    (tmp_path / "dit.pt").unlink()
    assert train(tiny_latents, tmp_path, config) == 0
    for key, value in torch.load(tmp_path / "dit.pt", weights_only=True)["ema"].items():
        torch.testing.assert_close(value, exported[key], rtol=0, atol=0, msg=key)


def test_low_data_training_uses_exactly_the_per_user_draw(tiny_latents, tmp_path):
    """train_dit --per-user k trains on the draw the classifiers of the low-data study get."""
    from mdgen.data.dataset import per_user_subset
    from mdgen.data.latents import open_latent_store

    latents, vae = tiny_latents
    config = tiny_config(dit={"trainer": {"max_steps": 3}})
    assert (
        train_dit.main(
            [
                "--latents",
                str(latents),
                "--vae",
                str(vae),
                "--out-dir",
                str(tmp_path),
                "--config",
                json.dumps(config),
                "--per-user",
                "2",
                "--subset-seed",
                "5",
            ]
        )
        == 0
    )
    subset = torch.load(tmp_path / "dit.pt", weights_only=True)["config"]["train_subset"]
    store = open_latent_store(latents / "train.zarr")
    expected = [store.paths[i] for i in per_user_subset(store.labels, 2, 5)]
    assert subset == {"per_user": 2, "seed": 5, "paths": expected} and len(expected) == 3 * 2


def test_fidelity_probe_logs_both_judges_on_schedule(tiny_latents, tiny_manifest, tmp_path):
    latents, vae = tiny_latents
    config = tiny_config(
        dit={"trainer": {"max_steps": 7}},
        logging={"fidelity_every_n_steps": 3, "fidelity_per_user": 2},
        evaluation={"classifier": {"epochs": 2}},
    )
    argv = ["--latents", str(latents), "--vae", str(vae), "--out-dir", str(tmp_path), "--config", json.dumps(config)]
    with pytest.raises(SystemExit, match="pass --manifest"):
        train_dit.main(argv)
    assert train_dit.main([*argv, "--manifest", str(tiny_manifest)]) == 0
    for name in ("probe/fidelity", "probe/fidelity_recon_judge"):
        logged = metric(tmp_path / "metrics.csv", name)
        # after steps 3 and 6 and the last one, 7 (the CSV counts steps from 0)
        assert [step for step, _ in logged] == [2, 5, 6] and all(0 <= value <= 1 for _, value in logged), (name, logged)


@pytest.mark.fault
def test_non_finite_gradients_stop_training_before_the_step_and_keep_the_last_checkpoint(
    tiny_latents, tmp_path, monkeypatch
):
    import mdgen.training.dit as dit_training

    calls = {"count": 0}
    real_loss = dit_training.training_loss

    def loss_that_turns_nan(*args, **kwargs):
        losses = real_loss(*args, **kwargs)
        calls["count"] += torch.is_grad_enabled()  # training steps only, not validation
        if calls["count"] == 7:
            losses["loss"] = losses["loss"] * float("nan")
        return losses

    monkeypatch.setattr(dit_training, "training_loss", loss_that_turns_nan)
    config = tiny_config(dit={"trainer": {"max_steps": 20}, "val_every_n_steps": 100})
    with pytest.raises(SystemExit, match=r"non-finite gradients at step 6 .*last\.ckpt"):
        train(tiny_latents, tmp_path, config)
    assert not (tmp_path / "dit.pt").exists()
    checkpoint = torch.load(tmp_path / "training/checkpoints/last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == 4  # written every 4 steps, before the fault
    assert all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values() if v.is_floating_point())


def test_training_starts_from_a_released_checkpoint_with_1000_classes(tiny_latents, tmp_path, capsys):
    torch.manual_seed(1)
    released = create_model("LightningDiT-Micro/1", num_classes=1000, input_size=16, in_channels=4)
    state = released.state_dict()
    torch.save({"model": state, "ema": state, "opt": {}, "config": {}}, tmp_path / "imagenet.pt")
    config = tiny_config(dit={"trainer": {"max_steps": 3}, "weight_init": str(tmp_path / "imagenet.pt")})
    assert train(tiny_latents, tmp_path / "out", config) == 0
    output = capsys.readouterr().out
    assert "y_embedder.embedding_table.weight: (1001, 64) -> (4, 64)" in output
    exported = torch.load(tmp_path / "out/dit.pt", weights_only=True)
    # Three steps from the released weights: near them, not equal, and the null row carried over.
    moved = (exported["model"]["blocks.0.attn.qkv.weight"] - state["blocks.0.attn.qkv.weight"]).abs().max()
    assert 0 < moved < 0.05
    null_row = exported["model"]["y_embedder.embedding_table.weight"][3]
    assert (null_row - state["y_embedder.embedding_table.weight"][1000]).abs().max() < 0.05
