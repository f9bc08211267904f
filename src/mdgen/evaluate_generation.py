"""Stage `evaluate_generation`: does the generated data help person identification?

    python -m mdgen.evaluate_generation --manifest results/dataset/manifest.csv --samples results/samples \
        --out-dir results/eval --config config/config.yaml

Trains the person-identification classifier (a fixed recipe, several seeds) on
- real train images only (the baseline),
- real + synthetic images at each synthetic:real ratio (per user),
- synthetic images only (the Classification Accuracy Score of Ravuri & Vinyals, 2019),
and tests every one on the REAL val split, which neither the VAE nor the generator saw. In the
real-trained classifiers' penultimate features it measures per-user fidelity (is user k's sample
classified as k?), Fréchet distance and k-NN precision/recall between real val images and samples,
and memorisation (samples closer to a training image than almost any real val image is).

Writes `<out-dir>/generation.json` (every number, the seeds, the settings, and which real images
each generator and classifier saw), `metrics.csv` (the headline table) and the plots
accuracy_vs_ratio.png, per_user_accuracy.png, confusion.png and nearest_pairs.png.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from mdgen.classifier import Recipe, embed, load_images, predict, train_classifier
from mdgen.config import load_config
from mdgen.data.dataset import class_label, per_user_subset
from mdgen.data.validation import read_manifest, user_id
from mdgen.evaluate_vae import to_uint8
from mdgen.io import atomic_output
from mdgen.metrics import classification_metrics, frechet_distance, frechet_distance_per_group, memorisation, precision_recall
from mdgen.plots import plt


def read_samples(samples_dir: Path, num_classes: int) -> tuple[list[str], np.ndarray]:
    """Paths and labels of the generated images, laid out as results/samples/user_NN/*.png."""
    paths, labels = [], []
    for user in range(num_classes):
        found = sorted(str(p) for p in (samples_dir / user_id(user)).glob("*.png"))
        if not found:
            raise SystemExit(f"{samples_dir / user_id(user)} holds no samples: every user needs samples; rerun `sample`")
        paths += found
        labels += [user] * len(found)
    return paths, np.array(labels)


def synthetic_subset(labels: np.ndarray, per_user: dict[int, int], rng: np.random.Generator) -> np.ndarray:
    """Indices of `per_user[u]` samples of each user u, drawn without replacement."""
    chosen = []
    for user, count in per_user.items():
        candidates = np.flatnonzero(labels == user)
        if count > len(candidates):
            raise SystemExit(f"{user_id(user)} has {len(candidates)} samples, the protocol needs {count}: raise "
                             "sample.per_user or lower evaluation.ratios")
        chosen.append(rng.choice(candidates, count, replace=False))
    return np.sort(np.concatenate(chosen))


def summary(values: list[float]) -> dict:
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "runs": [float(v) for v in values]}


def mean_per_user(runs: list[list[float | None]]) -> list[float | None]:
    """Per-user accuracy averaged over runs; None for a user absent from the evaluated set."""
    table = np.array([[np.nan if v is None else v for v in run] for run in runs], dtype=float)
    counts = (~np.isnan(table)).sum(axis=0)
    sums = np.nansum(table, axis=0)
    return [None if n == 0 else float(total / n) for total, n in zip(sums, counts)]


def plot_accuracy_vs_ratio(results: dict, out_png: Path) -> None:
    ratios = [0.0] + [r["ratio"] for r in results["augmented"]]
    protocols = [results["real_only"]] + results["augmented"]
    means = [p["val_accuracy"]["mean"] for p in protocols]
    stds = [p["val_accuracy"]["std"] for p in protocols]
    fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    ax.errorbar(ratios, means, yerr=stds, marker="o", capsize=4, label="real + synthetic (0 = real only)")
    cas = results["synthetic_only"]["val_accuracy"]
    ax.axhline(cas["mean"], color="tab:red", linestyle="--", label=f"synthetic only (CAS) {cas['mean']:.2f}")
    ax.axhspan(cas["mean"] - cas["std"], cas["mean"] + cas["std"], color="tab:red", alpha=0.1)
    ax.axhline(1 / results["num_classes"], color="grey", linestyle=":", label="chance")
    ax.set_xlabel("synthetic : real images per user")
    ax.set_ylabel("accuracy on the real val split")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"Person identification (mean ± std over {len(results['seeds'])} seeds)")
    fig.savefig(out_png, dpi=100)
    plt.close(fig)


def plot_per_user(fidelity: list, real_val: list, out_png: Path) -> None:
    users = np.arange(len(fidelity))
    fig, ax = plt.subplots(figsize=(max(6, 0.3 * len(users)), 4), layout="constrained")
    ax.bar(users - 0.2, [np.nan if v is None else v for v in real_val], 0.4, label="real val images")
    ax.bar(users + 0.2, [np.nan if v is None else v for v in fidelity], 0.4, label="generated samples")
    ax.set_xticks(users, [f"{u:02d}" for u in users], fontsize=7)
    ax.set_xlabel("user")
    ax.set_ylabel("classified as their user")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    ax.set_title("Per-user accuracy of the real-trained classifier")
    fig.savefig(out_png, dpi=100)
    plt.close(fig)


def plot_confusion(confusion: list, out_png: Path) -> None:
    matrix = np.array(confusion, dtype=float)
    rows = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6.5, 5.5), layout="constrained")
    image = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, label="fraction of the user's samples")
    ax.set_xlabel("classified as user")
    ax.set_ylabel("generated for user")
    ax.set_title("Generated samples through the real-trained classifier")
    fig.savefig(out_png, dpi=100)
    plt.close(fig)


def plot_pairs(pairs: list, sample_images: torch.Tensor, train_images: torch.Tensor, threshold: float, out_png: Path) -> None:
    fig, axes = plt.subplots(2, len(pairs), figsize=(1.6 * len(pairs), 3.6), squeeze=False, layout="constrained")
    for column, (sample, train, distance) in enumerate(pairs):
        for row, image in enumerate((sample_images[sample], train_images[train])):
            array = to_uint8(image[None])[0]
            axes[row, column].imshow(array, cmap="gray" if array.ndim == 2 else None)
            axes[row, column].set_xticks([])
            axes[row, column].set_yticks([])
        axes[0, column].set_title(f"d = {distance:.2f}", fontsize=8, color="tab:red" if distance < threshold else "black")
    axes[0, 0].set_ylabel("sample")
    axes[1, 0].set_ylabel("nearest train")
    fig.suptitle(f"Closest sample–training pairs (red: below the memorisation threshold {threshold:.2f})")
    fig.savefig(out_png, dpi=100)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", required=True)
    p.add_argument("--samples", type=Path, required=True, help="results/samples (user_NN/*.png)")
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--config", required=True, help="JSON/YAML text or file with the data and evaluation sections")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (the rule's threads); on a busy machine more threads than cores is much slower")
    p.add_argument("--low-data", action="append", default=[], metavar="K=DIR",
                   help="the samples of the generator trained on K train images per user (repeatable)")
    return p.parse_args(argv)


def parse_low_data(item: str) -> tuple[int, Path]:
    k, _, folder = item.partition("=")
    if not k.isdigit() or not folder:
        raise SystemExit(f"--low-data expects K=DIR (e.g. 4=results/lowdata/k4/samples), got {item!r}")
    return int(k), Path(folder)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = load_config(args.config, "data", "evaluation")
    settings, num_classes, channels = config["evaluation"], config["data"]["num_classes"], config["data"]["channels"]
    recipe = Recipe(**settings["classifier"])
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()

    train_rows, val_rows = read_manifest(args.manifest, "train"), read_manifest(args.manifest, "val")
    train_paths, val_paths = [r["path"] for r in train_rows], [r["path"] for r in val_rows]
    train_labels = np.array([class_label(r["user_id"]) for r in train_rows])
    val_labels = np.array([class_label(r["user_id"]) for r in val_rows])
    sample_paths, sample_labels = read_samples(args.samples, num_classes)
    print(f"Real: {len(train_paths)} train / {len(val_paths)} val images; synthetic: {len(sample_paths)} samples "
          f"of {num_classes} users; classifier {recipe}; seeds {settings['seeds']}")

    load = lambda paths: load_images(paths, channels, recipe.size)  # noqa: E731
    train_x, val_x, sample_x = load(train_paths), load(val_paths), load(sample_paths)
    train_y, val_y, sample_y = (torch.as_tensor(a) for a in (train_labels, val_labels, sample_labels))
    low_data = dict(parse_low_data(item) for item in args.low_data)

    def study(real: np.ndarray, samples: tuple, generator_saw: str) -> tuple[dict, dict]:
        """Every protocol over every seed for the real train images `real` (indices) and a
        generator's samples (x, labels, paths); returns the results and the real-only models."""
        sample_x, sample_labels, sample_paths = samples
        real_x, real_y = train_x[real], train_y[real]
        real_per_user = {u: int((train_labels[real] == u).sum()) for u in range(num_classes)}
        results, real_models = {"generator_saw": generator_saw, "augmented": []}, {}
        for name, ratio in protocols:
            accuracies, per_class, synthetic_used = [], [], []
            for seed in settings["seeds"]:
                if name == "real_only":
                    images, labels = real_x, real_y
                elif name == "synthetic_only":
                    images, labels = sample_x, torch.as_tensor(sample_labels)
                else:
                    wanted = {u: int(round(ratio * n)) for u, n in real_per_user.items()}
                    chosen = synthetic_subset(sample_labels, wanted, np.random.default_rng(seed))
                    synthetic_used.append([sample_paths[i] for i in chosen])
                    images = torch.cat([real_x, sample_x[chosen]])
                    labels = torch.cat([real_y, torch.as_tensor(sample_labels[chosen])])
                model = train_classifier(images, labels, num_classes, recipe, seed)
                metrics = classification_metrics(val_y, predict(model, val_x)[0], num_classes)
                if name == "real_only":
                    real_models[seed] = model
                accuracies.append(metrics["accuracy"])
                per_class.append(metrics["per_class_accuracy"])
                progress.update()
            entry = {"protocol": name, "real_images": None if name == "synthetic_only" else generator_saw,
                     "synthetic_images": "all samples" if name == "synthetic_only" else None,
                     "val_accuracy": summary(accuracies), "per_user_val_accuracy": mean_per_user(per_class)}
            if ratio is not None:
                results["augmented"].append(entry | {"ratio": ratio, "synthetic_images": synthetic_used})
            else:
                results[name] = entry
            progress.write(f"{generator_saw:>12} {name:>16}: real-val accuracy "
                           f"{entry['val_accuracy']['mean']:.3f} ± {entry['val_accuracy']['std']:.3f}")
        return results, real_models

    protocols = [("real_only", None)] + [(f"ratio_{r:g}", r) for r in settings["ratios"]] + [("synthetic_only", None)]
    progress = tqdm(total=len(protocols) * len(settings["seeds"]) * (1 + len(low_data)), desc="classifiers",
                    unit="run", file=sys.stdout)
    study_results, real_models = study(np.arange(len(train_paths)), (sample_x, sample_labels, sample_paths), "real_train")
    results = {"num_classes": num_classes, "seeds": settings["seeds"], "settings": settings,
               "training_sets": {"real_train": train_paths, "synthetic": sample_paths}, **study_results,
               "low_data": {}}
    for k, folder in low_data.items():
        # The same draw as train_dit --per-user k: the generator and these classifiers saw the same images.
        real = np.array(per_user_subset(train_labels, k, settings["low_data_seed"]))
        paths, labels = read_samples(folder, num_classes)
        name = f"k{k}"
        results["training_sets"][name] = [train_paths[i] for i in real]
        results["training_sets"][f"synthetic_{name}"] = paths
        results["low_data"][name] = study(real, (load(paths), labels, paths), name)[0]
    progress.close()

    # Fidelity and distribution metrics in the real-trained classifiers' features.
    fidelity_runs, confusions = [], np.zeros((num_classes, num_classes), dtype=int)
    for model in real_models.values():
        predicted, _ = predict(model, sample_x)
        metrics = classification_metrics(sample_y, predicted, num_classes)
        fidelity_runs.append(metrics)
        confusions += np.array(metrics["confusion"])
    reference = real_models[settings["seeds"][0]]
    features = {name: embed(reference, x).double() for name, x in (("train", train_x), ("val", val_x), ("samples", sample_x))}
    fd_per_user = frechet_distance_per_group(features["val"], val_labels, features["samples"], sample_labels)
    memo = memorisation(features["samples"], features["train"], features["val"], quantile=settings["memorisation_quantile"])
    results |= {
        "fidelity": {"accuracy": summary([m["accuracy"] for m in fidelity_runs]),
                     "per_user": mean_per_user([m["per_class_accuracy"] for m in fidelity_runs]),
                     "confusion": confusions.tolist()},
        "features": {"classifier": f"real_only, seed {settings['seeds'][0]}", "dim": int(features["val"].shape[1])},
        "frechet_distance": {"overall": frechet_distance(features["val"], features["samples"]),
                             "per_user": {user_id(int(u)): v for u, v in fd_per_user.items()},
                             "real_train_vs_val": frechet_distance(features["val"], features["train"])},
        "precision_recall": precision_recall(features["val"], features["samples"], k=settings["knn_k"]) | {"k": settings["knn_k"]},
        "memorisation": {key: memo[key] for key in ("threshold", "quantile", "fraction_flagged")}
        | {"closest_pairs": [{"sample": sample_paths[s], "train": train_paths[t], "distance": float(d)}
                             for s, t, d in memo["closest_pairs"]]},
    }

    args.out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_output(args.out_dir / "generation.json") as tmp:
        tmp.write_text(json.dumps(results, indent=1))
    headline = [
        ("real only", results["real_only"]["val_accuracy"]),
        *((f"real + synthetic ×{a['ratio']:g}", a["val_accuracy"]) for a in results["augmented"]),
        ("synthetic only (CAS)", results["synthetic_only"]["val_accuracy"]),
        ("samples classified as their user (fidelity)", results["fidelity"]["accuracy"]),
    ]
    with atomic_output(args.out_dir / "metrics.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["metric", "mean", "std"])
        writer.writerows([(name, f"{v['mean']:.4f}", f"{v['std']:.4f}") for name, v in headline])
        writer.writerow(["Fréchet distance, val vs samples", f"{results['frechet_distance']['overall']:.3f}", ""])
        writer.writerow(["Fréchet distance, val vs real train (reference)", f"{results['frechet_distance']['real_train_vs_val']:.3f}", ""])
        for key in ("precision", "recall"):
            writer.writerow([f"{key} (k={settings['knn_k']})", f"{results['precision_recall'][key]:.4f}", ""])
        writer.writerow(["samples flagged as memorised", f"{memo['fraction_flagged']:.4f}", ""])

    plot_accuracy_vs_ratio(results, args.out_dir / "accuracy_vs_ratio.png")
    plot_per_user(results["fidelity"]["per_user"], results["real_only"]["per_user_val_accuracy"],
                  args.out_dir / "per_user_accuracy.png")
    plot_confusion(results["fidelity"]["confusion"], args.out_dir / "confusion.png")
    plot_pairs(memo["closest_pairs"], sample_x, train_x, memo["threshold"], args.out_dir / "nearest_pairs.png")
    for name, value in headline:
        print(f"{name:>44}: {value['mean']:.3f} ± {value['std']:.3f}")
    print(f"{'Fréchet distance val vs samples':>44}: {results['frechet_distance']['overall']:.2f} "
          f"(val vs real train: {results['frechet_distance']['real_train_vs_val']:.2f})")
    print(f"{'precision / recall':>44}: {results['precision_recall']['precision']:.3f} / {results['precision_recall']['recall']:.3f}")
    print(f"{'memorised samples':>44}: {memo['fraction_flagged']:.3f} (threshold {memo['threshold']:.3f})")
    print(f"Wrote {args.out_dir}/generation.json, metrics.csv and 4 plots in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
