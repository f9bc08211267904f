"""A disk that fills up while a stage writes: the stage stops with a message naming the path and what
to do, the partial write is removed, and what an earlier run wrote is intact.

A full disk is simulated with a file-size limit (`ulimit -f`, RLIMIT_FSIZE) on the stage's process:
a write past it fails with EFBIG, as one on a full disk fails with ENOSPC; both take the same path.
"""

import hashlib
import json
import re
import resource
import signal
import subprocess
import sys

import pytest
from conftest import tiny_config

from mdgen.stages import train_dit

pytestmark = pytest.mark.fault  # every case here injects a fault (docs/faults.md)


def limited(module: str, argv: list[str], limit_bytes: int) -> subprocess.CompletedProcess:
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failing write, not a killed process

    command = [sys.executable, "-m", f"mdgen.stages.{module}", *argv]
    return subprocess.run(command, capture_output=True, text=True, preexec_fn=limit, timeout=300)


def contents(folder):
    files = (p for p in folder.rglob("*") if p.is_file())
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_a_full_disk_while_writing_a_latent_store_keeps_the_previous_store(tiny_manifest, tiny_latents, tmp_path):
    latents, vae = tiny_latents
    out = tmp_path / "latents"
    argv = ["--manifest", str(tiny_manifest), "--vae", str(vae), "--out-dir", str(out)]
    argv += ["--config", json.dumps(tiny_config())]
    assert limited("extract_latents", argv, resource.RLIM_INFINITY).returncode == 0
    before = contents(out)

    result = limited("extract_latents", argv, 4096)  # the stores' chunks are larger
    assert result.returncode == 1, result.stdout + result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert re.match(rf"{out}/(train|val)\.zarr: no space to write it", message) and "Free space under" in message
    assert "Traceback" not in result.stderr  # the message alone, not a traceback
    assert contents(out) == before  # the previous stores, untouched
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in latents.iterdir() if p.suffix == ".zarr")


@pytest.fixture(scope="module")
def dit(tiny_latents, tmp_path_factory):
    latents, vae = tiny_latents
    out = tmp_path_factory.mktemp("dit")
    config = tiny_config(dit={"trainer": {"max_steps": 2}})
    argv = ["--latents", str(latents), "--vae", str(vae), "--out-dir", str(out), "--config", json.dumps(config)]
    assert train_dit.main(argv) == 0
    return out / "dit.pt", vae, config


def test_a_full_disk_while_writing_samples_leaves_no_partial_png(dit, tmp_path):
    model, vae, config = dit
    out = tmp_path / "samples"
    argv = ["--dit", str(model), "--vae", str(vae), "--out-dir", str(out), "--config", json.dumps(config)]
    result = limited("sample", argv, 512)  # smaller than one sample PNG
    assert result.returncode == 1, result.stdout + result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert f"{out}/user_00/sample_0000.png: no space to write it" in message
    assert not [p for p in out.rglob("*") if p.is_file()]  # no PNG, whole or partial, and no .part file


def test_a_full_disk_while_training_stops_with_the_step_and_the_rerun_completes(tiny_latents, tmp_path):
    latents, vae = tiny_latents
    config = tiny_config(dit={"trainer": {"max_steps": 12}})
    argv = ["--latents", str(latents), "--vae", str(vae), "--out-dir", str(tmp_path), "--config", json.dumps(config)]
    result = limited("train_dit", argv, 256 * 1024)  # logs and pictures fit; a checkpoint (weights, EMA, Adam) does not
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("DiTTraining: no space left at step ") and "training resumes" in message
    assert not (tmp_path / "dit.pt").exists()  # nothing exported
    assert not [p for p in tmp_path.rglob("*.ckpt") if p.stat().st_size == 0]  # no empty checkpoint left to trust

    rerun = limited("train_dit", argv, resource.RLIM_INFINITY)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    assert (tmp_path / "dit.pt").stat().st_size > 0
