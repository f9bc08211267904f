"""Metric math against known answers: closed-form Fréchet distances of Gaussians, hand-built
precision/recall lattices, planted copies for memorisation, a hand-counted confusion matrix."""

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy.spatial.distance import cdist as scipy_cdist

import mdgen.evaluation.metrics as metrics
from mdgen.evaluation.metrics import (
    classification_metrics,
    frechet_distance,
    frechet_distance_per_group,
    memorisation,
    nearest_distances,
    precision_recall,
)


def gaussian_samples(rng, mean, covariance, n):
    return rng.multivariate_normal(mean, covariance, size=n)


def random_rotation(rng, dim):
    q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
    return q * np.sign(np.diag(r))


# --------------------------------------------------------------------------------------------
# Fréchet distance
# --------------------------------------------------------------------------------------------


def test_frechet_distance_of_a_set_with_itself_is_zero():
    features = np.random.default_rng(0).standard_normal((500, 16)) * 3.0 + 1.0
    assert abs(frechet_distance(features, features)) < 1e-6
    assert abs(frechet_distance(torch.from_numpy(features).float(), torch.from_numpy(features).float())) < 1e-6


@pytest.mark.parametrize("rotated", [False, True], ids=["diagonal", "rotated-commuting"])
def test_frechet_distance_matches_closed_form_for_commuting_covariances(rotated):
    # Commuting covariances R diag(a) Rᵀ, R diag(b) Rᵀ: FD = Σ (√a − √b)² + ‖Δμ‖², whatever R is.
    rng = np.random.default_rng(1)
    a, b = np.array([1.0, 4.0, 0.25]), np.array([2.0, 1.0, 1.0])
    mean_real, mean_fake = np.zeros(3), np.array([1.0, -2.0, 0.5])
    rotation = random_rotation(rng, 3) if rotated else np.eye(3)
    cov_real, cov_fake = rotation @ np.diag(a) @ rotation.T, rotation @ np.diag(b) @ rotation.T
    analytic = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2) + np.sum((mean_real - mean_fake) ** 2)  # 6.6716
    real = gaussian_samples(rng, mean_real, cov_real, 40_000)
    fake = gaussian_samples(rng, mean_fake, cov_fake, 40_000)
    assert frechet_distance(real, fake) == pytest.approx(analytic, rel=0.03)  # 40 000 samples: sampling error ≲ 1 %


def test_frechet_distance_matches_closed_form_for_non_commuting_covariances():
    rng = np.random.default_rng(2)
    factor_real, factor_fake = rng.standard_normal((4, 4)), rng.standard_normal((4, 4))
    cov_real, cov_fake = factor_real @ factor_real.T + 0.5 * np.eye(4), factor_fake @ factor_fake.T + 0.5 * np.eye(4)
    assert not np.allclose(cov_real @ cov_fake, cov_fake @ cov_real)
    mean_real, mean_fake = np.array([0.0, 1.0, 0.0, -1.0]), np.array([1.0, 1.0, 2.0, 0.0])
    # Independent reference: the symmetric form Tr (Σ_r^½ Σ_f Σ_r^½)^½ with scipy's Schur sqrtm.
    root_real = scipy.linalg.sqrtm(cov_real).real
    cross = np.trace(scipy.linalg.sqrtm(root_real @ cov_fake @ root_real).real)
    analytic = np.sum((mean_real - mean_fake) ** 2) + np.trace(cov_real) + np.trace(cov_fake) - 2 * cross
    real = gaussian_samples(rng, mean_real, cov_real, 40_000)
    fake = gaussian_samples(rng, mean_fake, cov_fake, 40_000)
    assert frechet_distance(real, fake) == pytest.approx(analytic, rel=0.03)  # 40 000 samples: sampling error ≲ 1 %


def test_frechet_distance_uses_unbiased_sample_covariance():
    # With 10 samples, dividing by N instead of N − 1 changes the covariances by 10 %.
    rng = np.random.default_rng(3)
    real, fake = rng.standard_normal((10, 3)), 2.0 * rng.standard_normal((12, 3)) + 1.0
    cov_real, cov_fake = np.cov(real, rowvar=False, ddof=1), np.cov(fake, rowvar=False, ddof=1)
    expected = (
        np.sum((real.mean(0) - fake.mean(0)) ** 2)
        + np.trace(cov_real + cov_fake)
        - 2 * np.trace(scipy.linalg.sqrtm(cov_real @ cov_fake).real)
    )
    assert frechet_distance(real, fake) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_is_symmetric_and_shift_invariant():
    rng = np.random.default_rng(4)
    real, fake = rng.standard_normal((300, 8)), 1.5 * rng.standard_normal((200, 8)) + 0.3
    forward = frechet_distance(real, fake)
    assert forward > 1.0
    assert frechet_distance(fake, real) == pytest.approx(forward, rel=1e-9)
    # A large common offset must not cost precision (the one-pass covariance would cancel badly).
    assert frechet_distance(real + 1e7, fake + 1e7) == pytest.approx(forward, rel=1e-6)


def test_frechet_distance_with_fewer_samples_than_features_is_finite_and_biased_upwards():
    rng = np.random.default_rng(5)
    few = frechet_distance(rng.standard_normal((5, 32)), rng.standard_normal((5, 32)))
    assert np.isfinite(few) and few > 0
    # Same distribution on both sides, so the true FD is 0: the estimate grows as N shrinks.
    small = np.mean([frechet_distance(rng.standard_normal((20, 8)), rng.standard_normal((20, 8))) for _ in range(5)])
    large = frechet_distance(rng.standard_normal((4000, 8)), rng.standard_normal((4000, 8)))
    assert large < 0.05 < 1.0 < small


def test_frechet_distance_rejects_unusable_input():
    with pytest.raises(ValueError, match="at least 2 samples"):
        frechet_distance(np.zeros((1, 4)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="same feature layer"):
        frechet_distance(np.zeros((5, 4)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.full((5, 4), np.nan), np.zeros((5, 4)))


def test_frechet_distance_per_group_matches_whole_set_function_and_skips_small_groups():
    rng = np.random.default_rng(6)
    real = rng.standard_normal((90, 4))
    fake = rng.standard_normal((61, 4))
    real_groups = np.array(["user_00"] * 40 + ["user_01"] * 40 + ["user_02"] * 10)
    fake_groups = np.array(["user_00"] * 30 + ["user_01"] * 30 + ["user_02"] * 1)
    fake[30:60] += 3.0  # user_01's samples are off by 3 in every feature: FD ≈ 4 · 3² = 36
    result = frechet_distance_per_group(real, real_groups, fake, fake_groups)
    assert list(result) == ["user_00", "user_01"]  # user_02 has 1 fake sample: skipped
    assert result["user_00"] == pytest.approx(frechet_distance(real[:40], fake[:30]), rel=1e-12)
    assert result["user_01"] == pytest.approx(frechet_distance(real[40:80], fake[30:60]), rel=1e-12)
    assert result["user_00"] < 1.0
    assert result["user_01"] == pytest.approx(36.0, rel=0.2)
    integer_keys = frechet_distance_per_group(
        real, torch.arange(3).repeat_interleave(30), fake, np.repeat([0, 1], [31, 30])
    )
    assert list(integer_keys) == [0, 1] and all(type(key) is int for key in integer_keys)


# --------------------------------------------------------------------------------------------
# Nearest neighbours
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("exclude_self", [False, True])
def test_nearest_distances_match_brute_force_across_blocks(monkeypatch, exclude_self):
    monkeypatch.setattr(metrics, "_DISTANCE_BLOCK_ENTRIES", 7 * 50)  # 7-row blocks: 8 of them
    rng = np.random.default_rng(7)
    references = rng.standard_normal((50, 5))
    queries = references if exclude_self else rng.standard_normal((53, 5))
    full = scipy_cdist(queries, references)
    if exclude_self:
        np.fill_diagonal(full, np.inf)
    distances, indices = nearest_distances(queries, references, exclude_self=exclude_self)
    np.testing.assert_array_equal(indices, full.argmin(axis=1))
    np.testing.assert_allclose(distances, full.min(axis=1), rtol=1e-10)
    if exclude_self:
        assert (indices != np.arange(50)).all()


# --------------------------------------------------------------------------------------------
# Improved precision and recall
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 3, 5])
def test_precision_recall_of_identical_sets_is_one(k):
    features = np.random.default_rng(8).standard_normal((200, 16))
    assert precision_recall(features, features, k=k) == {"precision": 1.0, "recall": 1.0}


def test_precision_recall_of_disjoint_clusters_is_zero():
    rng = np.random.default_rng(9)
    real, fake = rng.standard_normal((150, 8)), rng.standard_normal((120, 8)) + 100.0
    assert precision_recall(real, fake) == {"precision": 0.0, "recall": 0.0}


@pytest.mark.parametrize("k, recall", [(1, 0.51), (3, 0.53)])
def test_precision_recall_partial_overlap_on_a_lattice(k, recall):
    # Real: points 0..99 on a line. Fake: copies of 0..49, plus 50 points far away.
    # Precision: the 50 copies sit inside the real manifold, the far half does not → 0.5.
    # Recall: fake radii are 1 (k=1) or 3 at the copy of 49 (k=3: neighbours 48, 47, 46), so the
    # fake manifold reaches real points up to 50 (k=1) or 52 (k=3) → 51 or 53 of 100.
    real = np.stack([np.arange(100.0), np.zeros(100)], axis=1)
    far = np.stack([1000.0 + np.arange(50.0), np.full(50, 1000.0)], axis=1)
    fake = np.concatenate([real[:50], far])
    assert precision_recall(real, fake, k=k) == {"precision": 0.5, "recall": recall}


def test_precision_recall_rejects_k_without_enough_samples():
    with pytest.raises(ValueError, match="more than k = 3"):
        precision_recall(np.zeros((3, 2)), np.zeros((10, 2)), k=3)


# --------------------------------------------------------------------------------------------
# Memorisation
# --------------------------------------------------------------------------------------------


def test_memorisation_flags_planted_copies_and_fresh_samples_at_the_quantile_rate():
    rng = np.random.default_rng(10)
    train, val, fresh = (rng.standard_normal((2000, 8)) for _ in range(3))
    copied, near_copied = [3, 17, 42], [5, 999]
    planted = np.concatenate([train[copied], train[near_copied] + 1e-3 * rng.standard_normal((2, 8))])
    samples = np.concatenate([fresh, planted])  # planted rows are 2000..2004
    result = memorisation(samples, train, val, quantile=0.05)

    assert result["quantile"] == 0.05
    assert result["threshold"] == pytest.approx(np.quantile(result["val_to_train"], 0.05))
    assert result["threshold"] > 0.1  # typical nearest-training distance in 8-D is ~1
    planted_rows = np.arange(2000, 2005)
    assert np.isin(planted_rows, result["flagged"]).all()
    fresh_rate = np.mean(result["sample_to_train"][:2000] < result["threshold"])
    assert 0.03 < fresh_rate < 0.07  # same distribution as val: about the 5 % quantile
    assert result["fraction_flagged"] == pytest.approx((fresh_rate * 2000 + 5) / 2005)

    closest = result["closest_pairs"]
    assert len(closest) == 8
    # Exact copies (distance 0) first, then the near-copies (distance ~3e-3), then fresh samples (~0.4).
    assert sorted((i, j) for i, j, _ in closest[:3]) == [(2000, 3), (2001, 17), (2002, 42)]
    assert sorted((i, j) for i, j, _ in closest[3:5]) == [(2003, 5), (2004, 999)]
    assert closest[5][2] > 0.1
    assert all(d < 1e-6 for _, _, d in closest[:3]) and all(d < 1e-2 for _, _, d in closest[3:5])
    assert [d for _, _, d in closest] == sorted(d for _, _, d in closest)
    np.testing.assert_array_equal(result["nearest_train"][planted_rows], copied + near_copied)


def test_memorisation_default_quantile_flags_few_fresh_samples():
    rng = np.random.default_rng(11)
    train, val, fresh = (rng.standard_normal((2000, 8)) for _ in range(3))
    result = memorisation(torch.from_numpy(fresh), train, val)
    assert result["quantile"] == 0.01
    assert result["fraction_flagged"] <= 0.03
    assert result["sample_to_train"].shape == (2000,) and result["val_to_train"].shape == (2000,)


# --------------------------------------------------------------------------------------------
# Classification
# --------------------------------------------------------------------------------------------


def test_classification_metrics_on_a_hand_counted_example():
    true = [0, 0, 1, 1, 1, 2]
    predicted = [0, 1, 1, 1, 0, 2]
    result = classification_metrics(torch.tensor(true), np.array(predicted), num_classes=4)
    assert result["accuracy"] == pytest.approx(4 / 6)
    assert result["per_class_accuracy"] == pytest.approx([0.5, 2 / 3, 1.0, None])
    assert result["per_class_accuracy"][3] is None  # class 3 never occurs as a true label
    assert result["confusion"] == [[1, 1, 0, 0], [1, 2, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]


def test_classification_metrics_rejects_out_of_range_labels():
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        classification_metrics([0, 1, 3], [0, 1, 2], num_classes=3)
