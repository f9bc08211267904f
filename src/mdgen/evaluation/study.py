"""The augmentation study: the person-identification classifier trained on real, real + synthetic
and synthetic-only images, over seeds, always tested on the real val split.

    study = run_protocols(real, samples, val, num_classes, recipe, seeds, ratios, generator_saw="real_train")

`real`, `samples` and `val` are `Images` (x (N, C, H, W) in [-1, 1] at the recipe's size, labels,
paths). Returns every protocol's accuracy (mean ± std over seeds, per user) and the real-only
classifiers, which the stage then uses as judges of the samples.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mdgen.data.dataset import per_user_subset
from mdgen.data.validation import user_id
from mdgen.evaluation.classifier import predict, Recipe, train_classifier
from mdgen.evaluation.metrics import classification_metrics

TOO_FEW_SAMPLES = "raise sample.per_user or lower evaluation.ratios"


@dataclass
class Images:
    """Images as the classifier sees them, with their labels and files."""

    x: torch.Tensor  # (N, C, H, W) in [-1, 1]
    labels: np.ndarray  # (N,) class labels
    paths: list[str]

    def subset(self, indices) -> Images:
        indices = np.asarray(indices, dtype=int)
        return Images(self.x[indices], self.labels[indices], [self.paths[i] for i in indices])


def read_samples(samples_dir: Path, num_classes: int) -> tuple[list[str], np.ndarray]:
    """Paths and labels of the generated images, laid out as results/samples/user_NN/*.png."""
    paths, labels = [], []
    for user in range(num_classes):
        found = sorted(str(p) for p in (samples_dir / user_id(user)).glob("*.png"))
        if not found:
            raise SystemExit(
                f"{samples_dir / user_id(user)} holds no samples: every user needs samples; rerun `sample`"
            )
        paths += found
        labels += [user] * len(found)
    return paths, np.array(labels)


def summary(values: list[float]) -> dict:
    """Mean, standard deviation and the values of runs over seeds."""
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "runs": [float(v) for v in values]}


def mean_per_user(runs: list[list[float | None]]) -> list[float | None]:
    """Per-user accuracy averaged over runs; None for a user absent from the evaluated set."""
    table = np.array([[np.nan if v is None else v for v in run] for run in runs], dtype=float)
    counts = (~np.isnan(table)).sum(axis=0)
    sums = np.nansum(table, axis=0)
    return [None if n == 0 else float(total / n) for total, n in zip(sums, counts)]


def protocols(ratios: list[float]) -> list[tuple[str, float | None]]:
    """(name, synthetic:real ratio) of every protocol, real only first, synthetic only last."""
    return [("real_only", None)] + [(f"ratio_{r:g}", r) for r in ratios] + [("synthetic_only", None)]


def run_protocols(
    real: Images,
    samples: Images,
    val: Images,
    num_classes: int,
    recipe: Recipe,
    seeds: list[int],
    ratios: list[float],
    generator_saw: str,
    on_run: Callable[[], None] = lambda: None,
    log: Callable[[str], None] = print,
    real_only: dict[int, torch.nn.Module] | None = None,
) -> tuple[dict, dict]:
    """Every protocol over every seed: ({"generator_saw", "real_only", "augmented", "synthetic_only"},
    {seed: the real-only classifier}). `on_run` is called after each training (progress).
    `real_only`: {seed: a classifier already trained on `real` with this recipe} (the saved
    judges), tested instead of training them again."""
    if real_only is not None and set(real_only) != set(seeds):
        raise ValueError(f"real_only has classifiers for seeds {sorted(real_only)}, the study runs seeds {seeds}")
    val_y = torch.as_tensor(val.labels)
    real_per_user = {u: int((real.labels == u).sum()) for u in range(num_classes)}
    results, real_models = {"generator_saw": generator_saw, "augmented": []}, {}
    for name, ratio in protocols(ratios):
        accuracies, per_class, synthetic_used = [], [], []
        for seed in seeds:
            if name == "real_only":
                training = real
            elif name == "synthetic_only":
                training = samples
            else:
                wanted = {u: int(round(ratio * n)) for u, n in real_per_user.items()}
                try:
                    chosen = per_user_subset(samples.labels, wanted, seed, advice=TOO_FEW_SAMPLES)
                except ValueError as error:
                    raise SystemExit(str(error)) from None
                synthetic_used.append([samples.paths[i] for i in chosen])
                added = samples.subset(chosen)
                training = Images(
                    torch.cat([real.x, added.x]), np.concatenate([real.labels, added.labels]), real.paths + added.paths
                )
            if name == "real_only" and real_only is not None:
                model = real_only[seed]
            else:
                model = train_classifier(training.x, torch.as_tensor(training.labels), num_classes, recipe, seed)
            metrics = classification_metrics(val_y, predict(model, val.x)[0], num_classes)
            if name == "real_only":
                real_models[seed] = model
            accuracies.append(metrics["accuracy"])
            per_class.append(metrics["per_class_accuracy"])
            on_run()
        entry = {
            "protocol": name,
            "real_images": None if name == "synthetic_only" else generator_saw,
            "synthetic_images": "all samples" if name == "synthetic_only" else None,
            "val_accuracy": summary(accuracies),
            "per_user_val_accuracy": mean_per_user(per_class),
        }
        if ratio is not None:
            results["augmented"].append(entry | {"ratio": ratio, "synthetic_images": synthetic_used})
        else:
            results[name] = entry
        log(
            f"{generator_saw:>12} {name:>16}: real-val accuracy "
            f"{entry['val_accuracy']['mean']:.3f} ± {entry['val_accuracy']['std']:.3f}"
        )
    return results, real_models


def fidelity(judges: dict, samples: Images, num_classes: int) -> dict:
    """How often the real-trained classifiers (judges) recognise each sample as its user: accuracy
    over judges, per user, and the summed confusion matrix (rows: generated for, columns: classified as)."""
    runs, confusion = [], np.zeros((num_classes, num_classes), dtype=int)
    for model in judges.values():
        metrics = classification_metrics(torch.as_tensor(samples.labels), predict(model, samples.x)[0], num_classes)
        runs.append(metrics)
        confusion += np.array(metrics["confusion"])
    return {
        "accuracy": summary([m["accuracy"] for m in runs]),
        "per_user": mean_per_user([m["per_class_accuracy"] for m in runs]),
        "confusion": confusion.tolist(),
    }
