"""Rectified flow: conventions against the official code, losses by hand, and the ODE sampler on a
Gaussian data distribution whose exact velocity field and flow map are known in closed form."""

import math

import pytest
import torch

from mdgen.transport import (
    interpolate,
    sample_ode,
    sample_timesteps,
    sampling_timesteps,
    shift_timesteps,
    training_loss,
)

# ---------------------------------------------------------------------------------------------
# Conventions
# ---------------------------------------------------------------------------------------------


def test_interpolate_runs_from_noise_at_0_to_data_at_1():
    gen = torch.Generator().manual_seed(0)
    data, noise = torch.randn(3, 4, 5, 5, generator=gen), torch.randn(3, 4, 5, 5, generator=gen)

    x_0, _ = interpolate(data, noise, torch.zeros(3))
    x_1, _ = interpolate(data, noise, torch.ones(3))

    assert torch.equal(x_0, noise)
    assert torch.equal(x_1, data)


def test_interpolate_matches_the_official_linear_path_and_target():
    gen = torch.Generator().manual_seed(1)
    data, noise = torch.randn(4, 3, 2, 2, generator=gen), torch.randn(4, 3, 2, 2, generator=gen)
    t = torch.tensor([0.1, 0.5, 0.7, 0.93])

    x_t, target = interpolate(data, noise, t)

    # LightningDiT transport/path.py, ICPlan: alpha_t, d_alpha_t = t, 1 (data = x1);
    # sigma_t, d_sigma_t = 1 - t, -1 (noise = x0); xt = alpha_t*x1 + sigma_t*x0, ut = d_alpha_t*x1 + d_sigma_t*x0.
    tt = t.view(4, 1, 1, 1)
    torch.testing.assert_close(x_t, tt * data + (1 - tt) * noise, rtol=0, atol=0)
    torch.testing.assert_close(target, 1 * data + (-1) * noise, rtol=0, atol=0)


def test_target_is_the_constant_velocity_along_the_path():
    gen = torch.Generator().manual_seed(2)
    data = torch.randn(5, 2, 3, dtype=torch.float64, generator=gen)
    noise = torch.randn(5, 2, 3, dtype=torch.float64, generator=gen)
    h = 1e-3
    for t0 in (0.0, 0.3, 0.8):
        t = torch.full((5,), t0, dtype=torch.float64)
        x_t, target = interpolate(data, noise, t)
        x_next, target_next = interpolate(data, noise, t + h)
        torch.testing.assert_close((x_next - x_t) / h, target, rtol=0, atol=1e-9)
        assert torch.equal(target, target_next)


# ---------------------------------------------------------------------------------------------
# Training times
# ---------------------------------------------------------------------------------------------

N_T = 200_000


def test_lognorm_timesteps_are_logit_normal_in_open_unit_interval():
    t = sample_timesteps(N_T, use_lognorm=True, generator=torch.Generator().manual_seed(0))
    assert t.shape == (N_T,) and t.dtype == torch.float32
    t = t.double()
    logit = torch.log(t) - torch.log1p(-t)

    assert t.min() > 0 and t.max() < 1
    # Standard errors on 200k samples: mean 0.21/sqrt(n) ≈ 5e-4 for t, 1/sqrt(n) ≈ 2.2e-3 for the logit.
    assert abs(t.mean() - 0.5) < 0.003
    assert abs(logit.mean()) < 0.012
    assert abs(logit.std() - 1) < 0.01
    assert abs(((logit - logit.mean()) ** 3).mean()) < 0.03  # symmetric
    assert abs(((logit - logit.mean()) ** 4).mean() - 3) < 0.06  # normal kurtosis
    # Logit-normal mass in the middle: P(|z| < logit(0.75)) = erf(log(3)/sqrt 2) ≈ 0.728, uniform gives 0.5.
    middle = ((t > 0.25) & (t < 0.75)).double().mean()
    assert abs(middle - math.erf(math.log(3) / math.sqrt(2))) < 0.005


def test_uniform_timesteps_when_lognorm_is_off():
    t = sample_timesteps(N_T, use_lognorm=False, generator=torch.Generator().manual_seed(0)).double()

    assert t.min() >= 0 and t.max() < 1
    assert abs(t.mean() - 0.5) < 0.003
    assert abs(t.var() - 1 / 12) < 0.002
    assert abs(((t > 0.25) & (t < 0.75)).double().mean() - 0.5) < 0.005


def test_timesteps_follow_the_generator():
    a = sample_timesteps(8, use_lognorm=True, generator=torch.Generator().manual_seed(3))
    b = sample_timesteps(8, use_lognorm=True, generator=torch.Generator().manual_seed(3))
    c = sample_timesteps(8, use_lognorm=True, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


# ---------------------------------------------------------------------------------------------
# Time shift and the sampling grid
# ---------------------------------------------------------------------------------------------


def test_shift_one_is_identity_and_endpoints_are_fixed():
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    assert torch.equal(shift_timesteps(t, 1.0), t)
    for s in (0.3, 0.5, 2.0, 3.0):
        shifted = shift_timesteps(t, s)
        assert shifted[0] == 0 and shifted[-1] == 1
        assert (shifted.diff() > 0).all()


def test_shift_matches_the_official_formula_and_direction():
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    # LightningDiT transport/integrators.py ode.compute_tm: s*t / (1 + (s-1)*t), applied to the grid points.
    for s in (0.3, 3.0):
        torch.testing.assert_close(shift_timesteps(t, s), s * t / (1 + (s - 1) * t))
    assert shift_timesteps(torch.tensor(0.5, dtype=torch.float64), 0.3).item() == pytest.approx(0.15 / 0.65)

    # s < 1 (the official 0.3) pulls interior points towards t = 0, the noise end: small steps at
    # high noise, large steps near the data. s > 1 does the opposite.
    grid = sampling_timesteps(250, shift=0.3, dtype=torch.float64)
    steps = grid.diff()
    assert (grid[1:-1] < torch.linspace(0, 1, 250, dtype=torch.float64)[1:-1]).all()
    # Step sizes at the ends scale by s and 1/s: a ratio of 1/s^2 ≈ 11 between the first and last step.
    assert steps[0] < steps[-1] / 10
    steps_up = sampling_timesteps(250, shift=3.0, dtype=torch.float64).diff()
    assert steps_up[0] > steps_up[-1] * 8


def test_shift_must_be_positive():
    with pytest.raises(ValueError, match="1.0"):
        shift_timesteps(torch.linspace(0, 1, 5), 0.0)


def test_sampling_grid_counts_points_from_noise_to_data():
    # LightningDiT transport/integrators.py ode: self.t = linspace(t0, t1, num_steps) with t0 = 0, t1 = 1
    # (sample_eps = 0 for a velocity model): num_steps points, num_steps - 1 solver steps.
    grid = sampling_timesteps(5)
    torch.testing.assert_close(grid, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]), rtol=0, atol=0)
    assert grid.dtype == torch.float32
    assert sampling_timesteps(250, shift=0.3).shape == (250,)
    with pytest.raises(ValueError, match=">= 2"):
        sampling_timesteps(1)


# ---------------------------------------------------------------------------------------------
# Training loss
# ---------------------------------------------------------------------------------------------


def test_loss_is_zero_for_the_exact_velocity_and_the_model_sees_the_path_point():
    gen = torch.Generator().manual_seed(5)
    data = torch.randn(4, 3, 4, 4, dtype=torch.float64, generator=gen)
    noise = torch.randn(4, 3, 4, 4, dtype=torch.float64, generator=gen)
    t = torch.tensor([0.0, 0.2, 0.6, 1.0], dtype=torch.float64)
    seen = {}

    def oracle(x_t, t_in, y):
        seen.update(x_t=x_t, t=t_in, y=y)
        return data - noise

    losses = training_loss(oracle, data, {"y": "labels"}, t=t, noise=noise)

    assert losses["mse"] == 0
    assert abs(losses["cosine"]) < 1e-12 and abs(losses["loss"]) < 1e-12
    torch.testing.assert_close(seen["x_t"], t.view(4, 1, 1, 1) * data + (1 - t.view(4, 1, 1, 1)) * noise)
    assert torch.equal(seen["t"], t) and seen["y"] == "labels"


def test_cosine_term_ignores_the_length_of_a_parallel_prediction():
    gen = torch.Generator().manual_seed(6)
    data = torch.randn(3, 4, 2, 2, dtype=torch.float64, generator=gen)
    noise = torch.zeros_like(data)  # target = data

    losses = training_loss(lambda x, t: 3 * data, data, t=torch.full((3,), 0.5, dtype=torch.float64), noise=noise)

    assert abs(losses["cosine"]) < 1e-12
    torch.testing.assert_close(losses["mse"], 4 * (data**2).mean())
    torch.testing.assert_close(losses["loss"], losses["mse"] + losses["cosine"])


def _two_sample_example():
    """(B=2, C=2, H=1, W=2): each sample has two positions, each position a 2-channel vector."""

    def batch(vectors):  # vectors[b][w] = (c0, c1)
        return torch.tensor(vectors, dtype=torch.float64).permute(0, 2, 1).unsqueeze(2)

    target = batch([[(1, 0), (0, 1)], [(1, 1), (2, 0)]])
    prediction = batch([[(0, 1), (0, 2)], [(-1, -1), (1, 1)]])
    return target, prediction


def test_loss_terms_and_reductions_by_hand():
    target, prediction = _two_sample_example()
    kwargs = dict(t=torch.tensor([0.3, 0.9], dtype=torch.float64), noise=torch.zeros_like(target))

    # Official (transport.py training_losses, train.py 201-206): per sample
    # mse = mean over (C, H, W) of squared error; cos = mean over (H, W) of 1 - cos over C; then batch means, summed.
    # Sample 0: squared errors (1, 1 | 0, 1) -> 3/4; cos: orthogonal -> 1, parallel -> 0 -> 1/2.
    # Sample 1: squared errors (4, 4 | 1, 1) -> 5/2; cos: opposite -> 2, 45 degrees -> 1 - 1/sqrt 2 -> (3 - 1/sqrt 2)/2.
    mse = (3 / 4 + 5 / 2) / 2
    cosine = (1 / 2 + (3 - 1 / math.sqrt(2)) / 2) / 2

    losses = training_loss(lambda x, t: prediction, target, **kwargs)
    assert losses["mse"].item() == pytest.approx(mse, abs=1e-12)
    assert losses["cosine"].item() == pytest.approx(cosine, abs=1e-12)
    assert losses["loss"].item() == pytest.approx(mse + cosine, abs=1e-12)

    without_cosine = training_loss(lambda x, t: prediction, target, use_cosine_loss=False, **kwargs)
    assert without_cosine["loss"].item() == pytest.approx(mse, abs=1e-12)


def test_loss_draws_t_and_noise_from_the_generator():
    data = torch.randn(6, 2, 3, 3)
    model = lambda x, t: x * t.view(-1, 1, 1, 1)  # noqa: E731
    a = training_loss(model, data, generator=torch.Generator().manual_seed(7))["loss"]
    b = training_loss(model, data, generator=torch.Generator().manual_seed(7))["loss"]
    c = training_loss(model, data, generator=torch.Generator().manual_seed(8))["loss"]
    assert a == b and a != c


def test_loss_rejects_a_prediction_of_the_wrong_shape():
    data = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match="shaped like its input"):
        training_loss(lambda x, t: x[:, :2], data)


# ---------------------------------------------------------------------------------------------
# Sampler on Gaussian data, where the answer is known
# ---------------------------------------------------------------------------------------------
#
# Data x1 ~ N(mu, Sigma), noise x0 ~ N(0, I), independent; x_t = t x1 + (1 - t) x0, v = x1 - x0.
# (x_t, v) is jointly Gaussian with
#   E[x_t] = t mu,  Cov(x_t) = S_t = t^2 Sigma + (1 - t)^2 I,
#   E[v] = mu,      Cov(v, x_t) = t Sigma - (1 - t) I,
# so the marginal (rectified-flow) velocity is the Gaussian conditional mean, affine in x:
#   v(x, t) = E[v | x_t = x] = mu + A_t (x - t mu),  A_t = (t Sigma - (1 - t) I) S_t^{-1}.
# Checks: v(x, 0) = mu - x = E[x1] - x0 and v(x, 1) = x = x1 - E[x0].
# A_t and S_t commute (both functions of Sigma) and d S_t / dt = 2 (t Sigma - (1 - t) I), so
# A_t = (1/2) S_t^{-1} dS_t/dt. With y = x - t mu the ODE is dy/dt = A_t y, solved by
# y(t) = S_t^{1/2} y(0) (S_0 = I): the exact flow map is x(t) = t mu + S_t^{1/2} x0, and at t = 1
#   x(1) = mu + Sigma^{1/2} x0  ~  N(mu, Sigma).

MU = torch.tensor([1.5, -2.0], dtype=torch.float64)
SIGMA = torch.tensor([[2.0, 0.8], [0.8, 0.5]], dtype=torch.float64)  # correlated, eigenvalues ≈ 2.37 and 0.13


def gaussian_velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Exact marginal velocity for N(MU, SIGMA) data: x (B, 2), t (B,) holding one time."""
    assert (t == t[0]).all()
    t = t[0]
    eye = torch.eye(2, dtype=torch.float64)
    s_t = t**2 * SIGMA + (1 - t) ** 2 * eye
    cross = t * SIGMA - (1 - t) * eye
    # Rows: A_t y = y A_t^T = y S_t^{-1} cross, since S_t and cross are symmetric.
    return MU + (x - t * MU) @ torch.linalg.solve(s_t, cross)


def exact_flow_map(noise: torch.Tensor) -> torch.Tensor:
    eigenvalues, eigenvectors = torch.linalg.eigh(SIGMA)
    sqrt_sigma = eigenvectors @ torch.diag(eigenvalues.sqrt()) @ eigenvectors.T
    return MU + noise @ sqrt_sigma.T


def assert_gaussian_moments(samples: torch.Tensor) -> None:
    """Mean and covariance of `samples` agree with MU and SIGMA within 5 standard errors."""
    n = len(samples)
    mean, cov = samples.mean(0), samples.T.cov()
    mean_se = (SIGMA.diagonal() / n).sqrt()
    # Var of a sample covariance entry of a Gaussian: (Sigma_ij^2 + Sigma_ii Sigma_jj) / n.
    cov_se = ((SIGMA**2 + SIGMA.diagonal()[:, None] * SIGMA.diagonal()[None, :]) / n).sqrt()
    assert ((mean - MU).abs() < 5 * mean_se).all(), (mean, MU)
    assert ((cov - SIGMA).abs() < 5 * cov_se).all(), (cov, SIGMA)


# 16k points: 32k float64 elements stay under torch's intra-op grain (32768), so the elementwise
# steps run single-threaded and the test stays fast on a busy machine; 5 standard errors still
# bound the moments to ~0.02 of SIGMA's entries.
N_SAMPLES = 16_000


def noise_points(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def test_gaussian_velocity_is_the_conditional_mean_of_the_target():
    # Monte-Carlo check of the derivation: regress v = x1 - x0 on x_t at t = 0.4.
    gen = torch.Generator().manual_seed(9)
    n, t = 200_000, 0.4
    x1 = MU + torch.randn(n, 2, dtype=torch.float64, generator=gen) @ torch.linalg.cholesky(SIGMA).T
    x0 = torch.randn(n, 2, dtype=torch.float64, generator=gen)
    x_t, v = interpolate(x1, x0, torch.full((n,), t, dtype=torch.float64))
    residual = v - gaussian_velocity(x_t, torch.full((n,), t, dtype=torch.float64))
    # The residual of a conditional mean has mean zero and is uncorrelated with x_t.
    assert residual.mean(0).abs().max() < 0.02
    assert (residual.T @ (x_t - x_t.mean(0)) / n).abs().max() < 0.02


def test_sampler_lands_on_the_data_distribution():
    noise = noise_points(N_SAMPLES, seed=10)
    # euler on 250 points: the official config's grid; its O(1/n) error is still visible point-wise.
    for method, points, max_error in (("heun", 51, 0.002), ("euler", 250, 0.05)):
        samples = sample_ode(gaussian_velocity, noise, num_steps=points, method=method)
        assert_gaussian_moments(samples)
        assert (samples - exact_flow_map(noise)).abs().max() < max_error


def test_sampler_evaluates_the_velocity_at_the_official_step_times():
    seen = {"euler": [], "heun": []}
    for method in seen:

        def velocity(x, t, method=method):
            assert t.shape == (3,) and (t == t[0]).all()
            seen[method].append(t[0].item())
            return torch.zeros_like(x)

        sample_ode(velocity, torch.zeros(3, 2), num_steps=5, method=method)
    # torchdiffeq fixed grid: euler evaluates at each step start (never at t = 1); heun2 (explicit
    # trapezoid) at start and end of every step, the last one included.
    assert seen["euler"] == [0.0, 0.25, 0.5, 0.75]
    assert seen["heun"] == [0.0, 0.25, 0.25, 0.5, 0.5, 0.75, 0.75, 1.0]


def test_heun_error_falls_quadratically_and_euler_linearly():
    noise = noise_points(64, seed=11)
    exact = exact_flow_map(noise)

    def errors(method):  # max error of the final point after 8, 16 and 32 steps (9, 17, 33 grid points)
        samples = [sample_ode(gaussian_velocity, noise, num_steps=steps + 1, method=method) for steps in (8, 16, 32)]
        return [(sample - exact).abs().max().item() for sample in samples]

    euler, heun = errors("euler"), errors("heun")
    for coarse, fine in zip(euler, euler[1:]):
        assert 1.6 < coarse / fine < 2.5, euler
    for coarse, fine in zip(heun, heun[1:]):
        assert 3.2 < coarse / fine < 5.0, heun
    assert heun[-1] < euler[-1] / 10


def test_shifted_grid_still_lands_on_the_data_distribution():
    noise = noise_points(N_SAMPLES, seed=12)
    exact = exact_flow_map(noise)
    for shift in (0.3, 3.0):
        samples = sample_ode(gaussian_velocity, noise, num_steps=65, method="heun", shift=shift)
        assert_gaussian_moments(samples)
        assert (samples - exact).abs().max() < 0.01
    # The shift changes only the grid: on a coarse grid (8 steps) the two results differ by more than
    # the fine-grid error above, and both are discretisations of the same map.
    coarse = [
        sample_ode(gaussian_velocity, noise[:64], num_steps=9, method="heun", shift=shift) for shift in (1.0, 0.3)
    ]
    assert (coarse[0] - coarse[1]).abs().max() > 0.02
    assert max((sample - exact[:64]).abs().max() for sample in coarse) < 0.1


def test_sampler_rejects_unknown_methods_and_bad_velocities():
    with pytest.raises(ValueError, match="euler"):
        sample_ode(gaussian_velocity, noise_points(2, 0), num_steps=3, method="dopri5")
    with pytest.raises(ValueError, match="shaped like x"):
        sample_ode(lambda x, t: x[:, :1], noise_points(2, 0), num_steps=3)


def test_sampler_integrates_half_precision_noise_in_float32():
    # Constant velocity 1 from 0 must arrive at exactly 1; a bfloat16 state drifts (≈ 0.977 on 250 points).
    x = sample_ode(lambda x, t: torch.ones_like(x), torch.zeros(2, 3, dtype=torch.bfloat16), num_steps=250)
    assert x.dtype == torch.float32
    torch.testing.assert_close(x, torch.ones(2, 3), rtol=0, atol=1e-6)
