"""Mode conversion rules: exact pixel values of every accepted conversion, a reason for every rejection."""

import numpy as np
import pytest
from PIL import Image

from mdgen.data.images import (
    apply_colormap,
    colormap_table,
    ConversionError,
    invert_colormap,
    load_spectrogram,
    model_channels,
    plan_conversion,
    to_channels,
)
from mdgen.data.simulator import render

rng = np.random.default_rng(1)


def test_target_modes_are_left_alone():
    grey, rgb = Image.new("L", (4, 4), 7), Image.new("RGB", (4, 4), (1, 2, 3))
    assert plan_conversion(grey, 1) is None and to_channels(grey, 1) is grey
    assert plan_conversion(rgb, 3) is None and to_channels(rgb, 3) is rgb


def test_16_bit_grey_is_scaled_by_a_fixed_255_over_65535():
    values = np.array([[0, 128, 129, 257], [32896, 65278, 65534, 65535]], dtype=np.uint16)
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    assert "value/257" in plan_conversion(image, 1)
    np.testing.assert_array_equal(np.asarray(to_channels(image, 1)), [[0, 0, 1, 1], [128, 254, 255, 255]])
    # big-endian 16-bit gives the same values; with 3 channels the grey is replicated
    big_endian = Image.frombytes("I;16B", (4, 2), values.astype(">u2").tobytes())
    rgb = np.asarray(to_channels(big_endian, 3))
    assert rgb.shape == (2, 4, 3) and (rgb == np.asarray(to_channels(image, 1))[..., None]).all()


def test_grey_is_replicated_for_3_channels():
    grey = rng.integers(0, 256, (5, 6), dtype=np.uint8)
    rgb = to_channels(Image.fromarray(grey), 3)
    assert rgb.mode == "RGB" and (np.asarray(rgb) == grey[..., None]).all()


def test_grey_rgb_becomes_exactly_its_grey_for_1_channel():
    grey = rng.integers(0, 256, (5, 6), dtype=np.uint8)
    image = Image.fromarray(np.stack([grey] * 3, axis=-1))
    assert "R == G == B" in plan_conversion(image, 1)
    np.testing.assert_array_equal(np.asarray(to_channels(image, 1)), grey)


def test_colour_rgb_is_rejected_for_1_channel():
    pixels = np.zeros((4, 4, 3), dtype=np.uint8)
    pixels[0, 0] = (255, 0, 0)
    with pytest.raises(ConversionError, match=r"1 of 16 pixels .* set data.channels: 3"):
        plan_conversion(Image.fromarray(pixels), 1)


def test_opaque_alpha_is_dropped_and_transparent_alpha_rejected():
    rgba = rng.integers(0, 256, (4, 4, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    np.testing.assert_array_equal(np.asarray(to_channels(Image.fromarray(rgba), 3)), rgba[..., :3])
    la = Image.fromarray(rgba[..., [0, 3]])
    assert la.mode == "LA"
    np.testing.assert_array_equal(np.asarray(to_channels(la, 1)), rgba[..., 0])
    rgba[2, 3, 3] = 254
    with pytest.raises(ConversionError, match="1 of 16 pixels with alpha < 255"):
        to_channels(Image.fromarray(rgba), 3)


def test_palette_colours_are_looked_up_and_palette_transparency_rejected():
    palette = Image.frombytes("P", (2, 1), bytes([0, 1]))
    palette.putpalette([10, 20, 30, 40, 50, 60])
    assert np.asarray(to_channels(palette, 3)).tolist() == [[[10, 20, 30], [40, 50, 60]]]
    palette.info["transparency"] = 1
    with pytest.raises(ConversionError, match="transparent"):
        to_channels(palette, 3)


def test_ycbcr_converts_to_rgb():
    rgb = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
    converted = to_channels(rgb.convert("YCbCr"), 3)
    assert converted.mode == "RGB"
    # YCbCr rounding loses at most a few levels
    assert np.abs(np.asarray(converted, dtype=int) - np.asarray(rgb, dtype=int)).max() <= 3


@pytest.mark.parametrize(
    "mode, reason",
    [
        ("I", "32-bit"),
        ("F", "32-bit"),
        ("CMYK", "ICC profile"),
        ("1", "mode '1' is not supported"),
        ("HSV", "mode 'HSV' is not supported"),
    ],
)
def test_modes_without_a_faithful_conversion_are_rejected(mode, reason):
    with pytest.raises(ConversionError, match=reason):
        plan_conversion(Image.new(mode, (4, 4)), 3)


def test_load_spectrogram_returns_a_usable_image(tmp_path):
    pixels = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    Image.fromarray(pixels[..., 0]).save(tmp_path / "b.png")
    same = load_spectrogram(tmp_path / "a.png", 3)  # no conversion: must outlive the closed file
    np.testing.assert_array_equal(np.asarray(same), pixels)
    replicated = load_spectrogram(tmp_path / "b.png", 3)
    assert replicated.size == (8, 6) and (np.asarray(replicated) == pixels[..., :1]).all()


# ---------------------------------------------------------------------------------------------
# Colour-mapped spectrograms (data.colormap)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["jet", "turbo", "viridis"])
def test_colormap_inversion_round_trips_every_colour_of_the_map_exactly(name):
    table = colormap_table(name)
    magnitudes = invert_colormap(table[None], name)[0]
    np.testing.assert_array_equal(apply_colormap(magnitudes, name), table)
    # where two entries share a colour (jet has 4 such pairs in 8 bits) the lower index is taken
    distinct = [i for i in range(256) if not (table[:i] == table[i]).all(axis=1).any()]
    np.testing.assert_array_equal(magnitudes[distinct], distinct)


def test_a_simulated_spectrogram_is_its_magnitude_through_the_map():
    spectrogram = rng.random((40, 40))
    rgb, grey = render(spectrogram, 32, 3), render(spectrogram, 32, 1)
    magnitudes = invert_colormap(rgb, "jet")
    np.testing.assert_array_equal(apply_colormap(magnitudes, "jet"), rgb)
    # the magnitude, up to the table's 8-bit steps (within one level) where its colour is unique
    table = colormap_table("jet")
    unique = (table[:, None] == table[None]).all(-1).sum(1) == 1
    close = np.abs(magnitudes.astype(int) - grey) <= 1
    assert close[unique[magnitudes]].all() and unique[magnitudes].mean() > 0.9


def test_colours_off_the_map_are_refused_naming_the_file(tmp_path):
    rgb = apply_colormap(rng.integers(0, 256, (8, 8), dtype=np.uint8), "jet").copy()
    rgb[2, 3] = (128, 128, 128)  # grey: far from every jet colour
    rgb[5, 5] = (255, 0, 255)
    Image.fromarray(rgb).save(tmp_path / "user rec.png")
    with pytest.raises(ConversionError, match=r"user rec\.png: 2 of 64 pixels are not colours of the jet map"):
        load_spectrogram(tmp_path / "user rec.png", 3, "jet")
    with pytest.raises(ConversionError, match="worst: RGB \\(255, 0, 255\\)"):
        load_spectrogram(tmp_path / "user rec.png", 3, "jet")
    # an 8-bit round-off is not an error
    nudged = apply_colormap(np.arange(64, dtype=np.uint8).reshape(8, 8), "jet").astype(int) + 2
    assert invert_colormap(np.clip(nudged, 0, 255).astype(np.uint8), "jet").shape == (8, 8)


def test_colormap_conversion_and_model_channels():
    levels = np.arange(16, dtype=np.uint8).reshape(4, 4) * 16 + 1  # 33: not in jet's saturated-blue run
    rgb = Image.fromarray(apply_colormap(levels, "jet"))
    grey = to_channels(rgb, 3, "jet")
    assert grey.mode == "L" and np.asarray(grey).tolist() == levels.tolist()
    assert "jet colours are replaced by their magnitude" in plan_conversion(rgb, 3, "jet")
    with pytest.raises(ValueError, match="needs data.channels 3"):
        to_channels(rgb, 1, "jet")
    with pytest.raises(ValueError, match="unknown colour map 'jett'"):
        colormap_table("jett")
    assert model_channels({"channels": 3, "colormap": "jet"}) == 1
    assert model_channels({"channels": 3, "colormap": None}) == 3 and model_channels({"channels": 1}) == 1
