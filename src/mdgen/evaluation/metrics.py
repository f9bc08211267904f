"""Sample-quality metrics on feature vectors: Fréchet distance, improved precision/recall,
memorisation, and classification scores.

Pure math: every function takes feature arrays of shape (N, D) (torch tensors or numpy arrays)
and returns Python floats, dicts or numpy arrays; no I/O, no models. The evaluation stage supplies
the features: the penultimate layer of a person-identification classifier trained on real
spectrograms (Inception-v3 features would measure ImageNet similarity, not what separates people).

All distances and statistics are computed in float64: Fréchet distances subtract traces of
similar size, and nearest-neighbour distances of near-copies are tiny.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics.image.fid import FrechetInceptionDistance

# Pairwise-distance blocks hold at most this many float64 entries (32 MiB), whatever N is.
_DISTANCE_BLOCK_ENTRIES = 1 << 22


def _as_features(features: Any, name: str) -> Tensor:
    """A (N, D) float64 CPU tensor from a tensor, array or nested list; errors say what was wrong."""
    if isinstance(features, Tensor):
        tensor = features.detach().to(device="cpu", dtype=torch.float64)
    else:
        tensor = torch.as_tensor(np.asarray(features, dtype=np.float64))
    if tensor.ndim != 2:
        raise ValueError(
            f"{name} must be a (N, D) array of feature vectors, one row per image; got shape {tuple(tensor.shape)}"
        )
    if not torch.isfinite(tensor).all():
        bad = int((~torch.isfinite(tensor)).any(dim=1).sum())
        raise ValueError(
            f"{name} holds NaN or infinite values in {bad} of {tensor.shape[0]} rows; "
            "check the feature extractor (e.g. images that were not normalised)"
        )
    return tensor


def _as_labels(labels: Any) -> np.ndarray:
    """A flat numpy array of labels from a tensor (on any device), array or list."""
    return np.asarray(labels.detach().cpu() if isinstance(labels, Tensor) else labels).reshape(-1)


def _check_same_dim(a: Tensor, b: Tensor, name_a: str, name_b: str) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"{name_a} and {name_b} must come from the same feature layer, but have "
            f"{a.shape[1]} and {b.shape[1]} features per row"
        )


# --------------------------------------------------------------------------------------------
# Fréchet distance
# --------------------------------------------------------------------------------------------


class _PrecomputedFeatures(torch.nn.Module):
    """Passes features through, so torchmetrics' FID accumulates them as if it had extracted them.

    `num_features` is set because without it torchmetrics probes the module with a dummy
    (1, 3, 299, 299) image to infer the feature size.
    """

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: Tensor) -> Tensor:
        return features


def frechet_distance(real_features: Any, fake_features: Any) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (Heusel et al. 2017, FID).

    FD = ‖μ_r − μ_f‖² + Tr(Σ_r + Σ_f − 2 (Σ_r Σ_f)^½), with Σ the unbiased (N − 1) sample
    covariance. The number is torchmetrics' `FrechetInceptionDistance` fed our features through an
    identity module, in float64: it estimates Σ from running sums (Σ x xᵀ − N μ μᵀ) / (N − 1) and
    takes Tr (Σ_r Σ_f)^½ as the sum of the square roots of the eigenvalues of Σ_r Σ_f, which needs
    no matrix square root and stays finite when a covariance is singular.

    Each set needs at least 2 samples. With fewer samples than features (N ≤ D) the covariances
    are singular; the result is still finite but, like every FD from few samples, biased upwards
    (the estimator's bias shrinks roughly like D / N): per-user values from a handful of images
    are only comparable with each other at equal sample counts, never with a full-set FD.
    Round-off can leave an FD of identical sets at about −1e-6 rather than 0; it is not clamped.
    """
    real = _as_features(real_features, "real_features")
    fake = _as_features(fake_features, "fake_features")
    _check_same_dim(real, fake, "real_features", "fake_features")
    for name, features in (("real_features", real), ("fake_features", fake)):
        if features.shape[0] < 2:
            raise ValueError(
                f"{name} has {features.shape[0]} sample(s); the Fréchet distance needs a "
                "covariance, so at least 2 samples per set"
            )
    # FD is invariant to a common shift; centring on the real mean keeps torchmetrics' one-pass
    # covariance (Σ x xᵀ − N μ μᵀ) from cancelling catastrophically when features have a large mean.
    offset = real.mean(dim=0, keepdim=True)
    metric = FrechetInceptionDistance(feature=_PrecomputedFeatures(real.shape[1]))
    metric.update(real - offset, real=True)
    metric.update(fake - offset, real=False)
    return float(metric.compute())


def frechet_distance_per_group(
    real_features: Any, real_groups: Any, fake_features: Any, fake_groups: Any
) -> dict[Hashable, float]:
    """Fréchet distance per group (e.g. per user) between the real and fake rows of that group.

    Groups with fewer than 2 samples on either side are skipped (absent from the result). Keys are
    in sorted order, numpy scalars turned into Python ones. See `frechet_distance` for why values
    from few samples are biased upwards and comparable only at equal sample counts.
    """
    real = _as_features(real_features, "real_features")
    fake = _as_features(fake_features, "fake_features")
    real_groups, fake_groups = _as_labels(real_groups), _as_labels(fake_groups)
    for name, groups, features in (("real_groups", real_groups, real), ("fake_groups", fake_groups, fake)):
        if groups.shape != (features.shape[0],):
            raise ValueError(
                f"{name} must hold one group label per feature row ({features.shape[0]}), got shape {groups.shape}"
            )
    distances = {}
    for group in sorted(set(real_groups.tolist()) & set(fake_groups.tolist())):
        real_rows = torch.from_numpy(np.flatnonzero(real_groups == group))
        fake_rows = torch.from_numpy(np.flatnonzero(fake_groups == group))
        if len(real_rows) < 2 or len(fake_rows) < 2:
            continue
        distances[group] = frechet_distance(real[real_rows], fake[fake_rows])
    return distances


# --------------------------------------------------------------------------------------------
# Nearest neighbours
# --------------------------------------------------------------------------------------------


def _row_blocks(num_queries: int, num_references: int):
    """Slices over query rows such that a (rows, num_references) distance block stays bounded."""
    rows = max(1, _DISTANCE_BLOCK_ENTRIES // max(1, num_references))
    for start in range(0, num_queries, rows):
        yield slice(start, min(start + rows, num_queries))


def _kth_neighbour_distances(queries: Tensor, references: Tensor, k: int, exclude_self: bool) -> tuple[Tensor, Tensor]:
    """Distance to and index of the k-th nearest reference of every query, Euclidean, float64.

    With `exclude_self`, queries and references are the same set and row i never matches itself
    (exact duplicates elsewhere in the set still count, at distance 0).
    """
    distances = torch.empty(queries.shape[0], dtype=torch.float64)
    indices = torch.empty(queries.shape[0], dtype=torch.long)
    for rows in _row_blocks(queries.shape[0], references.shape[0]):
        block = torch.cdist(queries[rows], references)  # (rows, N_ref)
        if exclude_self:
            own = torch.arange(rows.start, rows.stop)
            block[own - rows.start, own] = float("inf")
        nearest, nearest_index = block.topk(k, dim=1, largest=False)  # ascending, (rows, k)
        distances[rows] = nearest[:, -1]
        indices[rows] = nearest_index[:, -1]
    return distances, indices


def nearest_distances(queries: Any, references: Any, exclude_self: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean distance from each query to its nearest reference, and that reference's index.

    Returns (distances (N,), indices (N,)) as numpy float64 / int64 arrays. With `exclude_self`,
    queries and references must be the same set (row i of both is the same point) and each point's
    own row is skipped, e.g. for within-set nearest neighbours.
    """
    query_tensor = _as_features(queries, "queries")
    reference_tensor = _as_features(references, "references")
    _check_same_dim(query_tensor, reference_tensor, "queries", "references")
    needed = 2 if exclude_self else 1
    if reference_tensor.shape[0] < needed:
        raise ValueError(
            f"references has {reference_tensor.shape[0]} rows; need at least {needed} "
            f"{'(one besides each point itself) ' if exclude_self else ''}to find a neighbour"
        )
    if exclude_self and query_tensor.shape[0] != reference_tensor.shape[0]:
        raise ValueError(
            f"exclude_self=True means queries and references are the same set, but they have "
            f"{query_tensor.shape[0]} and {reference_tensor.shape[0]} rows"
        )
    distances, indices = _kth_neighbour_distances(query_tensor, reference_tensor, 1, exclude_self)
    return distances.numpy(), indices.numpy()


# --------------------------------------------------------------------------------------------
# Improved precision and recall
# --------------------------------------------------------------------------------------------


def _fraction_inside_manifold(points: Tensor, manifold: Tensor, radii: Tensor) -> float:
    """Fraction of `points` within radius_i of at least one manifold sample i (closed balls)."""
    inside = torch.zeros(points.shape[0], dtype=torch.bool)
    for rows in _row_blocks(points.shape[0], manifold.shape[0]):
        block = torch.cdist(points[rows], manifold)  # (rows, N_manifold)
        inside[rows] = (block <= radii.unsqueeze(0)).any(dim=1)
    return float(inside.double().mean())


def precision_recall(real_features: Any, fake_features: Any, k: int = 3) -> dict[str, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019, NeurIPS).

    Each set's manifold is the union of balls around its samples, the radius of a sample being the
    distance to its k-th nearest neighbour in the same set (excluding itself). Precision is the
    fraction of fake samples inside the real manifold (realism); recall is the fraction of real
    samples inside the fake manifold (coverage). A point on a ball's boundary counts as inside, as
    in the paper's code (`distance <= radius`). The paper uses k = 3.

    Returns {"precision", "recall"}, each in [0, 1].
    """
    real = _as_features(real_features, "real_features")
    fake = _as_features(fake_features, "fake_features")
    _check_same_dim(real, fake, "real_features", "fake_features")
    if k < 1:
        raise ValueError(f"k is the neighbour whose distance sets each radius and must be ≥ 1, got {k}")
    for name, features in (("real_features", real), ("fake_features", fake)):
        if features.shape[0] <= k:
            raise ValueError(
                f"{name} has {features.shape[0]} samples; a k-th nearest neighbour besides "
                f"the point itself needs more than k = {k}: lower k or add samples"
            )
    real_radii, _ = _kth_neighbour_distances(real, real, k, exclude_self=True)
    fake_radii, _ = _kth_neighbour_distances(fake, fake, k, exclude_self=True)
    return {
        "precision": _fraction_inside_manifold(fake, real, real_radii),
        "recall": _fraction_inside_manifold(real, fake, fake_radii),
    }


# --------------------------------------------------------------------------------------------
# Memorisation
# --------------------------------------------------------------------------------------------


def memorisation(
    sample_features: Any, train_features: Any, val_features: Any, quantile: float = 0.01
) -> dict[str, Any]:
    """Flag generated samples that sit closer to a training image than real held-out images do.

    The yardstick is the distribution of val-to-train nearest distances: real images the model
    never saw, drawn from the same distribution as the training set. The threshold is its
    `quantile` quantile, so a sample is flagged when it is closer to its nearest training image
    than all but a `quantile` fraction of real val images are. A generator that does not copy
    flags about `quantile` of its samples; exact or near copies are flagged always (their
    distance is ~0). Val and samples should be compared against the same training set, since
    nearest distances shrink as the training set grows.

    Returns a dict with
      "threshold", "quantile", "fraction_flagged" (samples with distance < threshold),
      "flagged" (their indices, ascending), "sample_to_train" (N_sample,) distances,
      "nearest_train" (N_sample,) indices, "val_to_train" (N_val,) distances, and
      "closest_pairs": up to 8 (sample_index, train_index, distance) tuples, closest first.
    """
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"quantile must lie in [0, 1] (e.g. 0.01 for 1 %), got {quantile}")
    samples = _as_features(sample_features, "sample_features")
    train = _as_features(train_features, "train_features")
    val = _as_features(val_features, "val_features")
    _check_same_dim(samples, train, "sample_features", "train_features")
    _check_same_dim(val, train, "val_features", "train_features")
    if val.shape[0] == 0:
        raise ValueError(
            "val_features is empty; the threshold comes from real held-out images, so at "
            "least one is needed (hundreds for a 1 % quantile to mean something)"
        )
    sample_to_train, nearest_train = nearest_distances(samples, train)
    val_to_train, _ = nearest_distances(val, train)
    threshold = float(np.quantile(val_to_train, quantile))
    flagged = np.flatnonzero(sample_to_train < threshold)
    closest = np.argsort(sample_to_train, kind="stable")[:8]
    return {
        "threshold": threshold,
        "quantile": float(quantile),
        "fraction_flagged": len(flagged) / len(sample_to_train) if len(sample_to_train) else 0.0,
        "flagged": flagged,
        "sample_to_train": sample_to_train,
        "nearest_train": nearest_train,
        "val_to_train": val_to_train,
        "closest_pairs": [(int(i), int(nearest_train[i]), float(sample_to_train[i])) for i in closest],
    }


# --------------------------------------------------------------------------------------------
# Classification
# --------------------------------------------------------------------------------------------


def classification_metrics(true_labels: Any, predicted_labels: Any, num_classes: int) -> dict[str, Any]:
    """Accuracy, per-class accuracy (recall of each true class) and the confusion matrix.

    Returns {"accuracy": float, "per_class_accuracy": list of num_classes floats, None for a class
    with no true samples, "confusion": num_classes × num_classes nested list of counts, rows = true
    class, columns = predicted class}.
    """
    true, predicted = _as_labels(true_labels), _as_labels(predicted_labels)
    if true.shape != predicted.shape:
        raise ValueError(
            f"true_labels and predicted_labels must have one entry per sample each, got "
            f"{true.size} and {predicted.size}"
        )
    if true.size == 0:
        raise ValueError("no labels given; classification metrics need at least one sample")
    for name, labels in (("true_labels", true), ("predicted_labels", predicted)):
        if not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"{name} must be integer class indices, got dtype {labels.dtype}")
        if labels.min() < 0 or labels.max() >= num_classes:
            raise ValueError(
                f"{name} must lie in [0, {num_classes}) for num_classes={num_classes}, "
                f"found values from {labels.min()} to {labels.max()}"
            )
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (true, predicted), 1)
    per_class_total = confusion.sum(axis=1)
    per_class_accuracy = [
        float(confusion[c, c] / per_class_total[c]) if per_class_total[c] else None for c in range(num_classes)
    ]
    return {
        "accuracy": float(np.trace(confusion) / true.size),
        "per_class_accuracy": per_class_accuracy,
        "confusion": confusion.tolist(),
    }
