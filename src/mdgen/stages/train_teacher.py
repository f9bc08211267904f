"""Stage `train_teacher`: the spectrogram encoder that VF alignment and REPA align to.

    python -m mdgen.stages.train_teacher --manifest results/dataset/manifest.csv --out-dir results/teacher \
        --config config/config.yaml [--per-user 4 --subset-seed 0]

Trains `mdgen.models.teacher.TeacherNet` on the user labels of the **train split only** (with
--per-user, on the same k images per user the low-data generator sees), with the evaluation
classifier's training loop but its own seed and network, so that the evaluation's judges never
share its weights. Writes `<out-dir>/teacher.pt` (strict to load, recording the images it saw),
`teacher.json` (its accuracy on train and, for reference only, on val) and `features.png` (the
first three principal components of its feature maps as colours, one row per user).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mdgen.config import load_config
from mdgen.data.dataset import class_label, per_user_subset, to_uint8
from mdgen.data.images import model_channels
from mdgen.data.validation import read_manifest
from mdgen.evaluation.classifier import load_images, predict, Recipe, train_classifier
from mdgen.io import atomic_output
from mdgen.models.teacher import images_fingerprint, save_teacher, SpectrogramTeacher, TeacherNet
from mdgen.plots import plot_feature_maps
from mdgen.progress import say

USERS_SHOWN = 8


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", required=True, help="results/dataset/manifest.csv")
    p.add_argument("--out-dir", type=Path, required=True, help="where teacher.pt, teacher.json and features.png go")
    p.add_argument("--config", required=True, help="JSON/YAML text or file with the data and teacher sections")
    p.add_argument("--per-user", type=int, default=None, help="train on this many train images per user only")
    p.add_argument("--subset-seed", type=int, default=0, help="seed of the per-user draw (as train_dit's)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = load_config(args.config, "data", "teacher")
    data, settings = config["data"], config["teacher"]
    rows = read_manifest(args.manifest, "train")
    if args.per_user is not None:
        labels = [class_label(row["user_id"]) for row in rows]
        rows = [rows[i] for i in per_user_subset(labels, args.per_user, args.subset_seed)]
    val_rows = read_manifest(args.manifest, "val")
    model_kwargs = {
        "num_classes": data["num_classes"],
        "in_chans": model_channels(data),
        "width": settings["width"],
        "size": settings["size"],
    }
    recipe = Recipe(
        size=settings["size"],
        epochs=settings["epochs"],
        batch_size=settings["batch_size"],
        lr=settings["lr"],
        weight_decay=settings["weight_decay"],
    )
    say(
        f"Teacher: TeacherNet width {settings['width']} ({8 * settings['width']} feature channels at 1/8 of "
        f"{settings['size']} px), {settings['epochs']} epochs, seed {settings['seed']}, on {len(rows)} train "
        f"spectrograms ({f'{args.per_user} per user' if args.per_user is not None else 'all'})"
    )

    # What the models it guides see: the magnitude of colour-mapped files, else the files' channels.
    images = load_images([row["path"] for row in rows], data["channels"], settings["size"], data["colormap"])
    labels = torch.tensor([class_label(row["user_id"]) for row in rows])
    start = time.perf_counter()
    net = train_classifier(
        images,
        labels,
        data["num_classes"],
        recipe,
        settings["seed"],
        model_factory=lambda: TeacherNet(data["num_classes"], model_kwargs["in_chans"], settings["width"]),
    )
    elapsed = time.perf_counter() - start
    teacher = SpectrogramTeacher(**model_kwargs)
    teacher.net.load_state_dict(net.state_dict())
    teacher.eval()

    val_images = load_images([row["path"] for row in val_rows], data["channels"], settings["size"], data["colormap"])
    val_labels = torch.tensor([class_label(row["user_id"]) for row in val_rows])
    metrics = {
        "train_accuracy": (predict(teacher.net, images)[0] == labels).float().mean().item(),
        # For reference only: the teacher never trains on val, and nothing selects on this number.
        "val_accuracy": (predict(teacher.net, val_images)[0] == val_labels).float().mean().item(),
        "train_seconds": elapsed,
    }
    say(
        f"Trained in {elapsed:.0f} s: accuracy {metrics['train_accuracy']:.3f} on its train images, "
        f"{metrics['val_accuracy']:.3f} on real val (chance {1 / data['num_classes']:.3f})"
    )

    saw = {
        "count": len(rows),
        "per_user": args.per_user,
        "subset_seed": args.subset_seed if args.per_user is not None else None,
        "fingerprint": images_fingerprint(rows),
        "paths": [row["path"] for row in rows],
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    export_config = {"model": model_kwargs, "data": data, "teacher": settings}
    save_teacher(args.out_dir / "teacher.pt", teacher, export_config, saw, metrics)
    summary = {**metrics, "saw": {k: v for k, v in saw.items() if k != "paths"}, "config": export_config}
    with atomic_output(args.out_dir / "teacher.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2))

    firsts = {}
    for index, row in enumerate(rows):
        firsts.setdefault(row["user_id"], index)
    users = sorted(firsts)
    shown = [users[i] for i in np.linspace(0, len(users) - 1, min(USERS_SHOWN, len(users))).round().astype(int)]
    shown_images = images[[firsts[user] for user in shown]]
    with torch.no_grad():
        maps = teacher.net.feature_map(shown_images)  # (N, D, size / 8, size / 8)
    plot_feature_maps(to_uint8(shown_images, data["colormap"]), maps, shown, args.out_dir / "features.png")
    say(f"Wrote {args.out_dir / 'teacher.pt'}, teacher.json and features.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
