"""Stage `simulate_dataset`: write the built-in data set of simulated walkers.

    python -m mdgen.stages.simulate_dataset --out resources/synthetic --config config/config.yaml --workers 2

Reads `data.num_classes` (users), `data.size`, `data.channels` and the `simulator` section (seed,
recordings per user and split, gait variability, radar and spectrogram settings; see the schema).

Output: `<out>/{train,val}/user_NN/rec_NNN.png` and `<out>/users.json` (every user's and every
recording's parameters). Deterministic for a given seed: each user and each recording draws
from its own seed sequence, so the set does not depend on the number of workers, and asking
for more recordings per user keeps the existing ones.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from mdgen.config import load_config
from mdgen.data import simulator as sim
from mdgen.progress import progress, say

SPLITS = ("train", "val")
MARKER = "users.json"


def simulate_user(user_index: int, data: dict, simulator: dict, out: Path) -> dict:
    """Draw one user's parameters, write all of their recordings, return what was drawn."""
    radar = radar_from_config(simulator)
    seed = simulator["seed"]
    user = sim.draw_user(np.random.default_rng([seed, user_index]))
    user_id = f"user_{user_index:02d}"
    recordings = {}
    counts = (simulator["train_per_user"], simulator["val_per_user"])
    for split_index, (split, count) in enumerate(zip(SPLITS, counts)):
        folder = out / split / user_id
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            rng = np.random.default_rng([seed, user_index, split_index, i])
            recording = sim.draw_recording(user, rng, simulator["gait_variability"])
            image, radial_speed = sim.simulate_spectrogram(user, recording, radar, rng, data["size"], data["channels"])
            name = f"{split}/{user_id}/rec_{i:03d}.png"
            Image.fromarray(image).save(out / name)
            recordings[name] = sim.as_dict(recording) | {"max_radial_speed_mps": radial_speed}
    return {"user_id": user_id, **sim.as_dict(user), "recordings": recordings}


def radar_from_config(simulator: dict) -> sim.Radar:
    return sim.Radar(
        carrier_hz=simulator["carrier_ghz"] * 1e9,
        prf_hz=simulator["prf_hz"],
        duration_s=simulator["duration_s"],
        window_s=simulator["window_ms"] / 1000,
        overlap=simulator["overlap"],
        dynamic_range_db=simulator["dynamic_range_db"],
    )


def check_target(out: Path) -> None:
    """Refuse to replace a folder this script did not write: it may hold someone's real data."""
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        raise SystemExit(
            f"{out} exists and was not written by the simulator (no {MARKER}); "
            "refusing to overwrite it. Choose another --out or remove the folder yourself."
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="data set root to write")
    p.add_argument("--config", required=True, help="JSON/YAML text or file with the data and simulator sections")
    p.add_argument("--workers", type=int, default=1, help="processes simulating users in parallel")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = load_config(args.config, "data", "simulator")
    data, simulator = config["data"], config["simulator"]
    num_users, size, channels = data["num_classes"], data["size"], data["channels"]
    train_per_user, val_per_user = simulator["train_per_user"], simulator["val_per_user"]
    radar = radar_from_config(simulator)
    check_target(args.out)
    total = num_users * (train_per_user + val_per_user)
    say(
        f"Simulating {num_users} users × ({train_per_user} train + {val_per_user} val) "
        f"= {total} spectrograms, {size}×{size}×{channels}, seed {simulator['seed']}, "
        f"{args.workers} worker(s)\n"
        f"Radar: {radar.carrier_hz / 1e9:g} GHz (λ = {radar.wavelength * 1000:.1f} mm), PRF {radar.prf_hz:g} Hz "
        f"(unambiguous ±{radar.max_velocity:.2f} m/s), {radar.duration_s:g} s per recording"
    )
    # Write next to the target and swap at the end: an interrupted run leaves no half data set.
    staging = args.out.with_name(f".{args.out.name}.incomplete")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    start = time.perf_counter()
    with ProcessPoolExecutor(max(1, args.workers)) as pool:
        jobs = [pool.submit(simulate_user, k, data, simulator, staging) for k in range(num_users)]
        users = [job.result() for job in progress(jobs, desc="users", unit="user")]
    elapsed = time.perf_counter() - start
    speeds = [rec["max_radial_speed_mps"] for user in users for rec in user["recordings"].values()]
    aliased = sum(speed > radar.max_velocity for speed in speeds)
    say(f"Fastest limb: {max(speeds):.2f} m/s (unambiguous up to {radar.max_velocity:.2f} m/s)")
    if aliased:
        say(
            f"WARNING: {aliased} of {total} recordings have limbs faster than {radar.max_velocity:.2f} m/s, "
            "whose Doppler aliases (wraps to the other side of the spectrogram). Raise simulator.prf_hz."
        )

    description = {
        "seed": simulator["seed"],
        "size": size,
        "channels": channels,
        "radar": sim.as_dict(radar),
        "users": users,
    }
    (staging / MARKER).write_text(json.dumps(description, indent=1))
    for name in (*SPLITS, MARKER):
        target = args.out / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    args.out.mkdir(parents=True, exist_ok=True)
    for name in (*SPLITS, MARKER):
        os.replace(staging / name, args.out / name)
    staging.rmdir()
    say(f"Wrote {total} spectrograms to {args.out}/ in {elapsed:.1f} s ({total / elapsed:.1f} per second)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
