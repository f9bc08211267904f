"""Representation alignment: the spectrogram teacher, VF loss against it, and REPA for the DiT."""

import csv
import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import teach, TEACHER, tiny_config
from test_workflow import planned_jobs, snakemake, TINY

from mdgen.data.latents import sha256_file
from mdgen.losses.perceptual import FeaturePerceptualLoss
from mdgen.losses.repa import build_projector, repa_loss
from mdgen.models.lightningdit import create_model, load_dit
from mdgen.models.teacher import SpectrogramTeacher, TeacherMismatchError
from mdgen.models.vavae import load_vavae, VAVAE
from mdgen.stages import finetune_vae, train_dit


def test_repa_loss_equals_a_direct_computation():
    generator = torch.Generator().manual_seed(0)
    projected, features = torch.randn(2, 3, 5, generator=generator), torch.randn(2, 3, 5, generator=generator)
    total = 0.0
    for b in range(2):
        for t in range(3):
            p, f = projected[b, t].tolist(), features[b, t].tolist()
            dot = sum(x * y for x, y in zip(p, f))
            total += -dot / (math.sqrt(sum(x * x for x in p)) * math.sqrt(sum(y * y for y in f)))
    assert repa_loss(projected, features).item() == pytest.approx(total / 6, abs=1e-6)
    assert repa_loss(features, features).item() == pytest.approx(-1.0, abs=1e-6)
    with pytest.raises(ValueError, match="token by token"):
        repa_loss(projected, features[:, :2])


def test_projector_maps_tokens_to_the_encoder_width():
    projector = build_projector(64, 32, 12)
    assert projector(torch.zeros(2, 16, 64)).shape == (2, 16, 12)


@pytest.mark.parametrize("size", [64, 128, 256])
def test_teacher_features_have_the_grids_vf_and_repa_ask_for(size):
    torch.manual_seed(0)
    teacher = SpectrogramTeacher(num_classes=3, in_chans=3, width=4, size=64)
    images = torch.rand(2, 3, size, size) * 2 - 1
    # VF: the latent grid of an f16 (the paper's) and an f4 (the study's) VA-VAE; REPA: the token
    # grid of a /1 and a /2 DiT on f16 latents.
    for grid in {size // 16, size // 4, size // 32}:
        features = teacher(images, grid=(grid, grid))
        assert features.shape == (2, 32, grid, grid) and torch.isfinite(features).all()
    vae = VAVAE(
        embed_dim=4, z_channels=4, ch=32, ch_mult=[1, 2], attn_resolutions=[], use_vf="domain", vf_feature_dim=32
    )
    z = torch.zeros(2, 4, size // 2, size // 2)
    aligned, target = vae.align(z, teacher(images, grid=(size // 2, size // 2)))
    assert aligned.shape == target.shape == (2, 32, size // 2, size // 2)


def test_vae_aligns_to_the_teacher(teacher_file, tiny_manifest, tmp_path):
    config = tiny_config(
        teacher=TEACHER,
        vae={"use_vf": "domain", "trainer": {"max_steps": 6}, "lossconfig": {"disc_start": 100}},
    )
    argv = ["--manifest", str(tiny_manifest), "--out-dir", str(tmp_path), "--config", json.dumps(config)]
    with pytest.raises(SystemExit, match="pass --teacher"):
        finetune_vae.main(argv)
    assert finetune_vae.main([*argv, "--teacher", str(teacher_file)]) == 0
    with open(tmp_path / "metrics.csv", newline="") as f:
        vf = [float(r["train/vf_loss"]) for r in csv.DictReader(f) if r.get("train/vf_loss")]
    assert vf and all(math.isfinite(v) for v in vf)
    saved = torch.load(tmp_path / "vavae.pt", weights_only=True)
    assert saved["config"]["teacher_sha256"] == sha256_file(teacher_file)
    assert saved["state_dict"]["linear_proj.weight"].shape == (32, 4, 1, 1)  # 8 × width teacher channels
    assert load_vavae(tmp_path / "vavae.pt").use_vf == "domain"
    assert load_vavae(tmp_path / "vavae.pt", use_vf=None).use_vf is None


def test_teacher_perceptual_loss_equals_a_direct_computation():
    torch.manual_seed(0)
    teacher = SpectrogramTeacher(num_classes=3, in_chans=3, width=4, size=16)
    x, y = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    loss = FeaturePerceptualLoss(teacher)
    distance = loss(x, y)
    assert distance.shape == (2, 1, 1, 1)
    # By hand: the teacher's four ReLU outputs on the images at its size, unit vectors per position.
    small = [F.interpolate(v, size=(16, 16), mode="bilinear", antialias=True, align_corners=False) for v in (x, y)]
    expected = []
    for b in range(2):
        per_block = []
        activations = [[], []]
        for i, image in enumerate(small):
            h = image[b : b + 1]
            for module in teacher.net.blocks:
                h = module(h)
                if isinstance(module, torch.nn.ReLU):
                    activations[i].append(h[0])
        for fx, fy in zip(*activations):
            ux = fx / fx.norm(dim=0, keepdim=True).clamp_min(1e-12)
            uy = fy / fy.norm(dim=0, keepdim=True).clamp_min(1e-12)
            per_block.append(((ux - uy) ** 2).sum(dim=0).mean())
        expected.append(sum(per_block) / len(per_block))
    assert distance.flatten().tolist() == pytest.approx([e.item() for e in expected], rel=1e-5)
    assert loss(x, x).abs().max().item() == 0
    # Gradients reach the images, finite where a ReLU zeroed every channel (a constant image).
    flat = torch.zeros(1, 3, 32, 32, requires_grad=True)
    loss(flat, torch.zeros(1, 3, 32, 32)).sum().backward()
    assert torch.isfinite(flat.grad).all()
    assert not any(p.requires_grad for p in loss.parameters()) and not loss.train().training


def test_vae_trains_with_the_teachers_perceptual_loss(teacher_file, tiny_manifest, tmp_path):
    config = tiny_config(
        teacher=TEACHER,
        vae={
            "trainer": {"max_steps": 4},
            "lossconfig": {"disc_start": 100, "perceptual_weight": 1.0},
            "perceptual": {"network": "domain"},
        },
    )
    argv = ["--manifest", str(tiny_manifest), "--out-dir", str(tmp_path), "--config", json.dumps(config)]
    with pytest.raises(SystemExit, match="perceptual loss needs the spectrogram teacher: pass --teacher"):
        finetune_vae.main(argv)
    assert finetune_vae.main([*argv, "--teacher", str(teacher_file)]) == 0
    with open(tmp_path / "metrics.csv", newline="") as f:
        rec = [float(r["train/rec_loss"]) for r in csv.DictReader(f) if r.get("train/rec_loss")]
    assert rec and all(math.isfinite(v) for v in rec)
    saved = torch.load(tmp_path / "vavae.pt", weights_only=True)
    assert saved["config"]["teacher_sha256"] == sha256_file(teacher_file)
    assert not any("perceptual" in key or "teacher" in key for key in saved["state_dict"])
    last = torch.load(tmp_path / "training/checkpoints/last.ckpt", weights_only=False)
    assert not any(key.startswith("loss.perceptual_loss.") for key in last["state_dict"])
    assert load_vavae(tmp_path / "vavae.pt").use_vf is None


def test_a_perceptual_loss_on_the_teacher_plans_the_teacher_and_no_vgg(tmp_path):
    vae = TINY["vae"] | {"lossconfig": {"perceptual_weight": 1.0}, "perceptual": {"network": "domain"}}
    result = snakemake(tmp_path, "-n", "--printshellcmds", config=TINY | {"vae": vae})
    assert result.returncode == 0, result.stderr
    assert "train_teacher" in planned_jobs(result)
    assert "--teacher results/teacher/teacher.pt" in result.stdout + result.stderr


def repa_training(tiny_latents, tiny_manifest, out_dir, teacher, *extra, steps=6):
    latents, vae = tiny_latents
    config = tiny_config(
        teacher=TEACHER, dit={"trainer": {"max_steps": steps}, "repa": {"weight": 0.5, "depth": 1, "projector_dim": 16}}
    )
    argv = ["--latents", str(latents), "--vae", str(vae), "--out-dir", str(out_dir), "--config", json.dumps(config)]
    return train_dit.main([*argv, "--manifest", str(tiny_manifest), "--teacher", str(teacher), *extra])


def test_repa_trains_and_keeps_the_projector_out_of_the_official_weights(
    teacher_file, tiny_latents, tiny_manifest, tmp_path
):
    assert repa_training(tiny_latents, tiny_manifest, tmp_path, teacher_file) == 0
    with open(tmp_path / "metrics.csv", newline="") as f:
        repa = [float(r["train/repa"]) for r in csv.DictReader(f) if r.get("train/repa")]
    assert len(repa) == 6 and all(-1 <= v <= 1 for v in repa)
    checkpoint = torch.load(tmp_path / "dit.pt", weights_only=True)
    assert set(checkpoint) == {"model", "ema", "opt", "config", "repa_projector"}
    assert checkpoint["repa_projector"]["4.weight"].shape == (32, 16)  # to the teacher's 32 channels
    assert not any("projector" in key for key in [*checkpoint["model"], *checkpoint["ema"]])
    alignment = checkpoint["config"]["alignment"]
    assert alignment["encoder"] == "domain" and alignment["sha256"] == sha256_file(teacher_file)
    assert alignment["teacher_saw"]["count"] == 12
    # What the official code does with the export: build the model and load 'ema' strictly.
    kwargs = dict(checkpoint["config"]["model"])
    model = create_model(kwargs.pop("model_type"), **kwargs)
    model.load_state_dict(checkpoint["ema"], strict=True)
    model, _ = load_dit(tmp_path / "dit.pt")
    assert model(torch.zeros(1, 4, 16, 16), torch.ones(1), torch.zeros(1, dtype=torch.long)).shape == (1, 4, 16, 16)


@pytest.mark.fault
def test_low_data_repa_refuses_the_full_teacher(teacher_file, tiny_latents, tiny_manifest, tmp_path):
    with pytest.raises(TeacherMismatchError, match="trained on 12 images"):
        repa_training(tiny_latents, tiny_manifest, tmp_path, teacher_file, "--per-user", "2")


def test_low_data_dag_builds_one_teacher_per_k(tmp_path):
    config = TINY | {
        "evaluation": TINY["evaluation"] | {"low_data_k": [1, 2]},
        "vae": TINY["vae"] | {"use_vf": "domain"},
        "dit": TINY["dit"] | {"repa": {"weight": 0.5, "depth": 1}},
    }
    result = snakemake(tmp_path, "-n", "--printshellcmds", config=config)
    jobs = planned_jobs(result)
    assert {"train_teacher", "train_teacher_low_data", "train_dit_low_data"} <= jobs
    output = result.stdout + result.stderr
    for k in (1, 2):
        assert f"--out-dir results/lowdata/k{k}/teacher" in output and f"--per-user {k} --subset-seed 0" in output
        assert f"--teacher results/lowdata/k{k}/teacher/teacher.pt" in output
    assert output.count("-m mdgen.stages.train_teacher ") == 3
    assert "--teacher results/teacher/teacher.pt" in output  # the VA-VAE's and the main DiT's


def test_without_alignment_no_teacher_is_planned(tmp_path):
    assert not {"train_teacher", "train_teacher_low_data"} & planned_jobs(snakemake(tmp_path, "-n", config=TINY))


def test_generation_json_records_what_each_teacher_saw(teacher_file, tiny_manifest, tmp_path):
    from test_evaluate_generation import noise_samples, run

    samples = noise_samples(tmp_path / "samples")
    assert teach(tiny_manifest, tmp_path / "k2", "--per-user", "2") == 0
    k2_teacher = tmp_path / "k2" / "teacher.pt"
    results = run(
        tiny_manifest,
        samples,
        tmp_path / "eval",
        f"--low-data=2={samples}",
        f"--teacher=real_train={teacher_file}",
        f"--teacher=k2={k2_teacher}",
    )
    assert results["teacher_saw"] == "real_train" and results["low_data"]["k2"]["teacher_saw"] == "k2"
    assert results["teachers"]["real_train"]["count"] == 12 and results["teachers"]["k2"]["count"] == 6
    assert results["teachers"]["k2"]["sha256"] == sha256_file(k2_teacher)
    with pytest.raises(SystemExit, match="must see only what the generator sees"):
        run(tiny_manifest, samples, tmp_path / "leak", f"--low-data=2={samples}", f"--teacher=k2={teacher_file}")


def test_repa_with_dinov2_needs_its_weights(tiny_latents, tiny_manifest, tmp_path):
    latents, vae = tiny_latents
    config = tiny_config(dit={"repa": {"weight": 0.5, "depth": 1, "encoder": "dinov2"}})
    argv = ["--latents", str(latents), "--vae", str(vae), "--out-dir", str(tmp_path), "--config", json.dumps(config)]
    with pytest.raises(SystemExit, match="set dit.repa.weights"):
        train_dit.main([*argv, "--manifest", str(tiny_manifest)])


def test_repa_refuses_to_start_without_its_images_or_teacher(tiny_latents, tiny_manifest, tmp_path):
    latents, vae = tiny_latents
    config = tiny_config(dit={"repa": {"weight": 0.5, "depth": 1}})
    argv = ["--latents", str(latents), "--vae", str(vae), "--out-dir", str(tmp_path), "--config", json.dumps(config)]
    with pytest.raises(SystemExit, match="pass --manifest"):
        train_dit.main(argv)
    with pytest.raises(SystemExit, match="pass --teacher"):
        train_dit.main([*argv, "--manifest", str(tiny_manifest)])
    assert not (tmp_path / "dit.pt").exists()


@pytest.mark.fault
def test_evaluation_refuses_a_teacher_named_for_no_training_set(teacher_file, tiny_manifest, tmp_path):
    from test_evaluate_generation import noise_samples, run

    samples = noise_samples(tmp_path / "samples")
    with pytest.raises(SystemExit, match="--teacher expects NAME=PATH with NAME one of"):
        run(tiny_manifest, samples, tmp_path / "eval", f"--teacher=k9={teacher_file}")


@pytest.mark.fault
def test_repa_refuses_a_manifest_the_store_was_not_made_from(teacher_file, tiny_latents, tiny_manifest, tmp_path):
    lines = tiny_manifest.read_text().splitlines()
    (tmp_path / "other.csv").write_text("\n".join([lines[0], *reversed(lines[1:])]) + "\n")
    with pytest.raises(SystemExit, match="is not the manifest the latent store"):
        repa_training(tiny_latents, tmp_path / "other.csv", tmp_path / "out", teacher_file)


def test_the_vae_loss_refuses_to_build_without_its_teacher():
    from mdgen.config import load_config
    from mdgen.training.vavae import build_loss

    vae = {"use_vf": "domain", "lossconfig": {"perceptual_weight": 1.0}, "perceptual": {"network": "domain"}}
    config = load_config(json.dumps(tiny_config(teacher=TEACHER, vae=vae)), "data", "vae")
    with pytest.raises(ValueError, match="VF alignment and perceptual loss need the spectrogram teacher"):
        build_loss(config)
