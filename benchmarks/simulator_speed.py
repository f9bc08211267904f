"""Simulator speed: spectrograms per second, per stage of one recording and for the whole stage.

    python benchmarks/simulator_speed.py [--users 31] [--per-user 32] [--workers 2] [--size 128]

Prints the time of each step of one recording (kinematics + radar return, STFT, image) and the
throughput of `python -m mdgen.stages.simulate_dataset` on the default set with 1 and N workers.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from mdgen.data import simulator as sim
from mdgen.stages.simulate_dataset import main as simulate


def per_step(size: int, repeats: int = 20) -> None:
    radar = sim.Radar()
    rng = np.random.default_rng(0)
    user = sim.draw_user(rng)
    recording = sim.draw_recording(user, rng)
    steps = {
        "kinematics + radar return": lambda: sim.baseband(user, recording, radar, rng),
        "STFT": lambda: sim.spectrogram_db(signal, radar),
        "normalise + resize + colour map": lambda: sim.render(sim.normalise_db(power_db, 40.0), size, 3),
    }
    signal = sim.baseband(user, recording, radar, rng)
    power_db, _ = sim.spectrogram_db(signal, radar)
    print(f"One recording ({radar.num_samples} pulses, {size}×{size}×3):")
    for name, step in steps.items():
        start = time.perf_counter()
        for _ in range(repeats):
            step()
        print(f"  {name:<34}{(time.perf_counter() - start) / repeats * 1000:7.1f} ms")


def stage(users: int, per_user: int, workers: int, size: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        config = {
            "data": {"num_classes": users, "size": size, "channels": 3},
            "simulator": {"train_per_user": per_user - per_user // 4, "val_per_user": per_user // 4},
        }
        simulate(["--out", str(Path(tmp) / "sim"), "--config", json.dumps(config), "--workers", str(workers)])
        return users * per_user / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=31)
    p.add_argument("--per-user", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--size", type=int, default=128)
    args = p.parse_args()
    per_step(args.size)
    results = {n: stage(args.users, args.per_user, n, args.size) for n in sorted({1, args.workers})}
    print(f"\nWhole stage, {args.users} users × {args.per_user} recordings (process start-up included):")
    for workers, rate in results.items():
        print(f"  {workers} worker(s): {rate:6.1f} spectrograms/s  ({args.users * args.per_user / rate:5.1f} s)")


if __name__ == "__main__":
    main()
