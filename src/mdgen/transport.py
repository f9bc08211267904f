"""Rectified flow (linear interpolant, velocity prediction) as LightningDiT trains and samples it.

Pure math: no I/O, no global state beyond torch's RNG when no generator is given.

Conventions, from the official code (hustvl/LightningDiT @ 2725fed, `transport/`), which inherits
SiT's `Linear` path with `prediction: velocity`:

- Time runs from noise to data: t = 0 is pure noise, t = 1 is data
  (`path.py` ICPlan: alpha_t = t on the data, sigma_t = 1 - t on the noise).
- Path and target: x_t = t · data + (1 - t) · noise, and the model regresses the constant
  velocity v = d x_t / dt = data - noise (`path.py` compute_mu_t, compute_ut).
- No eps anywhere: for a velocity model on the linear path `create_transport` sets
  train_eps = sample_eps = 0, so training t covers (0, 1) and the sampler runs from exactly 0 to
  exactly 1 (`transport/__init__.py` 55-57, `transport.py` check_interval).
- Training t: logit-normal, t = sigmoid(z) with z ~ N(0, 1), when `use_lognorm` (the official
  config's choice); uniform on [0, 1) otherwise. No clipping (`transport.py` sample).
- Loss: per sample, the MSE averaged over all non-batch dimensions, plus, when `use_cosine_loss`,
  1 - cosine similarity over the channel dimension (dim 1) averaged over the remaining positions;
  each term is averaged over the batch and the two are added with weight 1
  (`transport.py` training_losses, `train.py` 201-206).
- Sampler: the probability-flow ODE dx/dt = v(x, t) integrated forward from noise (t = 0) to data
  (t = 1) with a fixed-step torchdiffeq solver on the grid linspace(0, 1, num_sampling_steps),
  i.e. num_sampling_steps *points* (our `num_steps`) and num_sampling_steps - 1 steps; the grid is then shifted
  point-wise by t' = s·t / (1 + (s - 1)·t) (`integrators.py` ode). atol/rtol are ignored by
  fixed-step solvers. The official configs use Euler with 250 points, timestep_shift 0.3.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

VelocityFn = Callable[[Tensor, Tensor], Tensor]
SAMPLING_METHODS = ("euler", "heun")


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def sample_timesteps(
    batch_size: int,
    *,
    use_lognorm: bool,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Training times t, shape (batch_size,), float32, 0 = noise and 1 = data.

    Logit-normal (sigmoid of a standard normal) when `use_lognorm`, else uniform on [0, 1).
    """
    if use_lognorm:
        # lognormal t-sampling, LightningDiT train config: concentrates t around 0.5, where the
        # velocity is hardest to predict; the official code has no eps or clipping here.
        return torch.sigmoid(torch.randn(batch_size, generator=generator, device=device))
    return torch.rand(batch_size, generator=generator, device=device)


def _expand_like(t: Tensor, x: Tensor) -> Tensor:
    """(B,) -> (B, 1, ..., 1), broadcastable against x."""
    return t.reshape(t.shape[0], *([1] * (x.ndim - 1)))


def interpolate(data: Tensor, noise: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """The point x_t on the straight path from `noise` (t = 0) to `data` (t = 1), and its velocity.

    data, noise: (B, ...); t: (B,). Returns x_t = t·data + (1 - t)·noise and the target
    velocity data - noise, both (B, ...).
    """
    if data.shape != noise.shape:
        raise ValueError(f"data and noise must have the same shape, got {tuple(data.shape)} and {tuple(noise.shape)}")
    if t.shape != (data.shape[0],):
        raise ValueError(f"t must hold one time per sample, shape ({data.shape[0]},), got {tuple(t.shape)}")
    t = _expand_like(t, data)
    return t * data + (1 - t) * noise, data - noise


def _mean_over_non_batch(x: Tensor) -> Tensor:
    return x.mean(dim=tuple(range(1, x.ndim))) if x.ndim > 1 else x


def training_loss(
    model_fn: Callable[..., Tensor],
    data: Tensor,
    model_kwargs: dict | None = None,
    *,
    use_lognorm: bool = True,
    use_cosine_loss: bool = True,
    generator: torch.Generator | None = None,
    t: Tensor | None = None,
    noise: Tensor | None = None,
) -> dict[str, Tensor]:
    """The official rectified-flow loss on a batch of clean `data` (B, C, ...).

    `model_fn(x_t, t, **model_kwargs)` predicts the velocity. `t` (B,) and `noise` (like data)
    are drawn when not given; pass both for a deterministic loss (e.g. validation on a fixed grid).
    Returns batch means: "mse", "cosine" (1 - cosine similarity over channels, always reported)
    and "loss" = mse + cosine when `use_cosine_loss`, else mse.
    """
    model_kwargs = {} if model_kwargs is None else model_kwargs
    if t is None:
        t = sample_timesteps(data.shape[0], use_lognorm=use_lognorm, generator=generator, device=data.device)
    # The official code moves t to the data's dtype and device before the model sees it.
    t = t.to(data)
    if noise is None:
        noise = torch.randn(data.shape, generator=generator, device=data.device, dtype=data.dtype)
    x_t, target = interpolate(data, noise, t)

    prediction = model_fn(x_t, t, **model_kwargs)
    if prediction.shape != target.shape:
        raise ValueError(
            f"the model must return a velocity shaped like its input {tuple(target.shape)}, "
            f"got {tuple(prediction.shape)}"
        )

    mse = _mean_over_non_batch((prediction - target) ** 2)  # (B,)
    # Cosine over dim 1, the channels of a latent (B, C, H, W): one direction per position.
    cosine = _mean_over_non_batch(1 - F.cosine_similarity(prediction, target, dim=1))  # (B,)
    loss = mse.mean() + cosine.mean() if use_cosine_loss else mse.mean()
    return {"loss": loss, "mse": mse.mean(), "cosine": cosine.mean()}


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------


def shift_timesteps(t: Tensor, shift: float) -> Tensor:
    """The official time shift t' = s·t / (1 + (s - 1)·t), applied to times where 0 = noise.

    Endpoints stay fixed and the map is monotone. s < 1 pulls points towards the noise end, so a
    grid spends more (smaller) steps at high noise; s > 1 pushes them towards the data end. The
    official s = 0.3 is therefore SD3/FLUX's shift 1/0.3 ≈ 3.3 written in the opposite time
    direction (with u = 1 - t the noise level, u' = (u/s) / (1 + (1/s - 1)·u)).
    """
    if not shift > 0:
        raise ValueError(
            f"timestep shift must be > 0 (1 means no shift), got {shift}; the official "
            "sampler's timestep_shift 0 also means no shift, so pass 1.0 for it"
        )
    # Same map written as s·t / (s·t + 1 - t): the endpoints come out exactly 0 and 1.
    return shift * t / (shift * t + (1 - t))


def sampling_timesteps(
    num_steps: int, *, shift: float = 1.0, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> Tensor:
    """The grid the official ODE sampler walks: num_steps times from 0 (noise) to 1 (data).

    As in the official `integrators.ode`, `num_steps` counts grid points, both ends included: it is
    the config's `num_sampling_steps`, and a solver takes num_steps - 1 steps. No sample_eps.
    """
    if num_steps < 2:
        raise ValueError(
            f"num_steps (the official num_sampling_steps) counts the points of the time grid, "
            f"both ends included, so it must be >= 2 (one step); got {num_steps}"
        )
    grid = torch.linspace(0.0, 1.0, num_steps, dtype=torch.float64)
    return shift_timesteps(grid, shift).to(device=device, dtype=dtype)


# Classifier-free guidance lives in the model (LightningDiT.forward_with_cfg), which receives the
# same t the sampler passes here: the shifted grid time in [0, 1] with 0 = noise, one value per
# row. The official model applies guidance only when t[0] >= cfg_interval_start, i.e. it is off
# on the high-noise start of the trajectory t < cfg_interval_start. Because the shift is applied
# to the grid before the model sees t, s = 0.3 with cfg_interval_start = 0.11 leaves the first
# ~29% of the steps unguided (t' < 0.11 <=> t < 0.11 / (0.3 + 0.7·0.11) ≈ 0.29). Heun's second
# evaluation in a step sees the step's end time and is gated by it.
@torch.no_grad()
def sample_ode(
    velocity_fn: VelocityFn, noise: Tensor, *, num_steps: int, method: str = "euler", shift: float = 1.0
) -> Tensor:
    """Integrate dx/dt = velocity_fn(x, t) from `noise` at t = 0 to data at t = 1.

    `velocity_fn(x, t)` gets x (B, ...) and t (B,) filled with the current grid time. The grid is
    `sampling_timesteps(num_steps, shift=shift)`: num_steps points, num_steps - 1 steps. Methods,
    as the torchdiffeq fixed-grid solvers the official sampler calls: "euler" (x += dt·v(x, t0),
    1 evaluation per step) and "heun" (torchdiffeq "heun2", explicit trapezoid, 2 evaluations per
    step, the last step included). Deterministic for given noise; returns the final x only (float32 for half-precision
    noise, else noise's dtype).
    """
    if method not in SAMPLING_METHODS:
        raise ValueError(f"unknown sampling method {method!r}; expected one of {SAMPLING_METHODS}")
    # At least float32 for the grid and the state: bfloat16 would repeat times on a 250-point grid
    # and lose the small steps' increments.
    times = sampling_timesteps(
        num_steps, shift=shift, device=noise.device, dtype=torch.promote_types(noise.dtype, torch.float32)
    )
    batch = noise.shape[0]

    def velocity(x: Tensor, t: Tensor) -> Tensor:
        v = velocity_fn(x, t.expand(batch).contiguous())
        if v.shape != x.shape:
            raise ValueError(f"velocity_fn must return a velocity shaped like x {tuple(x.shape)}, got {tuple(v.shape)}")
        return v

    x = noise.to(times.dtype)
    for t_start, t_end in zip(times[:-1], times[1:]):
        dt = t_end - t_start
        v_start = velocity(x, t_start)
        if method == "euler":
            x = x + dt * v_start
        else:
            v_end = velocity(x + dt * v_start, t_end)
            x = x + dt * 0.5 * (v_start + v_end)
    return x
