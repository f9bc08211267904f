"""How much of the person survives smaller images: the evaluation recipe on a data set resized.

    python benchmarks/judge_resolution.py --manifest results/dataset/manifest.csv --sizes 64:64 32:64 32:32 24:24

Each SIZE:JUDGED pair resizes every image (LANCZOS) to SIZE, then to JUDGED as the classifier
sees it (`as_judged`), trains the evaluation recipe at JUDGED on real train (seeds 0-2) and prints
its accuracy on real val. `32:64` is what the 64-px evaluation judge sees of a 32-px data set: the
number that let the default config work at 32 px (docs/identity-study.md).
"""

import argparse

import torch
from PIL import Image

from mdgen.data.dataset import class_label
from mdgen.data.images import load_spectrogram
from mdgen.data.validation import read_manifest
from mdgen.evaluation.classifier import as_judged, predict, Recipe, train_classifier


def pair(text: str) -> tuple[int, int]:
    size, judged = (int(part) for part in text.split(":"))
    return size, judged


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", required=True)
    p.add_argument("--sizes", type=pair, nargs="+", default=[(64, 64), (32, 64), (32, 32)], metavar="SIZE:JUDGED")
    p.add_argument("--num-classes", type=int, default=31)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = p.parse_args(argv)

    splits = {}
    for name in ("train", "val"):
        rows = read_manifest(args.manifest, name)
        images = [load_spectrogram(row["path"], args.channels, None) for row in rows]
        splits[name] = images, torch.tensor([class_label(row["user_id"]) for row in rows])

    results = {}
    for size, judged in args.sizes:
        data = {
            name: (as_judged((image.resize((size, size), Image.LANCZOS) for image in images), judged), labels)
            for name, (images, labels) in splits.items()
        }
        (train_x, train_y), (val_x, val_y) = data["train"], data["val"]
        accuracies = []
        for seed in args.seeds:
            model = train_classifier(train_x, train_y, args.num_classes, Recipe(size=judged), seed)
            predicted, _ = predict(model, val_x)
            accuracies.append((predicted == val_y).float().mean().item())
        results[f"{size}:{judged}"] = accuracies
        mean = sum(accuracies) / len(accuracies)
        runs = ", ".join(f"{a:.3f}" for a in accuracies)
        print(f"images {size} px, judged at {judged} px: real val accuracy {mean:.3f} ({runs})", flush=True)
    return results


if __name__ == "__main__":
    main()
