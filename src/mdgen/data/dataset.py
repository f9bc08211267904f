"""The spectrograms of the validated manifest, as models see them."""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from mdgen.data.images import apply_colormap, load_spectrogram
from mdgen.data.validation import read_manifest


def class_label(user_id: str) -> int:
    """'user_07' -> 7: the class index is the user's folder number."""
    return int(user_id.removeprefix("user_"))


def per_user_subset(
    labels, per_user: int | Mapping[int, int], seed: int, advice: str = "lower evaluation.low_data_k"
) -> list[int]:
    """Indices of `per_user` items of every label (or `per_user[label]` of each label in a
    mapping), drawn without replacement from the seed, in their original order.

    The low-data study draws the generator's training latents and the classifier's real images
    with it; both follow the manifest's order, so both see exactly the same real images. The
    augmentation study draws its synthetic images per user with it. Too few items of a label is a
    ValueError that ends with `advice`.
    """
    labels = np.asarray(labels)
    counts = per_user if isinstance(per_user, Mapping) else dict.fromkeys(np.unique(labels).tolist(), per_user)
    rng = np.random.default_rng(seed)
    chosen = []
    for label, count in counts.items():
        candidates = np.flatnonzero(labels == label)
        if count > len(candidates):
            raise ValueError(
                f"user_{label:02d} has {len(candidates)} items, fewer than the {count} per user asked for: {advice}"
            )
        chosen.append(rng.choice(candidates, count, replace=False))
    return sorted(int(i) for i in np.concatenate(chosen))


def to_tensor(image: Image.Image) -> torch.Tensor:
    """A uint8 'L' or 'RGB' image as a float tensor C×H×W in [-1, 1]."""
    array = np.asarray(image, dtype=np.float32)
    if array.ndim == 2:
        array = array[..., None]
    return torch.from_numpy(array.transpose(2, 0, 1) / 127.5 - 1.0)


def to_uint8(images: torch.Tensor, colormap: str | None = None) -> list[np.ndarray]:
    """[-1, 1] tensors (B, C, H, W) as uint8 arrays (H, W) or (H, W, 3): the files' layout. With a
    `colormap`, 1-channel magnitudes are drawn through it as RGB, like the recordings."""
    array = ((images.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    if colormap:
        if array.shape[-1] != 1:
            raise ValueError(f"a colour map draws 1-channel magnitudes, got {array.shape[-1]} channels")
        return list(apply_colormap(array[..., 0], colormap))
    return [a[..., 0] if a.shape[-1] == 1 else a for a in array]


class MicroDopplerDataset(Dataset):
    """Spectrograms of one split of the manifest, resized to `size` × `size` with LANCZOS.

    No crop and no augmentation: the axes are time and Doppler, so a crop loses signal, a
    horizontal flip reverses time and a vertical flip negates velocity.

    Items are dicts: `image` (C×H×W float in [-1, 1]), `class_label` (int), `user_id` ('user_07')
    and `path`. Relative manifest paths are resolved against `base_dir` (default: the working
    directory, where Snakemake runs). With a `colormap` the files' colours are inverted to their
    magnitude at the file's own size, before resizing, and items have one channel.
    """

    def __init__(self, manifest: str | os.PathLike, split: str, size: int, channels: int, base_dir=None, colormap=None):
        self.rows = read_manifest(manifest, split)
        if not self.rows:
            raise ValueError(f"{manifest} lists no images for split {split!r}: expected 'train' or 'val' rows")
        self.size = size
        self.channels = channels
        self.base_dir = base_dir
        self.colormap = colormap

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        row = self.rows[index]
        path = os.path.join(self.base_dir, row["path"]) if self.base_dir else row["path"]
        image = load_spectrogram(path, self.channels, self.colormap)
        if image.size != (self.size, self.size):
            image = image.resize((self.size, self.size), Image.LANCZOS)
        return {
            "image": to_tensor(image),
            "class_label": class_label(row["user_id"]),
            "user_id": row["user_id"],
            "path": row["path"],
        }
