"""Stage `evaluate_generation`: does the generated data help person identification?

    python -m mdgen.stages.evaluate_generation --manifest results/dataset/manifest.csv --samples results/samples \
        --vae-eval results/vae/eval.json --judges results/eval/judges.pt --out-dir results/eval \
        --config config/config.yaml

Trains the person-identification classifier (a fixed recipe, several seeds) on
- real train images only (the baseline; with --judges, evaluate_vae's saved classifiers instead),
- real + synthetic images at each synthetic:real ratio (per user),
- synthetic images only (the Classification Accuracy Score of Ravuri & Vinyals, 2019),
and tests every one on the REAL val split, which neither the VAE nor the generator saw. In the
real-trained classifiers' penultimate features it measures per-user fidelity (is user k's sample
classified as k?), Fréchet distance and k-NN precision/recall between real val images and samples,
and, for every generator, memorisation: samples closer to a training image than almost any real
val image is, and (with --reconstructions) closer to a training image's VA-VAE reconstruction than
almost any val image's reconstruction is, which is where a copied train latent lands and the first
check cannot see it. With the VA-VAE's identity figures from evaluate_vae it states where identity
is lost, for every generator: real val → reconstructions of real val → samples (fidelity) → trained
on samples (CAS).

Writes `<out-dir>/generation.json` (every number, the seeds, the settings, and which real images
each generator, its alignment teacher and each classifier saw), `metrics.csv` (the headline table) and the plots
identity.png, accuracy_vs_ratio.png, per_user_accuracy.png, confusion.png and nearest_pairs.png.
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

from mdgen.config import load_config
from mdgen.data.dataset import class_label, per_user_subset
from mdgen.data.latents import sha256_file
from mdgen.data.validation import read_manifest, user_id
from mdgen.evaluation.classifier import embed, load_images, Recipe
from mdgen.evaluation.identity import format_identity_table, judge_name, load_judges, load_reconstructions
from mdgen.evaluation.metrics import frechet_distance, frechet_distance_per_group, memorisation, precision_recall
from mdgen.evaluation.study import fidelity, Images, protocols, read_samples, run_protocols
from mdgen.io import atomic_output
from mdgen.plots import plot_accuracy_vs_ratio, plot_confusion, plot_identity, plot_pairs, plot_per_user
from mdgen.progress import progress, say


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", required=True)
    p.add_argument("--samples", type=Path, required=True, help="results/samples (user_NN/*.png)")
    p.add_argument("--vae-eval", type=Path, required=True, help="results/vae/eval.json (its identity table)")
    p.add_argument(
        "--judges",
        type=Path,
        default=None,
        help="results/eval/judges.pt (evaluate_vae --out-judges): the real-only classifiers, reused instead of "
        "trained again; without it they are trained here",
    )
    p.add_argument(
        "--reconstructions",
        type=Path,
        default=None,
        help="results/vae/reconstructions.pt (evaluate_vae --out-reconstructions): with it, samples are also checked "
        "against the train images' reconstructions, which is where a copied train latent lands",
    )
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--config", required=True, help="JSON/YAML text or file with the data and evaluation sections")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (the rule's threads); on a busy machine more threads than cores is much slower",
    )
    p.add_argument(
        "--low-data",
        action="append",
        default=[],
        metavar="K=DIR",
        help="the samples of the generator trained on K train images per user (repeatable)",
    )
    p.add_argument(
        "--teacher",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="the spectrogram teacher a generator aligned to: real_train=results/teacher/teacher.pt, "
        "k4=results/lowdata/k4/teacher/teacher.pt (repeatable)",
    )
    return p.parse_args(argv)


def teachers_saw(items: list[str], training_sets: dict[str, list[str]]) -> dict:
    """What each --teacher NAME=PATH saw, checked to be exactly the images of training set NAME
    (the real images its generator saw): anything else would leak images into the generator."""
    recorded = {}
    for item in items:
        name, _, path = item.partition("=")
        if name not in training_sets or not path:
            raise SystemExit(f"--teacher expects NAME=PATH with NAME one of {sorted(training_sets)}, got {item!r}")
        saw = torch.load(path, map_location="cpu", weights_only=True)["saw"]
        if sorted(saw["paths"]) != sorted(training_sets[name]):
            raise SystemExit(
                f"{path} saw {saw['count']} images, not the {len(training_sets[name])} real images of {name} that "
                "its generator saw: the teacher must see only what the generator sees"
            )
        recorded[name] = {"path": path, "sha256": sha256_file(path)} | {k: v for k, v in saw.items() if k != "paths"}
    return recorded


def parse_low_data(item: str) -> tuple[int, Path]:
    k, _, folder = item.partition("=")
    if not k.isdigit() or not folder:
        raise SystemExit(f"--low-data expects K=DIR (e.g. 4=results/lowdata/k4/samples), got {item!r}")
    return int(k), Path(folder)


def read_vae_identity(path: Path, settings: dict) -> dict:
    """evaluate_vae's identity table, checked to come from the same judges (seeds and recipe)."""
    table = json.loads(path.read_text()).get("identity")
    if table is None:
        raise SystemExit(f"{path} has no identity table: it was written by an older evaluate_vae; rerun evaluate_vae")
    expected = judge_name(Recipe(**settings["classifier"]), settings["seeds"])
    if table["judge"] != expected:
        raise SystemExit(
            f"{path} was measured with judges '{table['judge']}', this evaluation uses '{expected}': "
            "rerun evaluate_vae with the same evaluation settings"
        )
    return table


def identity_table(results: dict, vae_identity: dict) -> dict:
    """Where identity is lost, for every generator, under the same real-trained judges: real val →
    VA-VAE reconstructions (from evaluate_vae) → samples (fidelity) → a classifier trained on samples (CAS)."""
    generators = {"real_train": results, **results["low_data"]}
    real_val = results["real_only"]["val_accuracy"]
    return vae_identity | {
        "real_val": real_val,
        "generators": {
            name: {
                "real_val": real_val,
                "reconstructions": vae_identity["reconstructions"],
                "fidelity": study["fidelity"]["accuracy"],
                "cas": study["synthetic_only"]["val_accuracy"],
            }
            for name, study in generators.items()
        },
        "labels": {"real_train": "generator on all train images"}
        | {name: f"generator on {name.removeprefix('k')} train images per user" for name in results["low_data"]},
    }


# The two memorisation checks: what a flagged sample is closest to.
COPY_CHECKS = {
    "memorisation": "closer to a train image than real val is",
    "memorisation_through_decoder": "closer to a train image's reconstruction than val's reconstructions are",
}


def judge_features(judge, images: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The judge's penultimate features of each set of images, in float64."""
    return {name: embed(judge, x).double() for name, x in images.items()}


def copy_checks(
    features: dict[str, torch.Tensor],
    samples: torch.Tensor,
    sample_paths: list[str],
    saw: np.ndarray,
    train_paths: list[str],
    quantile: float,
) -> tuple[dict, dict]:
    """Memorisation (mdgen.evaluation.metrics) of one generator's samples (their features) against
    the train images it saw (`saw`: their indices), and, where `features` holds the VA-VAE's
    reconstructions ("decoded_train", "decoded_val"), against those images' reconstructions with
    reconstructions of val as the yardstick. The second check is the one that sees a generator that
    copies a train latent: decoded, such a sample is that image's reconstruction, which sits further
    from the image itself than the first check's threshold. Returns the results' entries and the
    full outputs, keyed "memorisation" and "memorisation_through_decoder"."""
    checks = {"memorisation": ("train", "val")}
    if "decoded_train" in features:
        checks["memorisation_through_decoder"] = ("decoded_train", "decoded_val")
    entries, full = {}, {}
    for name, (reference, yardstick) in checks.items():
        memo = memorisation(samples, features[reference][saw], features[yardstick], quantile=quantile)
        closest = [
            {"sample": sample_paths[s], "train": train_paths[saw[t]], "distance": float(d)}
            for s, t, d in memo["closest_pairs"]
        ]
        entries[name] = {key: memo[key] for key in ("threshold", "quantile", "fraction_flagged")}
        entries[name]["closest_pairs"] = closest
        full[name] = memo
    return entries, full


def distribution_metrics(features: dict[str, torch.Tensor], val: Images, samples: Images, settings: dict) -> dict:
    """Fréchet distance and precision/recall between real val and the samples in the features of
    one real-trained classifier (`judge_features` of train, val and samples)."""
    fd_per_user = frechet_distance_per_group(features["val"], val.labels, features["samples"], samples.labels)
    return {
        "features": {"classifier": f"real_only, seed {settings['seeds'][0]}", "dim": int(features["val"].shape[1])},
        "frechet_distance": {
            "overall": frechet_distance(features["val"], features["samples"]),
            "per_user": {user_id(int(u)): v for u, v in fd_per_user.items()},
            "real_train_vs_val": frechet_distance(features["val"], features["train"]),
        },
        "precision_recall": precision_recall(features["val"], features["samples"], k=settings["knn_k"])
        | {
            "k": settings["knn_k"],
            # what real recordings score: real train in place of the samples
            "real_train_vs_val": precision_recall(features["val"], features["train"], k=settings["knn_k"]),
        },
    }


def metrics_rows(results: dict, knn_k: int) -> list[tuple[str, str, str]]:
    """The headline table (metrics.csv): metric, mean, std."""
    accuracies = [
        ("real only", results["real_only"]["val_accuracy"]),
        *((f"real + synthetic ×{a['ratio']:g}", a["val_accuracy"]) for a in results["augmented"]),
        ("synthetic only (CAS)", results["synthetic_only"]["val_accuracy"]),
        ("samples classified as their user (fidelity)", results["fidelity"]["accuracy"]),
        ("reconstructions of real val classified as their user", results["identity"]["reconstructions"]),
    ]
    rows = [(name, f"{v['mean']:.4f}", f"{v['std']:.4f}") for name, v in accuracies]
    fd, pr, reference = results["frechet_distance"], results["precision_recall"], "real train vs val (reference)"
    rows += [
        ("Fréchet distance, val vs samples", f"{fd['overall']:.3f}", ""),
        ("Fréchet distance, val vs real train (reference)", f"{fd['real_train_vs_val']:.3f}", ""),
        (f"precision (k={knn_k})", f"{pr['precision']:.4f}", ""),
        (f"recall (k={knn_k})", f"{pr['recall']:.4f}", ""),
        (f"precision (k={knn_k}), {reference}", f"{pr['real_train_vs_val']['precision']:.4f}", ""),
        (f"recall (k={knn_k}), {reference}", f"{pr['real_train_vs_val']['recall']:.4f}", ""),
        ("samples flagged as memorised", f"{results['memorisation']['fraction_flagged']:.4f}", ""),
    ]
    if "memorisation_through_decoder" in results:
        flagged = results["memorisation_through_decoder"]["fraction_flagged"]
        rows.append(("samples flagged as copies of a train latent", f"{flagged:.4f}", ""))
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = load_config(args.config, "data", "evaluation")
    settings, num_classes, channels = config["evaluation"], config["data"]["num_classes"], config["data"]["channels"]
    recipe = Recipe(**settings["classifier"])
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    vae_identity = read_vae_identity(args.vae_eval, settings)

    def images(paths: list[str], labels) -> Images:
        return Images(load_images(paths, channels, recipe.size), np.asarray(labels), paths)

    rows = {split: read_manifest(args.manifest, split) for split in ("train", "val")}
    real = {
        split: images([r["path"] for r in rows[split]], [class_label(r["user_id"]) for r in rows[split]])
        for split in rows
    }
    train, val = real["train"], real["val"]
    saved_judges = None
    if args.judges is not None:
        saved_judges = load_judges(args.judges, recipe, settings["seeds"], rows["train"], num_classes, channels)
    decoded = {}
    if args.reconstructions is not None:
        decoded = load_reconstructions(args.reconstructions, rows, recipe.size)
    else:
        say("No --reconstructions: samples are checked against the train images only, not for copied latents")
    samples = images(*read_samples(args.samples, num_classes))
    low_data = dict(parse_low_data(item) for item in args.low_data)
    say(
        f"Real: {len(train.paths)} train / {len(val.paths)} val images; synthetic: {len(samples.paths)} samples "
        f"of {num_classes} users; classifier {recipe}; seeds {settings['seeds']}"
        + (f"; real-only classifiers from {args.judges}" if saved_judges else "")
    )

    runs = len(protocols(settings["ratios"])) * len(settings["seeds"]) * (1 + len(low_data))
    bar = progress(total=runs, desc="classifiers", unit="run")
    study = dict(
        num_classes=num_classes,
        recipe=recipe,
        seeds=settings["seeds"],
        ratios=settings["ratios"],
        on_run=bar.update,
        log=bar.write,
    )
    main_study, judges = run_protocols(train, samples, val, generator_saw="real_train", real_only=saved_judges, **study)
    results = {
        "num_classes": num_classes,
        "seeds": settings["seeds"],
        "settings": settings,
        "training_sets": {"real_train": train.paths, "synthetic": samples.paths},
        **main_study,
        "fidelity": fidelity(judges, samples, num_classes),
        "low_data": {},
    }
    low_data_sets = {}  # name: (the train images its generator saw, its samples)
    for k, folder in low_data.items():
        # The same draw as train_dit --per-user k: the generator and these classifiers saw the same images.
        name = f"k{k}"
        saw = np.asarray(per_user_subset(train.labels, k, settings["low_data_seed"]))
        subset = train.subset(saw)
        generated = images(*read_samples(folder, num_classes))
        low_data_sets[name] = (saw, generated)
        results["training_sets"] |= {name: subset.paths, f"synthetic_{name}": generated.paths}
        results["low_data"][name] = run_protocols(subset, generated, val, generator_saw=name, **study)[0]
        results["low_data"][name]["fidelity"] = fidelity(judges, generated, num_classes)
    bar.close()
    results["teachers"] = teachers_saw(args.teacher, results["training_sets"])
    for name, study_results in {"real_train": results, **results["low_data"]}.items():
        study_results["teacher_saw"] = name if name in results["teachers"] else None

    results["identity"] = identity_table(results, vae_identity)
    say(f"Where identity is lost ({vae_identity['judge']}; chance {vae_identity['chance']:.3f}):")
    say(format_identity_table(results["identity"]["generators"]))
    judge = judges[settings["seeds"][0]]
    features = judge_features(
        judge, {"train": train.x, "val": val.x, "samples": samples.x} | {f"decoded_{s}": x for s, x in decoded.items()}
    )
    results |= distribution_metrics(features, val, samples, settings)
    quantile = settings["memorisation_quantile"]
    every_image = np.arange(len(train.paths))
    copies, memo = copy_checks(features, features["samples"], samples.paths, every_image, train.paths, quantile)
    results |= copies
    for name, (saw, generated) in low_data_sets.items():
        sample_features = embed(judge, generated.x).double()
        results["low_data"][name] |= copy_checks(
            features, sample_features, generated.paths, saw, train.paths, quantile
        )[0]
    for name, study_results in {"real_train": results, **results["low_data"]}.items():
        flagged = [
            f"{study_results[check]['fraction_flagged']:.3f} {label}"
            for check, label in COPY_CHECKS.items()
            if check in study_results
        ]
        say(f"{name:>12}: samples flagged as copies: " + ", ".join(flagged))

    pair_panels = [("Against the train images", memo["memorisation"], train.x)]
    if decoded:
        title = "Against their reconstructions (copied latents)"
        pair_panels.append((title, memo["memorisation_through_decoder"], decoded["train"]))

    args.out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_output(args.out_dir / "generation.json") as tmp:
        tmp.write_text(json.dumps(results, indent=1))
    rows = metrics_rows(results, settings["knn_k"])
    with atomic_output(args.out_dir / "metrics.csv") as tmp, open(tmp, "w", newline="") as f:
        csv.writer(f).writerows([("metric", "mean", "std"), *rows])
    figures = {
        "identity.png": lambda out: plot_identity(results["identity"], out),
        "accuracy_vs_ratio.png": lambda out: plot_accuracy_vs_ratio(results, out),
        "per_user_accuracy.png": lambda out: plot_per_user(
            results["fidelity"]["per_user"], results["real_only"]["per_user_val_accuracy"], out
        ),
        "confusion.png": lambda out: plot_confusion(results["fidelity"]["confusion"], out),
        "nearest_pairs.png": lambda out: plot_pairs(pair_panels, samples.x, out),
    }
    for name, draw in figures.items():
        draw(args.out_dir / name)
    for name, mean, std in rows:
        say(f"{name:>52}: {mean}" + (f" ± {std}" if std else ""))
    say(
        f"Wrote {args.out_dir}/generation.json, metrics.csv and {len(figures)} plots in "
        f"{time.perf_counter() - start:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
