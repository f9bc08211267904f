"""What a decoded image becomes as a file: the decoder's observation model (config section `decode`).

The VA-VAE's decoder draws, for a latent, something like the mean of the recordings that latent
stands for. A recording is more than that mean: a colour-mapped spectrogram uses only the 256
colours of its map, and every pixel carries noise (the speckled floor of a radar's thermal noise,
the interference of the body's scatterers). A decoded image has neither: its colours sit between
the map's, and it is smooth. Both show in the judge's features: samples look alike, so they cover
little of each person's variety (recall). Two optional steps give decoded images what recordings
have, applied wherever the pipeline writes decoded pixels (samples; the reconstructions that
evaluate_vae judges and that evaluate_generation's copy check compares samples with):

- `decode.colormap` (e.g. jet): each colour is moved to the nearest of the map's 256 colours, so
  the samples use the recordings' colours only. With `data.colormap` the model already draws the
  magnitude and the map is applied exactly.
- `decode.noise`: each pixel's magnitude (its index in the colour map, or its grey value) gets
  Gaussian noise whose standard deviation depends on the decoded magnitude: the spread of
  recording − reconstruction over the train split, per band of 16 magnitude levels
  (`NoiseModel.fit`, done by evaluate_vae, which writes it to results/vae/decoder_noise.json).

Measured on the CPU study preset (docs/identity-study.md): the colour map alone raises the samples'
recall from 0.12 to about 0.25; the noise on top to 0.35 (Fréchet distance 6.4 -> 3.3), but under
it the copy check through the decoder no longer sees copied latents, so it is off by default.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mdgen.data.dataset import to_uint8
from mdgen.data.images import apply_colormap, invert_colormap
from mdgen.io import atomic_output

BAND = 16  # magnitude levels per band of the noise model: 16 bands over 0-255
MIN_PIXELS = 1000  # a band with fewer pixels borrows the nearest well-filled band's spread
BANDS = 256 // BAND


@dataclass(frozen=True)
class NoiseModel:
    """Per-pixel Gaussian noise on the magnitude (0-255), its standard deviation by band of the
    decoded magnitude: `std[m // 16]`."""

    std: tuple[float, ...]
    pixels: tuple[int, ...]  # the train pixels each band's spread was measured on
    images: int

    @classmethod
    def fit(cls, recordings: np.ndarray, reconstructions: np.ndarray) -> NoiseModel:
        """The spread of recordings − reconstructions (uint8 magnitudes, (N, H, W), the same images)
        in each band of the reconstruction's magnitude. Bands with under MIN_PIXELS pixels take the
        nearest well-filled band's spread (a decoder rarely draws the extremes)."""
        if recordings.shape != reconstructions.shape:
            raise ValueError(f"recordings {recordings.shape} and reconstructions {reconstructions.shape} differ")
        residual = recordings.astype(np.float64) - reconstructions.astype(np.float64)
        band = reconstructions // BAND
        pixels = np.bincount(band.ravel(), minlength=BANDS)
        filled = np.flatnonzero(pixels >= MIN_PIXELS)
        if not len(filled):
            raise ValueError(f"{reconstructions.size} pixels are too few to fit a noise model ({MIN_PIXELS} per band)")
        sums = np.bincount(band.ravel(), weights=residual.ravel(), minlength=BANDS)
        squares = np.bincount(band.ravel(), weights=residual.ravel() ** 2, minlength=BANDS)
        std = np.sqrt(np.maximum(squares / np.maximum(pixels, 1) - (sums / np.maximum(pixels, 1)) ** 2, 0))
        nearest = filled[np.abs(np.arange(BANDS)[:, None] - filled[None]).argmin(1)]
        return cls(tuple(float(s) for s in std[nearest]), tuple(int(p) for p in pixels), len(recordings))

    def apply(self, magnitudes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """`magnitudes` (uint8, any shape) with one draw of the noise, rounded and clipped to 0-255."""
        std = np.asarray(self.std)[magnitudes // BAND]
        noisy = magnitudes + std * rng.standard_normal(magnitudes.shape)
        return np.clip(np.round(noisy), 0, 255).astype(np.uint8)

    def to_json(self) -> dict:
        return {"band": BAND, "std": list(self.std), "pixels": list(self.pixels), "images": self.images}

    @classmethod
    def from_json(cls, entry: Mapping) -> NoiseModel:
        if entry.get("band") != BAND or len(entry.get("std", ())) != BANDS:
            raise ValueError(f"a noise model of {BANDS} bands of {BAND} levels, got {dict(entry)}")
        return cls(tuple(entry["std"]), tuple(entry["pixels"]), entry["images"])


@dataclass(frozen=True)
class Observation:
    """Decoded [-1, 1] tensors -> uint8 arrays as the files hold them, through the `decode` steps.

    `model_colormap` is data.colormap (the model draws magnitudes), `colormap` decode.colormap (the
    model draws RGB, moved onto the map), `channels` data.channels; `noise` the fitted NoiseModel
    to draw from (None: none)."""

    model_colormap: str | None
    colormap: str | None
    channels: int
    noise: NoiseModel | None = None

    @classmethod
    def from_config(cls, config: Mapping, noise: NoiseModel | None = None) -> Observation:
        data, decode = config["data"], config["decode"]
        if decode["noise"] and noise is None:
            raise SystemExit(
                "decode.noise is on but there is no fitted noise model: evaluate_vae fits it "
                "(results/vae/decoder_noise.json); files without a magnitude (RGB without a colour map) have none"
            )
        return cls(data["colormap"], decode["colormap"], data["channels"], noise if decode["noise"] else None)

    @property
    def magnitude_map(self) -> str | None:
        """The colour map a file's colours are the magnitude of (None: grey, or plain RGB)."""
        return self.model_colormap or self.colormap

    @property
    def has_magnitude(self) -> bool:
        """Whether one value per pixel can be read off the files (a colour map, or grey)."""
        return bool(self.magnitude_map) or self.channels == 1

    def magnitudes(self, arrays: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        """Files' arrays ((H, W, 3) colour-mapped or (H, W) grey, one size) -> (N, H, W) uint8
        magnitudes: the nearest colour of the map's table, or the grey value."""
        stacked = np.stack(list(arrays))
        if self.magnitude_map:
            return invert_colormap(stacked, self.magnitude_map, tolerance=None)
        if stacked.ndim == 3:
            return stacked
        raise ValueError("RGB files have no magnitude without a colour map (data.colormap or decode.colormap)")

    def files(self, magnitudes: np.ndarray) -> list[np.ndarray]:
        """(N, H, W) uint8 magnitudes as the files' arrays."""
        return list(apply_colormap(magnitudes, self.magnitude_map) if self.magnitude_map else magnitudes)

    def __call__(self, decoded: torch.Tensor, rng: np.random.Generator | None = None) -> list[np.ndarray]:
        """The files' arrays for a batch of decoded images: snapped to the colour map, and with one
        draw of the noise from `rng` (required when there is a noise model)."""
        if self.model_colormap:  # the model draws the magnitude itself: no detour through the colours
            return self._observed(np.stack(to_uint8(decoded)), rng)
        return self.observe(to_uint8(decoded), rng)

    def observe(self, arrays: list[np.ndarray], rng: np.random.Generator | None = None) -> list[np.ndarray]:
        """`__call__` for arrays the decoder's output already became (to_uint8; for a colour-mapped
        model the colours' magnitudes may differ by a level where the map repeats a colour)."""
        if not arrays or (self.colormap is None and self.noise is None):
            return arrays
        return self._observed(self.magnitudes(arrays), rng)

    def _observed(self, magnitudes: np.ndarray, rng: np.random.Generator | None) -> list[np.ndarray]:
        if self.noise is not None:
            if rng is None:
                raise ValueError("decode.noise needs a random generator for its draws")
            magnitudes = self.noise.apply(magnitudes, rng)
        return self.files(magnitudes)

    def describe(self) -> str:
        steps = [f"colours moved onto the {self.colormap} map"] if self.colormap else []
        if self.noise is not None:
            steps.append(f"noise fitted on {self.noise.images} train images drawn")
        return ", ".join(steps) or "as decoded"


# Each use of the noise draws from its own stream: numpy's default_rng(0) and default_rng([0, 0])
# are the same generator, so plain seeds would give user 0's samples the very noise of the first
# train reconstructions, and a perfect generator's the noise of all of them.
NOISE_STREAMS = {"reconstructions": 1, "samples": 2, "ceiling": 3}


def noise_rng(purpose: str, *keys: int) -> np.random.Generator:
    """The random generator of one use of the decoder's noise (NOISE_STREAMS: reconstructions,
    samples, ceiling) and its keys (e.g. sample.seed and the user)."""
    return np.random.default_rng([NOISE_STREAMS[purpose], *keys])


def save_noise(path: Path, noise: NoiseModel | None, applied: bool, note: str) -> None:
    """results/vae/decoder_noise.json: the fitted model (null where the files have no magnitude),
    whether decode.noise applies it, and how it was fitted."""
    document = {"applied": applied, "note": note, "model": noise.to_json() if noise else None}
    with atomic_output(Path(path)) as tmp:
        tmp.write_text(json.dumps(document, indent=1))


def load_noise(path: Path | None) -> NoiseModel | None:
    """The model save_noise wrote, or None (no file given, or none was fitted)."""
    if path is None:
        return None
    document = json.loads(Path(path).read_text())
    return NoiseModel.from_json(document["model"]) if document.get("model") else None
