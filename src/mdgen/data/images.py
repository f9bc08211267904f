"""How an image file becomes a 1-channel ('L') or 3-channel ('RGB') spectrogram, and how a
colour-mapped one becomes its magnitude and back.

This is the only place that decides it: dataset validation reports what `convert_spectrogram`
would do, and training applies the same function, so the two can never disagree.

With `data.colormap` set (e.g. jet), the files are RGB images of one magnitude drawn through that
colour map, and the models see the magnitude itself, in one channel: each pixel's colour is
replaced by the index (0-255) of the nearest entry of the map's 256-colour table, which is exact
for the map's own colours. What the models draw goes back through the same table
(`apply_colormap`), so samples are RGB files like the recordings. A colour map's luminance is
not monotonic (jet's is not), which is why a grey conversion of such images loses meaning and
this inversion does not.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping

import numpy as np
from PIL import Image

TARGET_MODES = {1: "L", 3: "RGB"}
UNSIGNED_16_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


# A pixel farther than this from every colour of the map (Euclidean distance in 0-255 RGB) is not
# a colour of that map: lossless files hit the table exactly; this leaves room for an 8-bit
# round-off, not for JPEG artefacts or resampled colours, whose magnitude would be a guess.
COLORMAP_TOLERANCE = 8.0


class ConversionError(ValueError):
    """The image cannot become a spectrogram of the configured channel count without losing meaning."""


@functools.cache
def colormap_table(name: str) -> np.ndarray:
    """The 256 colours of a matplotlib colour map as uint8 RGB, (256, 3) read-only: entry i is
    the colour of magnitude i / 255. An unknown name is a ValueError."""
    from matplotlib import colormaps  # not at import: validation must stay light

    if name not in colormaps:
        raise ValueError(f"unknown colour map {name!r}: expected a matplotlib colour map such as jet, turbo, viridis")
    # Integer input indexes the map's lookup table directly: the simulator's colours exactly.
    table = np.round(colormaps[name].resampled(256)(np.arange(256))[:, :3] * 255).astype(np.uint8)
    table.flags.writeable = False
    return table


def _nearest_entries(rgb: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The nearest table entry of every distinct colour of `rgb` (..., 3) uint8: (entries, their
    distances, the distinct colours, each pixel's index into them). Ties go to the lower index."""
    table = colormap_table(name).astype(np.int32)
    packed = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    colours, inverse = np.unique(packed, return_inverse=True)  # a spectrogram has few distinct colours
    unique_rgb = np.stack([colours >> 16, (colours >> 8) & 255, colours & 255], axis=1)
    nearest, distance = np.empty(len(colours), np.int64), np.empty(len(colours))
    for start in range(0, len(colours), 4096):  # bounded memory for a photo's million colours
        chunk = slice(start, start + 4096)
        squared = ((unique_rgb[chunk, None, :] - table[None]) ** 2).sum(-1)  # (colours, 256)
        nearest[chunk] = squared.argmin(1)
        distance[chunk] = np.sqrt(squared.min(1))
    return nearest, distance, unique_rgb, inverse.reshape(packed.shape)


def invert_colormap(rgb: np.ndarray, name: str, tolerance: float | None = COLORMAP_TOLERANCE) -> np.ndarray:
    """(..., 3) uint8 colours of map `name` -> (...) uint8 magnitudes (the nearest table entry).

    Where two entries share a colour the lower index is taken, so every colour of the table comes
    back exactly through `apply_colormap`. Pixels farther than `tolerance` from the table raise a
    ConversionError that counts them and shows the worst one; `tolerance=None` accepts any colour
    (a decoder's output, which only approaches the map's colours).
    """
    nearest, distance, unique_rgb, inverse = _nearest_entries(rgb, name)
    off = distance > tolerance if tolerance is not None else np.zeros(len(distance), bool)
    if off.any():
        counts = np.bincount(inverse.ravel(), minlength=len(distance))
        worst = int(np.argmax(distance))
        raise ConversionError(
            f"{int(counts[off].sum()):,} of {inverse.size:,} pixels are not colours of the {name} map (worst: RGB "
            f"{tuple(int(v) for v in unique_rgb[worst])}, {distance[worst]:.0f} from the nearest of its "
            f"256 colours; at most {tolerance:g} is accepted): save the spectrograms as lossless {name}-mapped "
            "PNGs at their own size, or set data.colormap: null to model the RGB colours as they are"
        )
    return nearest.astype(np.uint8)[inverse]


def off_colormap_fraction(rgb: np.ndarray, name: str, tolerance: float = COLORMAP_TOLERANCE) -> float:
    """The fraction of `rgb`'s pixels farther than `tolerance` from every colour of map `name`."""
    _, distance, _, inverse = _nearest_entries(rgb, name)
    return float((distance > tolerance)[inverse].mean())


def apply_colormap(magnitudes: np.ndarray, name: str) -> np.ndarray:
    """(..., H, W) uint8 magnitudes -> (..., H, W, 3) uint8 colours of map `name`."""
    return colormap_table(name)[magnitudes]


def model_channels(data: Mapping) -> int:
    """The channels the models see: 1 (the magnitude) for colour-mapped files, else the files'."""
    return 1 if data.get("colormap") else data["channels"]


def convert_spectrogram(
    image: Image.Image, channels: int, colormap: str | None = None
) -> tuple[Image.Image, str | None]:
    """Convert a fully loaded image to mode 'L' (channels=1) or 'RGB' (channels=3); with a
    `colormap` (channels must be 3), then to its 'L' magnitude through the inverted map.

    Returns (converted image, description of the conversion or None when the image already had
    the target mode). Raises ConversionError with a reason for people when conversion would lose
    meaning. The checks read pixels, so the image must be loaded.
    """
    if channels not in TARGET_MODES:
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    if colormap and channels != 3:
        raise ValueError(f"data.colormap {colormap!r} describes RGB files: it needs data.channels 3, got {channels}")
    target = TARGET_MODES[channels]
    steps = []

    if image.mode in ("P", "PA"):
        keeps_alpha = image.mode == "PA" or image.has_transparency_data
        source, image = image.mode, image.convert("RGBA" if keeps_alpha else "RGB")
        steps.append(f"{source} -> {image.mode}: palette indices are replaced by their colours")

    if image.mode == "YCbCr":
        image = image.convert("RGB")
        steps.append("YCbCr -> RGB: the JPEG colour space is converted to RGB")

    if image.mode in ("RGBA", "LA"):
        alpha = np.asarray(image.getchannel("A"))
        transparent = int((alpha < 255).sum())
        if transparent:
            raise ConversionError(
                f"{image.mode} image has {transparent:,} of {alpha.size:,} pixels with alpha < 255, "
                "and transparent pixels have no spectrogram value; save the image without an alpha channel"
            )
        source, image = image.mode, image.convert(image.mode[:-1])
        steps.append(f"{source} -> {image.mode}: alpha is fully opaque and is dropped")

    if image.mode in UNSIGNED_16_BIT_MODES:
        # A fixed scale, not per-image min/max, keeps intensities comparable between files.
        values = np.asarray(image).astype(np.float64)
        source, image = image.mode, Image.fromarray(np.rint(values / 257).astype(np.uint8))
        steps.append(f"{source} -> L: 16-bit values are scaled by 255/65535 (value/257)")

    if image.mode in ("I", "F"):
        raise ConversionError(f"mode {image.mode} (32-bit) images are not supported; save them as 8- or 16-bit PNG")
    if image.mode == "CMYK":
        raise ConversionError(
            "CMYK colours depend on an ICC profile this pipeline does not apply; "
            "convert the image to RGB with a colour-managed tool"
        )
    if image.mode not in ("L", "RGB"):
        raise ConversionError(
            f"mode {image.mode!r} is not supported: expected L (8-bit grey) or RGB, or a mode that "
            "converts to them without losing meaning (opaque RGBA/LA, P, I;16, YCbCr); "
            "save the image as an 8-bit grey or RGB PNG"
        )

    if image.mode == "L" and target == "RGB":
        image = image.convert("RGB")
        steps.append("L -> RGB: the grey channel is replicated to 3 channels")

    if image.mode == "RGB" and target == "L":
        rgb = np.asarray(image)
        coloured = int(((rgb[..., 0] != rgb[..., 1]) | (rgb[..., 1] != rgb[..., 2])).sum())
        if coloured:
            raise ConversionError(
                f"colour RGB image ({coloured:,} of {rgb.shape[0] * rgb.shape[1]:,} pixels have unequal "
                "R, G, B) in a 1-channel config: a colour-mapped spectrogram (e.g. jet) is not "
                "monotonic in luminance, so converting it to grey loses meaning; "
                "set data.channels: 3 or convert your data to grey spectrograms"
            )
        image = image.getchannel("R")
        steps.append("RGB -> L: the image is grey (R == G == B) and one channel is kept exactly")

    if colormap:
        image = Image.fromarray(invert_colormap(np.asarray(image), colormap), mode="L")
        steps.append(f"RGB -> L: {colormap} colours are replaced by their magnitude (index in the map's table)")

    return image, "; ".join(steps) or None


def plan_conversion(image: Image.Image, channels: int, colormap: str | None = None) -> str | None:
    """Describe the conversion `to_channels` applies (None: already the target mode); may raise ConversionError."""
    return convert_spectrogram(image, channels, colormap)[1]


def to_channels(image: Image.Image, channels: int, colormap: str | None = None) -> Image.Image:
    """Return the image in mode 'L' (channels=1 or a colormap) or 'RGB'; may raise ConversionError."""
    return convert_spectrogram(image, channels, colormap)[0]


def load_spectrogram(path: str | os.PathLike, channels: int, colormap: str | None = None) -> Image.Image:
    """Open an image file read-only, decode it fully and convert it to `channels` channels, or with
    a `colormap` to its 1-channel magnitude. A ConversionError names the file."""
    with Image.open(path) as image:
        image.load()
        try:
            converted = to_channels(image, channels, colormap)
        except ConversionError as error:
            raise ConversionError(f"{os.fspath(path)}: {error}") from None
        # Closing the file invalidates an unconverted image, so hand back a copy of it.
        return converted.copy() if converted is image else converted
