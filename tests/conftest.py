"""Shared test helpers: the default config with tiny sizes, and a tiny simulated data set."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml

from mdgen.config import deep_update
from mdgen.data.validation import validate_dataset, write_manifest
from mdgen.stages.simulate_dataset import main as simulate

REPO = Path(__file__).resolve().parents[1]

# Model sizes for CPU tests: a 2-level VA-VAE (f2) on 32×32 images, a 2-block DiT on its 4×16×16 latents.
# The default's alignment, perceptual term and compiling are off in the tiny runs unless a test turns
# them on: they need the teacher, and compiling costs half a minute.
TINY = {
    "data": {"num_classes": 3, "size": 32},
    "simulator": {"train_per_user": 4, "val_per_user": 2},
    "vae": {
        "embed_dim": 4,
        "batch_size": 4,
        "num_workers": 0,
        "base_learning_rate": 1.0e-3,
        "checkpoint_every_n_steps": 4,
        "ddconfig": {"z_channels": 4, "resolution": 32, "ch": 32, "ch_mult": [1, 2], "attn_resolutions": [16]},
        "use_vf": None,
        "lossconfig": {"disc_start": 10, "perceptual_weight": 0.0},
        "perceptual": {"network": "lpips"},
        "trainer": {"accelerator": "cpu", "max_epochs": -1, "max_steps": 40, "log_every_n_steps": 1},
    },
    "dit": {
        "model_type": "LightningDiT-Micro/1",
        "compile": False,
        "optimizer": {"lr": 2.0e-4},
        "repa": {"weight": 0.0},
        "batch_size": 4,
        "ema_decay": 0.9,
        "checkpoint_every_n_steps": 4,
        "val_every_n_steps": 5,
        "val_timesteps": 4,
        "trainer": {"accelerator": "cpu", "max_steps": 30, "log_every_n_steps": 1},
    },
    "sample": {"per_user": 2, "batch_size": 4, "num_sampling_steps": 4, "grid_per_user": 2},
    "evaluation": {"seeds": [0], "ratios": [0.5], "classifier": {"epochs": 5, "size": 32, "batch_size": 4}},
}


def kill_at_checkpoint(command: list[str], last: Path, step: int = 8, timeout: float = 180, env=None) -> dict:
    """Run a training stage's command line, SIGKILL its whole process group (as a scheduler would)
    once `last` (its last.ckpt) holds `step` or more, and return that checkpoint."""
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and process.poll() is None:
            if last.exists() and torch.load(last, map_location="cpu", weights_only=False)["global_step"] >= step:
                break
            time.sleep(0.3)
        else:
            pytest.fail(f"no checkpoint at step {step} before the run ended (exit status {process.poll()})")
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    return torch.load(last, map_location="cpu", weights_only=False)


def tiny_config(**changes) -> dict:
    """config/config.yaml (every key present) with the tiny sizes and any further changes."""
    default = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    return deep_update(deep_update(default, TINY), changes)


def simulation(users: int, size: int, **simulator) -> str:
    """The --config of simulate_dataset: `users` users of size × size × 3 images, simulator changes."""
    return json.dumps(tiny_config(data={"num_classes": users, "size": size, "channels": 3}, simulator=simulator))


def write_vae_eval(path, settings, accuracy=0.5):
    """An eval.json as evaluate_vae writes it, with a known identity table for these settings."""
    step = {"mean": accuracy, "std": 0.0, "runs": [accuracy] * len(settings["seeds"])}
    size, seeds = settings["classifier"]["size"], settings["seeds"]
    judge = f"evaluation classifier (cnn, {size} px) trained on real train, seeds {seeds}"
    table = {"judge": judge, "chance": 1 / 3, "real_val": step, "reconstructions": step, "reconstruction_judge": step}
    path.write_text(json.dumps({"identity": table}))
    return path


@pytest.fixture(scope="session")
def tiny_manifest(tmp_path_factory) -> Path:
    """A validated manifest of 3 simulated users, 4 train + 2 val spectrograms each, 32×32×3."""
    root = tmp_path_factory.mktemp("tiny_data")
    config = tiny_config()
    simulate(["--out", str(root / "synthetic"), "--config", json.dumps(config), "--workers", "1"])
    result = validate_dataset(
        root / "synthetic", num_classes=3, channels=3, size=32, max_pixels=config["data"]["max_pixels"]
    )
    assert not result.errors
    write_manifest(result.rows, root / "manifest.csv")
    return root / "manifest.csv"


@pytest.fixture(scope="session")
def tiny_latents(tiny_manifest, tmp_path_factory) -> tuple[Path, Path]:
    """(folder with train.zarr and val.zarr, the VA-VAE file) from a seeded tiny VA-VAE."""
    from mdgen.models.vavae import save_official, VAVAE, vavae_kwargs
    from mdgen.stages.extract_latents import main as extract

    root = tmp_path_factory.mktemp("tiny_latents")
    config = tiny_config()
    torch.manual_seed(0)
    save_official(root / "vavae.pt", VAVAE(**vavae_kwargs(config)), {"model": vavae_kwargs(config), **config})
    assert (
        extract(
            [
                "--manifest",
                str(tiny_manifest),
                "--vae",
                str(root / "vavae.pt"),
                "--out-dir",
                str(root / "latents"),
                "--config",
                json.dumps(config),
            ]
        )
        == 0
    )
    return root / "latents", root / "vavae.pt"


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> tuple[Path, dict[str, float]]:
    """(folder, seconds per rule) of the whole tiny pipeline run once by `snakemake --cores 2`, with
    its report built. Shared: tests that change anything work on a copy."""
    from test_workflow import snakemake, TINY

    workdir = tmp_path_factory.mktemp("tiny_run")
    result = snakemake(workdir, "--cores", "2", config=TINY)
    assert result.returncode == 0, result.stderr
    report = snakemake(workdir, "--report", "results/report.html", config=TINY)
    assert report.returncode == 0, report.stderr
    seconds = {}
    for benchmark in (workdir / "results/benchmarks").glob("*.tsv"):
        header, values = benchmark.read_text().splitlines()[:2]
        seconds[benchmark.stem] = float(dict(zip(header.split("\t"), values.split("\t")))["s"])
    return workdir, seconds


def finetune(tiny_manifest, out_dir, config):
    """Run the finetune_vae stage on a manifest with this config; its exit status."""
    from mdgen.stages import finetune_vae

    return finetune_vae.main(
        ["--manifest", str(tiny_manifest), "--out-dir", str(out_dir), "--config", json.dumps(config)]
    )


TEACHER = {"width": 4, "size": 32, "epochs": 3, "batch_size": 4}


def teach(manifest, out_dir, *extra):
    """Run the train_teacher stage at tiny size (TEACHER); its exit status."""
    from mdgen.stages import train_teacher

    config = json.dumps(tiny_config(teacher=TEACHER))
    return train_teacher.main(["--manifest", str(manifest), "--out-dir", str(out_dir), "--config", config, *extra])


@pytest.fixture(scope="session")
def teacher_file(tiny_manifest, tmp_path_factory):
    """A tiny spectrogram teacher trained on the tiny manifest's train split."""
    out = tmp_path_factory.mktemp("teacher")
    assert teach(tiny_manifest, out) == 0
    return out / "teacher.pt"


def train(tiny_latents, out_dir, config):
    """Run the train_dit stage on the tiny latent stores with this config; its exit status."""
    from mdgen.stages import train_dit

    latents, vae = tiny_latents
    return train_dit.main(
        ["--latents", str(latents), "--vae", str(vae), "--out-dir", str(out_dir), "--config", json.dumps(config)]
    )


@pytest.fixture(scope="session")
def tiny_dit(tiny_latents, tmp_path_factory):
    """A Micro DiT trained for 60 steps, and its config."""
    out = tmp_path_factory.mktemp("dit")
    config = tiny_config(dit={"trainer": {"max_steps": 60}, "val_every_n_steps": 10})
    assert train(tiny_latents, out, config) == 0
    return out, config
