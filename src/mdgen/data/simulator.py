"""Physics-based micro-Doppler simulator: people walking towards a 24 GHz radar.

Boulic–Thalmann gait kinematics drive twelve ellipsoid scatterers (head, torso, arms, legs,
feet); their ranges give a complex slow-time baseband signal, whose STFT is the spectrogram.
Every user has a fixed set of gait and body parameters (drawn once from a seed); every
recording adds its own jitter (speed, start phase, range, aspect angle, SNR).

Coordinates: the body frame has x forward (walking direction), y to the left, z up, lengths in
metres. Angles are in degrees where they come from the gait literature, radians in the math.
Facts and formulas: ../shared/design/simulator.md (Boulic et al. 1990; V.C. Chen, "The
Micro-Doppler Effect in Radar", ch. 5).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
from scipy.interpolate import PchipInterpolator

SPEED_OF_LIGHT = 299_792_458.0

# Segment lengths as fractions of body height (Boulic–Thalmann).
SEGMENT_FRACTIONS = {
    "head": 0.130,
    "shoulder_half_width": 0.1295,
    "torso": 0.288,
    "hip_half_width": 0.0955,
    "upper_leg": 0.245,
    "lower_leg": 0.246,
    "foot": 0.143,
    "upper_arm": 0.188,
    "lower_arm": 0.152,
}

# Equatorial radius of each segment's ellipsoid in metres (the torso radius is per user).
SEGMENT_RADII = {
    "head": 0.10,
    "upper_arm": 0.06,
    "lower_arm": 0.05,
    "upper_leg": 0.07,
    "lower_leg": 0.06,
    "foot": 0.05,
}

SCATTERERS = (
    "head",
    "torso",
    "upper_arm_right",
    "lower_arm_right",
    "upper_arm_left",
    "lower_arm_left",
    "upper_leg_right",
    "lower_leg_right",
    "foot_right",
    "upper_leg_left",
    "lower_leg_left",
    "foot_left",
)


# ----------------------------------------------------------------------------------------------
# Parameters
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Radar:
    """A monostatic CW/pulse-Doppler radar and the spectrogram it produces."""

    carrier_hz: float = 24e9
    # ±PRF/2 must hold 2v/λ for the fastest limb: feet reach 7 m/s in this model for the fastest
    # walkers (8.3 m/s at the corner of the parameter ranges), so 3 kHz (±9.4 m/s at 24 GHz).
    prf_hz: float = 3000.0
    duration_s: float = 4.0
    height_m: float = 1.0
    window_s: float = 0.16  # Kaiser window, β = 6
    overlap: float = 0.95
    dynamic_range_db: float = 40.0

    @property
    def wavelength(self) -> float:
        return SPEED_OF_LIGHT / self.carrier_hz

    @property
    def max_velocity(self) -> float:
        """Largest radial speed (m/s) that does not alias: f_D = 2v/λ must stay below PRF/2."""
        return self.prf_hz * self.wavelength / 4

    @property
    def num_samples(self) -> int:
        return int(round(self.duration_s * self.prf_hz))


@dataclass(frozen=True)
class User:
    """What makes one walker different from another (fixed for all of a user's recordings)."""

    height_m: float
    speed_mps: float
    cadence: float  # × steps per second at the same speed
    arm_swing: float  # × shoulder swing amplitude
    elbow_flexion: float  # × elbow flexion
    knee_peak_deg: float  # knee flexion in swing
    hip_amplitude: float  # × hip flexion amplitude
    left_right_ratio: float  # left-limb amplitude / right-limb amplitude
    left_phase: float  # left-limb phase in cycles (0.5 = symmetric; else a limp)
    torso_radius_m: float
    proportions: dict[str, float] = field(default_factory=dict)  # segment → length factor

    def length(self, segment: str) -> float:
        return SEGMENT_FRACTIONS[segment] * self.height_m * self.proportions.get(segment, 1.0)

    @property
    def leg_length(self) -> float:
        """Ht of Boulic–Thalmann: upper plus lower leg."""
        return self.length("upper_leg") + self.length("lower_leg")


@dataclass(frozen=True)
class Recording:
    """One walk in front of the radar, and how this walk's gait departs from the user's usual one."""

    speed_mps: float
    start_phase: float  # gait phase at t = 0, in cycles
    range_m: float  # range at the end of the recording (closest point)
    aspect_deg: float  # walking direction against the line of sight
    snr_db: float
    # Day-to-day variation of the gait (footwear, mood, carrying something): factors on the
    # user's own values, and an offset in degrees for the knee.
    cadence: float = 1.0
    arm_swing: float = 1.0
    elbow_flexion: float = 1.0
    hip_amplitude: float = 1.0
    knee_offset_deg: float = 0.0


def draw_user(rng: np.random.Generator) -> User:
    """Per-user parameters, uniform over the ranges of simulator.md."""
    u = rng.uniform
    return User(
        height_m=u(1.50, 1.95),
        speed_mps=u(0.9, 1.6),
        cadence=u(0.9, 1.1),
        arm_swing=u(0.5, 1.5),
        elbow_flexion=u(0.7, 1.3),
        knee_peak_deg=u(60.0, 80.0),
        hip_amplitude=u(0.85, 1.15),
        left_right_ratio=u(0.85, 1.15),
        left_phase=0.5 + u(-0.03, 0.03),
        torso_radius_m=u(0.12, 0.20),
        proportions={name: u(0.97, 1.03) for name in SEGMENT_FRACTIONS},
    )


def draw_recording(user: User, rng: np.random.Generator, gait_variability: float = 1.0) -> Recording:
    """Per-recording jitter around a user's own walk.

    `gait_variability` scales the day-to-day variation of the gait; it sets how hard the users
    are to tell apart (0: every walk of a user has the same gait, only speed ±5 % and geometry
    change; 1: the default, tuned so that a small CNN identifies users well but not perfectly).
    """
    u = rng.uniform
    v = gait_variability
    return Recording(
        speed_mps=user.speed_mps * u(0.95, 1.05),
        start_phase=u(0.0, 1.0),
        range_m=u(2.0, 8.0),
        aspect_deg=u(-20.0, 20.0),
        snr_db=u(10.0, 30.0),
        cadence=1 + v * u(-0.05, 0.05),
        arm_swing=1 + v * u(-0.25, 0.25),
        elbow_flexion=1 + v * u(-0.2, 0.2),
        hip_amplitude=1 + v * u(-0.1, 0.1),
        knee_offset_deg=v * u(-5.0, 5.0),
    )


def walker(user: User, recording: Recording) -> User:
    """The user as they walk in this recording: their gait with the day's variation applied."""
    return dataclasses.replace(
        user,
        cadence=user.cadence * recording.cadence,
        arm_swing=user.arm_swing * recording.arm_swing,
        elbow_flexion=user.elbow_flexion * recording.elbow_flexion,
        hip_amplitude=user.hip_amplitude * recording.hip_amplitude,
        knee_peak_deg=user.knee_peak_deg + recording.knee_offset_deg,
    )


# ----------------------------------------------------------------------------------------------
# Gait kinematics (Boulic–Thalmann)
# ----------------------------------------------------------------------------------------------


def cycle_timing(leg_length: float, speed: float, cadence: float = 1.0) -> tuple[float, float]:
    """Cycle duration dc (s) and relative support duration ds/dc for a walking speed."""
    rv = speed / leg_length  # relative velocity, valid up to about 3
    rlc = 1.346 * np.sqrt(rv)  # relative cycle length, in leg lengths
    dc = rlc / rv / cadence
    ds = 0.752 * dc - 0.143
    return dc, ds / dc


def _periodic_pchip(points: list[tuple[float, float]], t: np.ndarray) -> np.ndarray:
    """Shape-preserving spline through control points repeated with period 1, at phases t."""
    # A phase given twice (e.g. −0.1 and 0.9) is one knot of the periodic curve.
    knots = sorted({round(p % 1.0, 9): v for p, v in points}.items())
    ts = np.array([p + k for k in (-1, 0, 1) for p, _ in knots])
    vs = np.array([v for _ in (-1, 0, 1) for _, v in knots])
    return PchipInterpolator(ts, vs)(np.mod(t, 1.0))


def joint_angles(t: np.ndarray, user: User, rv: float, support: float, amplitude: float = 1.0) -> dict[str, np.ndarray]:
    """Flexion angles (degrees) of one body side at normalised cycle phases t ∈ [0, 1).

    t = 0 is this side's heel strike; positive angles move the limb forward (hip, shoulder),
    bend it (knee, elbow) or lift the toes (ankle). `amplitude` scales every angle about its
    cycle mean (the left/right asymmetry of a limp).
    """
    swing = 9.88 * rv * user.arm_swing
    curves = {
        "hip": lambda t: _periodic_pchip([(-0.1, 25.0), (0.5, -15.0), (0.9, 25.0)], t),
        "knee": lambda t: _periodic_pchip([(0.17, 3.0), (0.4, 3.0), (0.75, user.knee_peak_deg), (1.0, 3.0)], t),
        "ankle": lambda t: _periodic_pchip([(0.0, -3.0), (0.08, -18.0), (0.5, 8.0), (support, -20.0), (0.85, -3.0)], t),
        # The arm swings against the leg of the same side: backwards at this side's heel strike.
        "shoulder": lambda t: 3.0 - swing / 2 - swing * np.cos(2 * np.pi * t),
        # Elbow flexion grows with speed and peaks when the arm is in front.
        "elbow": lambda t: user.elbow_flexion * (15.0 + 10.0 * rv * (1 - np.cos(2 * np.pi * t)) / 2),
    }
    scale = {"hip": amplitude * user.hip_amplitude}
    one_cycle = np.linspace(0.0, 1.0, 256, endpoint=False)
    angles = {}
    for name, curve in curves.items():
        mean = curve(one_cycle).mean()
        angles[name] = mean + scale.get(name, amplitude) * (curve(t) - mean)
    return angles


def _rotation(axis: str, degrees: np.ndarray) -> np.ndarray:
    """Rotation matrices (T, 3, 3) about a body axis."""
    a = np.radians(degrees)
    c, s, one, zero = np.cos(a), np.sin(a), np.ones_like(a), np.zeros_like(a)
    rows = {
        "x": [[one, zero, zero], [zero, c, -s], [zero, s, c]],
        "y": [[c, zero, s], [zero, one, zero], [-s, zero, c]],
        "z": [[c, -s, zero], [s, c, zero], [zero, zero, one]],
    }[axis]
    return np.stack([np.stack(r, axis=-1) for r in rows], axis=-2)


def _sagittal(degrees: np.ndarray) -> np.ndarray:
    """Unit vectors (T, 3) hanging down and turned forward by an angle in the x-z plane."""
    a = np.radians(degrees)
    return np.stack([np.sin(a), np.zeros_like(a), -np.cos(a)], axis=-1)


def body_segments(times: np.ndarray, user: User, recording: Recording) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """End points (start, end), each (T, 3) in the body frame, of every scatterer at `times` (s).

    The body frame moves with the walker: its origin advances at the mean walking speed, so
    the returned positions include only the oscillations of the gait on top of it.
    """
    user = walker(user, recording)
    ht = user.leg_length
    rv = recording.speed_mps / ht
    dc, support = cycle_timing(ht, recording.speed_mps, user.cadence)
    t = times / dc + recording.start_phase  # gait phase in cycles

    # Translations of the spine's origin (in leg lengths) and pelvis rotations (degrees).
    av = 0.015 * rv
    vertical = -av + av * np.sin(2 * np.pi * (2 * t - 0.35))
    lateral = -0.032 * np.sin(2 * np.pi * (t - 0.1))
    phi = 0.625 - support
    forward = -0.021 * np.sin(2 * np.pi * (2 * t + 2 * phi))
    tilt = -2.0 + 2.0 * np.sin(2 * np.pi * (2 * t - 0.1))
    roll = 1.66 * rv * np.sin(2 * np.pi * (t - 0.1))
    torsion = -4.0 * rv * np.cos(2 * np.pi * t)

    pelvis = np.stack([forward * ht, lateral * ht, ht + vertical * ht], axis=-1)
    pelvis_rot = _rotation("z", torsion) @ _rotation("y", tilt) @ _rotation("x", roll)
    # The thorax turns against the pelvis, so the shoulders counter-rotate.
    thorax_rot = _rotation("z", -torsion) @ _rotation("y", tilt)
    up = np.array([0.0, 0.0, 1.0])
    neck = pelvis + thorax_rot @ (up * user.length("torso"))
    head_top = neck + up * user.length("head")

    sides = {
        "right": (-1.0, joint_angles(np.mod(t, 1.0), user, rv, support)),
        "left": (1.0, joint_angles(np.mod(t - user.left_phase, 1.0), user, rv, support, user.left_right_ratio)),
    }
    segments = {"head": (neck, head_top), "torso": (pelvis, neck)}
    for side, (lateral_sign, angles) in sides.items():
        hip = pelvis + pelvis_rot @ np.array([0.0, lateral_sign * user.length("hip_half_width"), 0.0])
        knee = hip + user.length("upper_leg") * _sagittal(angles["hip"])
        shank = angles["hip"] - angles["knee"]
        ankle = knee + user.length("lower_leg") * _sagittal(shank)
        toe = ankle + user.length("foot") * _sagittal(shank + 90.0 + angles["ankle"])
        # The right arm swings with the left leg: it takes the other side's shoulder angles.
        arm = sides["left" if side == "right" else "right"][1]
        shoulder = neck + thorax_rot @ np.array([0.0, lateral_sign * user.length("shoulder_half_width"), 0.0])
        elbow = shoulder + user.length("upper_arm") * _sagittal(arm["shoulder"])
        wrist = elbow + user.length("lower_arm") * _sagittal(arm["shoulder"] + arm["elbow"])
        segments |= {
            f"upper_leg_{side}": (hip, knee),
            f"lower_leg_{side}": (knee, ankle),
            f"foot_{side}": (ankle, toe),
            f"upper_arm_{side}": (shoulder, elbow),
            f"lower_arm_{side}": (elbow, wrist),
        }
    return {name: segments[name] for name in SCATTERERS}


def world_segments(user: User, recording: Recording, radar: Radar) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Scatterer end points in radar coordinates (radar at the origin, ground at z = -height).

    The walker approaches along a straight line at `aspect_deg` to the line of sight and ends
    the recording `range_m` in front of the radar.
    """
    times = np.arange(radar.num_samples) / radar.prf_hz
    aspect = np.radians(recording.aspect_deg)
    heading = np.array([-np.cos(aspect), -np.sin(aspect), 0.0])  # towards the radar
    left = np.array([-heading[1], heading[0], 0.0])
    body_to_world = np.stack([heading, left, [0.0, 0.0, 1.0]], axis=1)
    end = np.array([recording.range_m, 0.0, -radar.height_m])
    origin = end + np.outer(times - radar.duration_s, recording.speed_mps * heading)
    return {
        name: (origin + start @ body_to_world.T, origin + stop @ body_to_world.T)
        for name, (start, stop) in body_segments(times, user, recording).items()
    }


# ----------------------------------------------------------------------------------------------
# Radar return and spectrogram
# ----------------------------------------------------------------------------------------------


def ellipsoid_rcs(a: float, c: np.ndarray, cos_theta: np.ndarray) -> np.ndarray:
    """RCS of a spheroid (semi-axes a = b, c along its axis) seen at angle θ from that axis.

    σ = π a²b²c² / (a² sin²θ cos²φ + b² sin²θ sin²φ + c² cos²θ)², which for a = b no longer
    depends on φ.
    """
    sin2 = 1.0 - cos_theta**2
    return np.pi * a**4 * c**2 / (a**2 * sin2 + c**2 * cos_theta**2) ** 2


def segment_radius(name: str, user: User) -> float:
    if name == "torso":
        return user.torso_radius_m
    return SEGMENT_RADII[name.removesuffix("_left").removesuffix("_right")]


def scatterer_returns(
    user: User, recording: Recording, radar: Radar, scatterers: tuple[str, ...] = SCATTERERS
) -> tuple[np.ndarray, np.ndarray]:
    """Range R_k[n] (m) and RCS σ_k[n] (m²) of each scatterer centre, both (K, T)."""
    ranges, rcs = [], []
    for name, (start, stop) in world_segments(user, recording, radar).items():
        if name not in scatterers:
            continue
        centre = (start + stop) / 2
        axis = stop - start
        half_length = np.linalg.norm(axis, axis=-1) / 2
        distance = np.linalg.norm(centre, axis=-1)
        cos_theta = np.einsum("ij,ij->i", axis, centre) / (2 * half_length * distance)
        ranges.append(distance)
        rcs.append(ellipsoid_rcs(segment_radius(name, user), half_length, cos_theta))
    return np.stack(ranges), np.stack(rcs)


def baseband(
    user: User,
    recording: Recording,
    radar: Radar,
    rng: np.random.Generator | None = None,
    scatterers: tuple[str, ...] = SCATTERERS,
) -> np.ndarray:
    """Complex slow-time signal s[n] = Σ_k √σ_k exp(−j 4π R_k[n] / λ) (+ noise when rng is given)."""
    return _sum_returns(*scatterer_returns(user, recording, radar, scatterers), radar, recording.snr_db, rng)


def _sum_returns(ranges, rcs, radar: Radar, snr_db: float, rng: np.random.Generator | None) -> np.ndarray:
    signal = (np.sqrt(rcs) * np.exp(-4j * np.pi * ranges / radar.wavelength)).sum(axis=0)
    if rng is not None:
        noise_power = np.mean(np.abs(signal) ** 2) / 10 ** (snr_db / 10)
        noise = rng.standard_normal((2, signal.size))
        signal = signal + np.sqrt(noise_power / 2) * (noise[0] + 1j * noise[1])
    return signal


def radial_speed(ranges: np.ndarray, radar: Radar) -> float:
    """Largest speed (m/s) along the line of sight among scatterer ranges (K, T)."""
    return float(np.abs(np.diff(ranges, axis=-1)).max() * radar.prf_hz)


def spectrogram_db(signal: np.ndarray, radar: Radar) -> tuple[np.ndarray, np.ndarray]:
    """STFT power in dB, rows ordered from +PRF/2 (top) to −PRF/2, and the rows' Doppler (Hz).

    Kaiser window (β = 6), zero-padded to at least twice the window length.
    """
    window_len = int(round(radar.window_s * radar.prf_hz))
    hop = max(1, int(round(window_len * (1 - radar.overlap))))
    nfft = 1 << int(np.ceil(np.log2(2 * window_len)))
    frames = np.lib.stride_tricks.sliding_window_view(signal, window_len)[::hop]
    spectrum = np.fft.fft(frames * np.kaiser(window_len, 6.0), n=nfft, axis=1)
    power_db = 20 * np.log10(np.abs(np.fft.fftshift(spectrum, axes=1)) + 1e-12)
    doppler = np.fft.fftshift(np.fft.fftfreq(nfft, 1 / radar.prf_hz))
    # Time runs left to right, positive Doppler (approaching) at the top.
    return power_db.T[::-1], doppler[::-1]


def normalise_db(power_db: np.ndarray, dynamic_range_db: float) -> np.ndarray:
    """Clip to (max − dynamic range) and scale to [0, 1]."""
    floor = power_db.max() - dynamic_range_db
    return (np.clip(power_db, floor, None) - floor) / dynamic_range_db


def render(spectrogram: np.ndarray, size: int, channels: int, colormap: str = "jet") -> np.ndarray:
    """A [0, 1] spectrogram as a size×size uint8 image: jet colours (H, W, 3) or grey (H, W)."""
    from PIL import Image

    resized = Image.fromarray(spectrogram.astype(np.float32), mode="F").resize((size, size), Image.LANCZOS)
    values = np.clip(np.asarray(resized), 0.0, 1.0)
    if channels == 1:
        return np.round(values * 255).astype(np.uint8)
    from matplotlib import colormaps

    return np.round(colormaps[colormap](values)[..., :3] * 255).astype(np.uint8)


def simulate_spectrogram(
    user: User, recording: Recording, radar: Radar, rng: np.random.Generator, size: int, channels: int
) -> tuple[np.ndarray, float]:
    """One recording, end to end: kinematics → baseband → STFT → image.

    Also returns the fastest radial speed of any scatterer (m/s), to check against aliasing.
    """
    ranges, rcs = scatterer_returns(user, recording, radar)
    power_db, _ = spectrogram_db(_sum_returns(ranges, rcs, radar, recording.snr_db, rng), radar)
    image = render(normalise_db(power_db, radar.dynamic_range_db), size, channels)
    return image, radial_speed(ranges, radar)


def as_dict(params: User | Recording | Radar) -> dict:
    return dataclasses.asdict(params)
