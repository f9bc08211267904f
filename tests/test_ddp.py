"""DDP on CPU: the training and sampling stages under torchrun with 2 processes (gloo), as the rules
launch them when trainer.devices / sample.devices is 2.

Each run goes through tests/ddp_probe.py, which records per rank the train items its loader fetched
and its own (unsynced) training losses.
"""

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import kill_at_checkpoint, REPO, tiny_config
from PIL import Image

PROBE = Path(__file__).with_name("ddp_probe.py")
TIMEOUT = 300


def torchrun(processes: int) -> list[str]:
    """The launcher the rules use for more than one device (workflow/rules/common.smk)."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nnodes",
        "1",
        "--nproc-per-node",
        str(processes),
    ]


def run_probed(records: Path, stage: str, args: list[str], processes: int = 2) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": f"{REPO / 'src'}:{REPO / 'tests'}"}
    result = subprocess.run(
        [*torchrun(processes), str(PROBE), str(records), stage, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def rank_records(records: Path) -> list[dict]:
    return [json.loads((records / f"rank{rank}.json").read_text()) for rank in (0, 1)]


def logged(metrics_csv: Path, key: str) -> list[float]:
    with open(metrics_csv, newline="") as f:
        return [float(row[key]) for row in csv.DictReader(f) if row.get(key)]


def files_under(folder: Path) -> list[str]:
    """Files below folder; TensorBoard's event files by their stem (the rest names time, host, pid)."""
    names = (str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())
    return sorted(re.sub(r"events\.out\.tfevents\..*", "events.out.tfevents", name) for name in names)


def assert_ranks_split_the_data(ranks: list[dict], per_epoch: int, epochs: int) -> None:
    """In each epoch the two ranks fetched different items (DistributedSampler shards)."""
    for epoch in range(epochs):
        window = slice(epoch * per_epoch, (epoch + 1) * per_epoch)
        first, second = (set(rank["items"][window]) for rank in ranks)
        assert len(first) == len(second) == per_epoch, (epoch, ranks)
        assert not first & second, f"epoch {epoch}: both ranks saw {first & second}"


def assert_logged_loss_is_the_rank_mean(ranks: list[dict], metrics_csv: Path, key: str) -> None:
    local = [rank["losses"] for rank in ranks]
    assert len(local[0]) == len(local[1]) > 0
    assert not np.allclose(local[0], local[1]), "the ranks computed the same losses: same data or same noise"
    np.testing.assert_allclose(logged(metrics_csv, key), np.mean(local, axis=0), rtol=1e-5)


@pytest.fixture(scope="module")
def ddp_dit(tiny_latents, tmp_path_factory):
    """A Micro DiT trained with 2 processes; (output folder, probe records, config)."""
    out = tmp_path_factory.mktemp("ddp_dit")
    config = tiny_config(dit={"trainer": {"max_steps": 6, "devices": 2}})
    latents, vae = tiny_latents
    run_probed(
        out / "records",
        "mdgen.stages.train_dit",
        ["--latents", str(latents), "--vae", str(vae), "--out-dir", str(out / "dit"), "--config", json.dumps(config)],
    )
    return out / "dit", out / "records", config


def test_ddp_dit_training_shards_the_data_and_averages_the_logged_loss(ddp_dit):
    out, records, _ = ddp_dit
    ranks = rank_records(records)
    # 12 train latents: 6 per rank, one batch of 4 per epoch (the partial batch is dropped).
    assert_ranks_split_the_data(ranks, per_epoch=4, epochs=6)
    assert_logged_loss_is_the_rank_mean(ranks, out / "metrics.csv", "train/loss")
    assert files_under(out) == [
        "curves.png",
        "dit.pt",
        "metrics.csv",
        "training/checkpoints/last.ckpt",
        "training/config.json",
        "training/logs/version_0/hparams.yaml",
        "training/logs/version_0/metrics.csv",
        "training/tensorboard/version_0/events.out.tfevents",  # one: rank 0's
        "training/tensorboard/version_0/hparams.yaml",
    ]
    assert torch.load(out / "dit.pt", weights_only=True)["config"]["dit"]["trainer"]["devices"] == 2


def test_ddp_vae_training_shards_the_data_and_averages_the_logged_loss(tiny_manifest, tmp_path):
    config = tiny_config(vae={"trainer": {"max_steps": 8, "devices": 2}})
    run_probed(
        tmp_path / "records",
        "mdgen.stages.finetune_vae",
        ["--manifest", str(tiny_manifest), "--out-dir", str(tmp_path / "vae"), "--config", json.dumps(config)],
    )
    ranks = rank_records(tmp_path / "records")
    assert_ranks_split_the_data(ranks, per_epoch=4, epochs=4)  # 8 optimizer steps = 4 batches
    assert_logged_loss_is_the_rank_mean(ranks, tmp_path / "vae" / "metrics.csv", "train/rec_loss")
    assert files_under(tmp_path / "vae") == [
        "curves.png",
        "metrics.csv",
        "training/checkpoints/best.ckpt",
        "training/checkpoints/last.ckpt",
        "training/config.json",
        "training/logs/version_0/hparams.yaml",
        "training/logs/version_0/metrics.csv",
        "training/tensorboard/version_0/events.out.tfevents",  # one: rank 0's
        "training/tensorboard/version_0/hparams.yaml",
        "vavae.pt",
    ]


def test_sampling_with_two_processes_writes_the_files_of_one(ddp_dit, tiny_latents, tmp_path):
    dit_dir, _, _ = ddp_dit
    config = tiny_config()
    args = ["--dit", str(dit_dir / "dit.pt"), "--vae", str(tiny_latents[1]), "--config"]
    one = tmp_path / "one"
    run_probed(tmp_path / "r1", "mdgen.stages.sample", [*args, json.dumps(config), "--out-dir", str(one)], processes=1)
    two = tmp_path / "two"
    two_config = tiny_config(sample={"devices": 2})
    result = run_probed(tmp_path / "r2", "mdgen.stages.sample", [*args, json.dumps(two_config), "--out-dir", str(two)])
    assert "2 process(es)" in result.stdout
    assert (
        files_under(one)
        == files_under(two)
        == ["grid.png"] + [f"user_{u:02d}/sample_{i:04d}.png" for u in range(3) for i in range(2)]
    )
    # The images too: each user's seed, whichever rank drew it. (torchrun runs each process on one
    # thread: other reduction orders in the matmuls, so a pixel may round to its neighbour.)
    for name in files_under(one):
        if name != "grid.png":
            difference = np.asarray(Image.open(one / name)).astype(int) - np.asarray(Image.open(two / name))
            assert np.abs(difference).max() <= 2, name


@pytest.mark.fault
def test_ddp_training_killed_mid_run_resumes_from_last_ckpt(tiny_latents, tmp_path):
    """As after a preemption: kill the whole torchrun group, rerun, continue from the saved step."""
    config = tiny_config(dit={"trainer": {"max_steps": 200, "devices": 2}})
    latents, vae = tiny_latents
    out = tmp_path / "dit"
    command = [
        *torchrun(2),
        "-m",
        "mdgen.stages.train_dit",
        "--latents",
        str(latents),
        "--vae",
        str(vae),
        "--out-dir",
        str(out),
        "--config",
        json.dumps(config),
    ]
    env = os.environ | {"PYTHONPATH": str(REPO / "src")}
    last = out / "training" / "checkpoints" / "last.ckpt"
    saved_step = kill_at_checkpoint(command, last, timeout=TIMEOUT, env=env)["global_step"]
    assert saved_step < 200

    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("Resuming from") == 1  # said once, by rank 0
    resumed = logged(out / "training" / "logs" / "version_1" / "metrics.csv", "step")
    assert resumed[0] == saved_step
    assert torch.load(last, weights_only=False)["global_step"] == 200
    steps = [int(step) for step in logged(out / "metrics.csv", "step")]
    assert steps == sorted(steps) and steps[-1] == 199
