"""How an image file becomes a 1-channel ('L') or 3-channel ('RGB') spectrogram.

This is the only place that decides it: dataset validation reports what `convert_spectrogram`
would do, and training applies the same function, so the two can never disagree.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

TARGET_MODES = {1: "L", 3: "RGB"}
UNSIGNED_16_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


class ConversionError(ValueError):
    """The image cannot become a spectrogram of the configured channel count without losing meaning."""


def convert_spectrogram(image: Image.Image, channels: int) -> tuple[Image.Image, str | None]:
    """Convert a fully loaded image to mode 'L' (channels=1) or 'RGB' (channels=3).

    Returns (converted image, description of the conversion or None when the image already had
    the target mode). Raises ConversionError with a reason for people when conversion would lose
    meaning. The checks read pixels, so the image must be loaded.
    """
    if channels not in TARGET_MODES:
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
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

    return image, "; ".join(steps) or None


def plan_conversion(image: Image.Image, channels: int) -> str | None:
    """Describe the conversion `to_channels` applies (None: already the target mode); may raise ConversionError."""
    return convert_spectrogram(image, channels)[1]


def to_channels(image: Image.Image, channels: int) -> Image.Image:
    """Return the image in mode 'L' (channels=1) or 'RGB' (channels=3); may raise ConversionError."""
    return convert_spectrogram(image, channels)[0]


def load_spectrogram(path: str | os.PathLike, channels: int) -> Image.Image:
    """Open an image file read-only, decode it fully and convert it to `channels` channels."""
    with Image.open(path) as image:
        image.load()
        converted = to_channels(image, channels)
        # Closing the file invalidates an unconverted image, so hand back a copy of it.
        return converted.copy() if converted is image else converted
