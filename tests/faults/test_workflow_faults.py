"""Faults around a Snakemake run: a second run in the same folder, and a data folder that changes
after validation. Real `snakemake` command lines on the tiny config."""

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from test_workflow import folder_config, MANIFEST, planned_jobs, REPO, snakemake, TINY

pytestmark = pytest.mark.fault  # every case here injects a fault (docs/faults.md)


def user_data(root: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for split, count in (("train", 2), ("val", 1)):
        for user in ("user_00", "user_01"):
            (root / split / user).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / user / f"{i}.png")
    return root


def manifest_paths(workdir: Path) -> list[str]:
    with open(workdir / MANIFEST, newline="") as f:
        return sorted(row["path"] for row in csv.DictReader(f))


def test_a_second_run_in_the_same_folder_is_refused_while_the_first_runs(tmp_path):
    """The first run holds Snakemake's lock on its outputs; the second stops with Snakemake's message
    and writes nothing; the first completes undisturbed."""
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(TINY))
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path), "--cores", "1"]
    command += ["results/vae/vavae.pt", "--configfile", str(tmp_path / "test.yaml")]  # --configfile takes a list
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    output = dict(stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first = subprocess.Popen(command, cwd=tmp_path, env=env, **output)
    try:
        locks = tmp_path / ".snakemake" / "locks"
        deadline = time.monotonic() + 120
        while not (locks.is_dir() and any(locks.iterdir())) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert first.poll() is None, "the first run ended early:\n" + first.communicate()[0]
        second = snakemake(tmp_path, "--cores", "1", "results/dataset/manifest.csv", config=TINY)
        assert second.returncode != 0
        assert "cannot be locked" in second.stdout + second.stderr
        assert "--unlock" in second.stdout + second.stderr  # Snakemake says what to do if no run is left
    finally:
        output, _ = first.communicate(timeout=600)
    assert first.returncode == 0, output
    assert (tmp_path / "results/vae/vavae.pt").stat().st_size > 0


def test_an_edited_or_removed_data_file_reruns_validation_and_what_follows(tmp_path):
    root = user_data(tmp_path / "my_data")
    config = folder_config(root, "fail")
    assert snakemake(tmp_path, "--cores", "1", MANIFEST, config=config).returncode == 0
    assert planned_jobs(snakemake(tmp_path, "-n", MANIFEST, config=config)) == set()

    edited = root / "train/user_00/0.png"
    time.sleep(1.1)  # a new modification time even on file systems with one-second resolution
    Image.new("RGB", (32, 32), "blue").save(edited)
    assert planned_jobs(snakemake(tmp_path, "-n", MANIFEST, config=config)) == {"validate_dataset"}
    assert snakemake(tmp_path, "--cores", "1", MANIFEST, config=config).returncode == 0
    assert str(edited) in manifest_paths(tmp_path)

    removed = root / "train/user_01/1.png"
    removed.unlink()
    assert planned_jobs(snakemake(tmp_path, "-n", MANIFEST, config=config)) == {"validate_dataset"}
    assert snakemake(tmp_path, "--cores", "1", MANIFEST, config=config).returncode == 0
    assert str(removed) not in manifest_paths(tmp_path) and len(manifest_paths(tmp_path)) == 5
