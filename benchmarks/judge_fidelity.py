"""Fidelity of sample folders under judges of another architecture than the evaluation's default.

    python benchmarks/judge_fidelity.py --manifest results/dataset/manifest.csv --architecture resnet18 \
        off=/tmp/ablation/off/results/samples both=/tmp/ablation/both/results/samples

Trains the evaluation recipe with `--architecture` on real train (seeds 0-2) and prints, per seed,
its accuracy on real val and the share of each folder's samples it recognises as their user. A
judge built differently from the spectrogram teacher checks that a fidelity gain from alignment
is not the teacher and the judge agreeing with each other (docs/identity-study.md).
"""

import argparse
import time
from pathlib import Path

import torch

from mdgen.data.dataset import class_label
from mdgen.data.validation import read_manifest
from mdgen.evaluation.classifier import ARCHITECTURES, load_images, predict, Recipe, train_classifier
from mdgen.evaluation.study import read_samples


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", required=True)
    p.add_argument("--architecture", choices=ARCHITECTURES, default="resnet18")
    p.add_argument("--num-classes", type=int, default=31)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("folders", nargs="+", metavar="NAME=DIR", help="sample folders (user_NN/*.png)")
    args = p.parse_args()
    recipe = Recipe(architecture=args.architecture)

    def split(name):
        rows = read_manifest(args.manifest, name)
        images = load_images([r["path"] for r in rows], args.channels, recipe.size)
        return images, torch.tensor([class_label(r["user_id"]) for r in rows])

    (train_x, train_y), (val_x, val_y) = split("train"), split("val")
    samples = {}
    for item in args.folders:
        name, _, folder = item.partition("=")
        paths, labels = read_samples(Path(folder), args.num_classes)
        samples[name] = (load_images(paths, args.channels, recipe.size), torch.tensor(labels))
    for seed in (0, 1, 2):
        start = time.perf_counter()
        judge = train_classifier(train_x, train_y, args.num_classes, recipe, seed)
        cells = [f"{name} {accuracy(judge, x, y):.3f}" for name, (x, y) in samples.items()]
        seconds, real = time.perf_counter() - start, accuracy(judge, val_x, val_y)
        print(f"seed {seed} ({seconds:.0f} s): real val {real:.3f}; " + "; ".join(cells))


def accuracy(judge, images: torch.Tensor, labels: torch.Tensor) -> float:
    return (predict(judge, images)[0] == labels).float().mean().item()


if __name__ == "__main__":
    main()
