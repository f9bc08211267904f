"""The evaluate_vae stage, run for real: the fine-tuned VA-VAE against its start, and where identity
is lost (the identity table)."""

import json

import pytest
import torch
from conftest import finetune, tiny_config

from mdgen.data.dataset import class_label
from mdgen.data.validation import read_manifest
from mdgen.evaluation.classifier import load_images, Recipe
from mdgen.evaluation.identity import accuracy, load_judges, load_reconstructions
from mdgen.models.vavae import save_official, VAVAE, vavae_kwargs
from mdgen.stages.evaluate_vae import main as evaluate


def test_evaluate_vae_compares_initial_and_fine_tuned(tiny_manifest, tmp_path):
    config = tiny_config()
    assert finetune(tiny_manifest, tmp_path, config) == 0
    out_json, out_png = tmp_path / "eval.json", tmp_path / "reconstructions.png"
    assert (
        evaluate(
            [
                "--manifest",
                str(tiny_manifest),
                "--vae",
                str(tmp_path / "vavae.pt"),
                "--config",
                json.dumps(config),
                "--out-json",
                str(out_json),
                "--out-png",
                str(out_png),
            ]
        )
        == 0
    )
    report = json.loads(out_json.read_text())
    assert report["images"] == 6 and report["initial_weights"] == "initial (random init)"
    assert report["fine_tuned"]["psnr"] > report["initial"]["psnr"] + 3
    assert 0 < report["fine_tuned"]["ssim"] <= 1
    assert len(report["fine_tuned"]["latent_mean"]) == 4 and all(s > 0 for s in report["fine_tuned"]["latent_std"])
    assert report["lpips_available"] is (report["fine_tuned"]["lpips"] is not None)
    assert out_png.stat().st_size > 10_000


def test_evaluate_vae_writes_the_identity_table(tiny_manifest, tmp_path):
    config = tiny_config(
        evaluation={"seeds": [0, 1], "classifier": {"epochs": 5, "size": 32, "batch_size": 4}},
        decode={"colormap": "jet", "noise": True},
    )
    save_official(tmp_path / "vavae.pt", VAVAE(**vavae_kwargs(config)), {"model": vavae_kwargs(config), **config})
    out = tmp_path / "eval.json"
    args = ["--manifest", str(tiny_manifest), "--vae", str(tmp_path / "vavae.pt"), "--config", json.dumps(config)]
    judges = tmp_path / "judges.pt"
    outputs = ["--out-json", str(out), "--out-png", str(tmp_path / "recon.png"), "--out-judges", str(judges)]
    outputs += ["--out-reconstructions", str(tmp_path / "reconstructions.pt")]
    outputs += ["--out-noise", str(tmp_path / "noise.json")]
    assert evaluate([*args, *outputs]) == 0
    # the decoder's noise, fitted on the 12 train images
    noise = json.loads((tmp_path / "noise.json").read_text())
    assert noise["applied"] and noise["model"]["images"] == 12 and len(noise["model"]["std"]) == 16
    assert all(s > 0 for s in noise["model"]["std"])
    table = json.loads(out.read_text())["identity"]
    assert table["judge"].startswith("evaluation classifier (cnn, 32 px) trained on real train, seeds [0, 1]")
    for key in ("real_val", "reconstructions", "reconstruction_judge"):
        assert len(table[key]["runs"]) == 2 and 0 <= table[key]["mean"] <= 1
    # the real judges, for evaluate_generation: they score real val as the table says
    settings = config["evaluation"]
    recipe = Recipe(**settings["classifier"])
    rows = read_manifest(tiny_manifest, "train")
    loaded = load_judges(judges, recipe, settings["seeds"], rows, 3, 3)
    val = read_manifest(tiny_manifest, "val")
    val_x = load_images([r["path"] for r in val], 3, recipe.size)
    val_y = torch.tensor([class_label(r["user_id"]) for r in val])
    assert [accuracy(loaded[seed], val_x, val_y) for seed in settings["seeds"]] == table["real_val"]["runs"]
    # the reconstructions, for evaluate_generation's check for copied latents: val's are the ones the
    # table's judges scored, both splits as the judges see them
    decoded = load_reconstructions(tmp_path / "reconstructions.pt", {"train": rows, "val": val}, recipe.size)
    assert decoded["train"].shape == (12, 3, 32, 32) and decoded["val"].shape == val_x.shape
    assert [accuracy(loaded[seed], decoded["val"], val_y) for seed in settings["seeds"]] == table["reconstructions"][
        "runs"
    ]


def test_evaluate_vae_refuses_a_decode_colormap_the_recordings_are_not_in(tiny_manifest, tmp_path):
    config = tiny_config(decode={"colormap": "viridis"})  # the simulated recordings are jet
    save_official(tmp_path / "vavae.pt", VAVAE(**vavae_kwargs(config)), {"model": vavae_kwargs(config), **config})
    args = ["--manifest", str(tiny_manifest), "--vae", str(tmp_path / "vavae.pt"), "--config", json.dumps(config)]
    with pytest.raises(SystemExit, match="decode.colormap 'viridis': .* of the val recordings' pixels"):
        evaluate([*args, "--out-json", str(tmp_path / "eval.json"), "--out-png", str(tmp_path / "recon.png")])
    assert not (tmp_path / "eval.json").exists()
