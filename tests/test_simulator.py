"""The simulator: geometry and gait, radar physics, images, determinism, and whether users are learnable."""

import numpy as np
import pytest

from mdgen.data import simulator as sim

RADAR = sim.Radar()


def walker(**changes):
    """A mid-range user with no proportion jitter, so lengths are the textbook fractions."""
    params = dict(
        height_m=1.75,
        speed_mps=1.3,
        cadence=1.0,
        arm_swing=1.0,
        elbow_flexion=1.0,
        knee_peak_deg=70.0,
        hip_amplitude=1.0,
        left_right_ratio=1.0,
        left_phase=0.5,
        torso_radius_m=0.15,
    )
    return sim.User(**(params | changes))


def straight_walk(**changes):
    """Walking straight at the radar (aspect 0), no day-to-day gait variation."""
    return sim.Recording(**(dict(speed_mps=1.3, start_phase=0.0, range_m=4.0, aspect_deg=0.0, snr_db=30.0) | changes))


# ---------------------------------------------------------------------------------------------
# Body and gait
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scatterer, segment",
    [
        ("head", "head"),
        ("torso", "torso"),
        ("upper_arm_left", "upper_arm"),
        ("lower_arm_right", "lower_arm"),
        ("upper_leg_right", "upper_leg"),
        ("lower_leg_left", "lower_leg"),
        ("foot_right", "foot"),
    ],
)
def test_segments_keep_their_boulic_lengths_throughout_the_walk(scatterer, segment):
    user = walker()
    times = np.linspace(0, 3, 500)
    start, stop = sim.body_segments(times, user, straight_walk())[scatterer]
    lengths = np.linalg.norm(stop - start, axis=-1)
    expected = sim.SEGMENT_FRACTIONS[segment] * 1.75
    np.testing.assert_allclose(lengths, expected, rtol=1e-9)


def test_proportion_jitter_changes_lengths_by_at_most_three_percent():
    users = [sim.draw_user(np.random.default_rng(k)) for k in range(50)]
    factors = np.array([list(u.proportions.values()) for u in users])
    assert factors.min() >= 0.97 and factors.max() <= 1.03
    assert set(users[0].proportions) == set(sim.SEGMENT_FRACTIONS)


def test_joint_angles_span_the_control_points():
    user = walker(knee_peak_deg=72.0)
    rv = 1.3 / user.leg_length
    _, support = sim.cycle_timing(user.leg_length, 1.3)
    angles = sim.joint_angles(np.linspace(0, 1, 2001), user, rv, support)
    ranges = {name: (a.min(), a.max()) for name, a in angles.items()}
    np.testing.assert_allclose(ranges["hip"], (-15.0, 25.0), atol=0.05)
    np.testing.assert_allclose(ranges["knee"], (3.0, 72.0), atol=0.05)
    np.testing.assert_allclose(ranges["ankle"], (-20.0, 8.0), atol=0.05)
    swing = 9.88 * rv
    np.testing.assert_allclose(ranges["shoulder"], (3 - 1.5 * swing, 3 + 0.5 * swing), atol=0.01)
    np.testing.assert_allclose(ranges["elbow"], (15.0, 15.0 + 10.0 * rv), atol=0.01)


def test_cycle_timing_follows_boulic():
    # rv = 1.3 / 0.8593 = 1.513; rlc = 1.346 √rv = 1.656; dc = rlc / rv = 1.094 s
    dc, support = sim.cycle_timing(0.491 * 1.75, 1.3)
    assert dc == pytest.approx(1.0944, abs=1e-3)
    assert support == pytest.approx((0.752 * dc - 0.143) / dc)
    assert 0.5 < support < 0.85  # between the ankle's neighbouring control points


def test_left_side_is_the_right_side_half_a_cycle_later():
    user = walker()
    times = np.arange(0, 2.0, 1 / 500)
    segments = sim.body_segments(times, user, straight_walk())
    dc, _ = sim.cycle_timing(user.leg_length, 1.3)
    shift = int(round(dc / 2 * 500))
    right_knee = segments["upper_leg_right"][1]
    left_knee = segments["upper_leg_left"][1]
    # Same forward and vertical motion, half a cycle apart (up to the small pelvis rotations).
    np.testing.assert_allclose(left_knee[shift:, [0, 2]], right_knee[:-shift, [0, 2]], atol=0.02)


# ---------------------------------------------------------------------------------------------
# Radar physics
# ---------------------------------------------------------------------------------------------


def test_torso_doppler_line_sits_at_two_v_over_lambda():
    speed = 1.3
    power_db, doppler = sim.spectrogram_db(
        sim.baseband(walker(), straight_walk(speed_mps=speed), RADAR, scatterers=("torso",)), RADAR
    )
    line = np.median(doppler[power_db.argmax(axis=0)])
    expected = 2 * speed / RADAR.wavelength  # 208 Hz at 24 GHz
    assert line == pytest.approx(expected, rel=0.03)


def test_feet_stay_within_the_doppler_their_kinematics_allow():
    feet = ("foot_left", "foot_right")
    user, walk = walker(), straight_walk()
    ranges, _ = sim.scatterer_returns(user, walk, RADAR, feet)
    kinematic_max = 2 * sim.radial_speed(ranges, RADAR) / RADAR.wavelength
    power_db, doppler = sim.spectrogram_db(sim.baseband(user, walk, RADAR, scatterers=feet), RADAR)
    visible = doppler[(power_db > power_db.max() - 20).any(axis=1)]
    bin_width = doppler[0] - doppler[1]
    # The window's main lobe (Kaiser β = 6, 2× zero padding) spreads a line by a few bins.
    assert visible.max() <= kinematic_max + 8 * bin_width
    assert visible.max() >= 0.9 * kinematic_max  # the feet's fastest swing is actually there
    assert kinematic_max > 3 * 2 * 1.3 / RADAR.wavelength  # feet swing well beyond the torso


def test_default_pulse_rate_does_not_alias_the_fastest_walker():
    # The corner of every parameter range at once: tallest, fastest, largest swing and cadence.
    fastest = walker(
        height_m=1.95,
        speed_mps=1.6,
        cadence=1.1,
        arm_swing=1.5,
        elbow_flexion=1.3,
        knee_peak_deg=80.0,
        hip_amplitude=1.15,
        left_right_ratio=1.15,
        left_phase=0.53,
    )
    walk = straight_walk(
        speed_mps=1.68,
        range_m=2.0,
        cadence=1.05,
        arm_swing=1.25,
        elbow_flexion=1.2,
        hip_amplitude=1.1,
        knee_offset_deg=5.0,
    )
    ranges, _ = sim.scatterer_returns(fastest, walk, RADAR)
    assert sim.radial_speed(ranges, RADAR) < RADAR.max_velocity
    # A slow pulse rate does alias the same walk: 100 Hz at 24 GHz is unambiguous to ±0.31 m/s.
    assert sim.Radar(prf_hz=100.0).max_velocity == pytest.approx(0.312, abs=1e-3)


def test_noiseless_spectrum_is_empty_near_the_nyquist_edges():
    power_db, doppler = sim.spectrogram_db(sim.baseband(walker(), straight_walk(), RADAR), RADAR)
    edge = np.abs(doppler) > 0.95 * RADAR.prf_hz / 2
    assert power_db[edge].max() < power_db.max() - 60  # nothing folded back from beyond ±PRF/2


def test_rcs_of_a_sphere_is_pi_r_squared_from_every_angle():
    cos_theta = np.cos(np.linspace(0, np.pi, 7))
    np.testing.assert_allclose(sim.ellipsoid_rcs(0.1, np.full(7, 0.1), cos_theta), np.pi * 0.01)


def test_snr_sets_the_noise_power():
    walk = straight_walk(snr_db=10.0)
    clean = sim.baseband(walker(), walk, RADAR)
    noisy = sim.baseband(walker(), walk, RADAR, rng=np.random.default_rng(0))
    snr = 10 * np.log10(np.mean(np.abs(clean) ** 2) / np.mean(np.abs(noisy - clean) ** 2))
    assert snr == pytest.approx(10.0, abs=0.2)


# ---------------------------------------------------------------------------------------------
# Images and determinism
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels, shape", [(3, (64, 64, 3)), (1, (64, 64))])
def test_spectrogram_images_have_the_configured_shape_and_full_range(channels, shape):
    user = sim.draw_user(np.random.default_rng(1))
    rng = np.random.default_rng(2)
    image, speed = sim.simulate_spectrogram(user, sim.draw_recording(user, rng), RADAR, rng, 64, channels)
    assert image.shape == shape and image.dtype == np.uint8
    assert image.max() > 200 and image.min() < 60  # the signal saturates, the floor stays dark
    assert 2.0 < speed < RADAR.max_velocity


def test_spectrogram_rows_run_from_positive_to_negative_doppler():
    power_db, doppler = sim.spectrogram_db(sim.baseband(walker(), straight_walk(), RADAR), RADAR)
    assert doppler[0] > 0 > doppler[-1] and np.all(np.diff(doppler) < 0)
    assert np.median(doppler[power_db.argmax(axis=0)]) > 0  # approaching walkers sit above the middle
    assert sim.normalise_db(power_db, 40.0).min() == 0.0 and sim.normalise_db(power_db, 40.0).max() == 1.0


def test_same_seed_same_user_different_seed_different_user():
    same = [sim.draw_user(np.random.default_rng([0, 5])) for _ in range(2)]
    assert same[0] == same[1]
    assert sim.draw_user(np.random.default_rng([0, 6])) != same[0]


# ---------------------------------------------------------------------------------------------
# Learnability
# ---------------------------------------------------------------------------------------------
