"""Validation at scale: files per second and peak memory of `validate_dataset` on many small files.

    python benchmarks/validation_scale.py [--files 100000 10000] [--workers 2] [--side 16]

Writes each data set (`train|val/user_NN/*.png`, 31 users, 3 of 4 files in train, every image
different so the duplicate check finds nothing) into a temporary folder, then runs
`python -m mdgen.stages.validate_dataset` on it as a user would, and prints for each size: files,
seconds, files/s, and the peak resident memory of the stage's main process (ru_maxrss; the worker
processes only decode images and hold nothing). Memory flat in the number of files means the
peak grows by the manifest rows alone (a few hundred bytes each), not by the images.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

USERS = 31


def write_dataset(root: Path, files: int, side: int) -> None:
    """`files` distinct side × side RGB PNGs spread over USERS users, 3 of 4 in train."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8)
    for index in range(files):
        split = "val" if index % 4 == 3 else "train"
        folder = root / split / f"user_{index % USERS:02d}"
        if index < 2 * USERS * 4:
            folder.mkdir(parents=True, exist_ok=True)
        image = base.copy()
        # The index in the first pixels: every file's content (and sha256) differs.
        image.reshape(-1)[:4] = np.frombuffer(index.to_bytes(4, "little"), dtype=np.uint8)
        Image.fromarray(image).save(folder / f"{index:07d}.png", compress_level=1)


def run_stage(root: Path, workers: int, side: int) -> tuple[float, int]:
    """(seconds, peak RSS in MiB) of the validate_dataset stage on root."""
    config = json.dumps({"data": {"num_classes": USERS, "size": side, "channels": 3}})
    command = [
        sys.executable,
        "-m",
        "mdgen.stages.validate_dataset",
        "--root",
        str(root),
        "--manifest",
        str(root.parent / "manifest.csv"),
        "--report",
        str(root.parent / "report.json"),
        "--config",
        config,
        "--workers",
        str(workers),
    ]
    # A fresh interpreter per size: ru_maxrss of the children is the largest child's peak so far.
    probe = (
        "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", probe, *command], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"validate_dataset failed on {root}:\n{result.stderr[-3000:]}")
    with open(root.parent / "manifest.csv") as manifest:
        listed = sum(1 for _ in manifest) - 1  # less the header
    files = sum(1 for _ in root.rglob("*.png"))
    if listed != files:
        raise SystemExit(f"the manifest lists {listed} of the {files} images: validation left some out")
    return seconds, int(result.stdout.split()[-1]) // 1024  # KiB -> MiB on Linux


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--side", type=int, default=16, help="image side in pixels")
    args = parser.parse_args(argv)
    print(f"{'files':>8} {'write s':>8} {'validate s':>10} {'files/s':>8} {'peak MiB':>9}  ({args.workers} workers)")
    for files in args.files:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp) / "data"
            start = time.perf_counter()
            write_dataset(root, files, args.side)
            written = time.perf_counter() - start
            seconds, peak = run_stage(root, args.workers, args.side)
            print(f"{files:>8} {written:>8.1f} {seconds:>10.1f} {files / seconds:>8.0f} {peak:>9}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
