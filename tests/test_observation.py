"""The decoder's observation model (mdgen.data.observation): decoded colours moved onto the files'
colour map, and per-pixel noise fitted on recordings − reconstructions."""

import numpy as np
import pytest
import torch

from mdgen.data.images import apply_colormap, colormap_table, invert_colormap, off_colormap_fraction
from mdgen.data.observation import load_noise, noise_rng, NoiseModel, Observation, save_noise


def smooth_magnitudes(n=8, size=32, seed=0) -> np.ndarray:
    """(n, size, size) uint8 magnitudes that use the whole range: ramps with a random offset."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, size)[None, :, None] * np.ones((n, 1, size))
    return np.clip(ramp + rng.uniform(-20, 20, (n, 1, 1)), 0, 255).astype(np.uint8)


def test_the_noise_model_recovers_a_spread_that_depends_on_the_magnitude():
    clean = smooth_magnitudes(n=64)
    truth = np.where(np.arange(16) < 8, 4.0, 12.0)  # quiet floor, noisy bright parts
    rng = np.random.default_rng(1)
    noisy = np.clip(np.round(clean + truth[clean // 16] * rng.standard_normal(clean.shape)), 0, 255).astype(np.uint8)
    model = NoiseModel.fit(noisy, clean)
    assert model.images == 64 and sum(model.pixels) == clean.size
    inner = slice(1, 15)  # the end bands are clipped at 0 and 255
    np.testing.assert_allclose(np.asarray(model.std)[inner], truth[inner], rtol=0.1)
    # a draw from it has that spread again, and stays a uint8 magnitude
    drawn = model.apply(clean, np.random.default_rng(2))
    assert drawn.dtype == np.uint8 and drawn.shape == clean.shape
    assert np.std(drawn.astype(float) - clean)[()] == pytest.approx(np.std(noisy.astype(float) - clean), rel=0.1)


def test_bands_the_decoder_never_draws_borrow_their_nearest_filled_band():
    clean = np.full((4, 32, 32), 100, np.uint8)  # all in band 6
    noisy = clean + np.random.default_rng(0).integers(-5, 6, clean.shape).astype(np.uint8)
    model = NoiseModel.fit(noisy, clean)
    assert model.pixels[6] == clean.size and len(set(model.std)) == 1 and model.std[0] > 2
    with pytest.raises(ValueError, match="too few"):
        NoiseModel.fit(clean[:, :4, :4], clean[:, :4, :4])
    with pytest.raises(ValueError, match="differ"):
        NoiseModel.fit(clean, clean[:2])


def test_the_noise_model_round_trips_through_its_file(tmp_path):
    model = NoiseModel.fit(*(smooth_magnitudes(n=16, seed=s) for s in (0, 1)))
    save_noise(tmp_path / "noise.json", model, applied=True, note="test")
    assert load_noise(tmp_path / "noise.json") == model
    save_noise(tmp_path / "none.json", None, applied=False, note="RGB without a colour map")
    assert load_noise(tmp_path / "none.json") is None and load_noise(None) is None
    with pytest.raises(ValueError, match="16 bands of 16 levels"):  # another layout is refused, not misread
        NoiseModel.from_json(model.to_json() | {"band": 8})


def test_decoded_colours_are_moved_onto_the_map():
    magnitudes = smooth_magnitudes(n=2)
    files = apply_colormap(magnitudes, "jet")
    # a decoder's colours: the map's, a few levels off
    off = np.clip(files.astype(int) + np.random.default_rng(0).integers(-6, 7, files.shape), 0, 255)
    decoded = torch.from_numpy(off.transpose(0, 3, 1, 2) / 127.5 - 1).float()
    observation = Observation(model_colormap=None, colormap="jet", channels=3)
    snapped = np.stack(observation(decoded))
    table = {tuple(c) for c in colormap_table("jet")}
    assert {tuple(c) for c in snapped.reshape(-1, 3)} <= table
    assert np.abs(invert_colormap(snapped, "jet").astype(int) - magnitudes).mean() < 3
    assert off_colormap_fraction(snapped, "jet") == 0
    assert off_colormap_fraction(np.zeros((4, 4, 3), np.uint8), "jet") == 1  # black is no colour of jet
    # without steps the decoder's output is written as it is
    plain = Observation(model_colormap=None, colormap=None, channels=3)
    np.testing.assert_array_equal(np.stack(plain(decoded)), np.stack([a for a in off.astype(np.uint8)]))


def test_noise_is_drawn_on_the_magnitude_of_grey_and_colour_mapped_files():
    magnitudes = smooth_magnitudes(n=2)
    model = NoiseModel(std=(8.0,) * 16, pixels=(1000,) * 16, images=1)
    grey = torch.from_numpy(magnitudes[:, None] / 127.5 - 1).float()
    observation = Observation(model_colormap=None, colormap=None, channels=1, noise=model)
    drawn = np.stack(observation(grey, np.random.default_rng(0)))
    assert drawn.shape == magnitudes.shape and 6 < np.std(drawn.astype(float) - magnitudes) < 10
    # the same draw from the same seed; the colour-mapped model (data.colormap) writes RGB of the map
    np.testing.assert_array_equal(drawn, np.stack(observation(grey, np.random.default_rng(0))))
    mapped = Observation(model_colormap="jet", colormap=None, channels=3, noise=model)
    np.testing.assert_array_equal(np.stack(mapped(grey, np.random.default_rng(0))), apply_colormap(drawn, "jet"))
    with pytest.raises(ValueError, match="random generator"):
        observation(grey)


def test_the_config_must_give_noise_a_fitted_model():
    config = {"data": {"colormap": None, "channels": 3}, "decode": {"colormap": "jet", "noise": True}}
    with pytest.raises(SystemExit, match="no fitted noise model"):
        Observation.from_config(config)
    model = NoiseModel(std=(1.0,) * 16, pixels=(1000,) * 16, images=1)
    assert Observation.from_config(config, model).noise == model
    quiet = Observation.from_config({**config, "decode": {"colormap": "jet", "noise": False}}, model)
    assert quiet.noise is None and quiet.describe() == "colours moved onto the jet map"
    with pytest.raises(ValueError, match="no magnitude"):
        Observation(None, None, 3).magnitudes([np.zeros((4, 4, 3), np.uint8)])


def test_each_use_of_the_noise_draws_from_its_own_stream():
    # numpy's default_rng(0) and default_rng([0, 0]) are one generator: plain seeds would give user
    # 0's samples the noise of the first train reconstructions
    first = {
        name: noise_rng(*key).standard_normal(4).tobytes()
        for name, key in {
            "reconstructions": ("reconstructions",),
            "user 0": ("samples", 0, 0),
            "user 1": ("samples", 0, 1),
            "seed 1": ("samples", 1, 0),
            "ceiling": ("ceiling", 0),
        }.items()
    }
    assert len(set(first.values())) == len(first)
    assert np.random.default_rng(0).standard_normal(4).tobytes() not in first.values()
    again = (noise_rng("samples", 0, 3).standard_normal(4) for _ in range(2))
    assert np.array_equal(*again)  # the same key, the same draw
