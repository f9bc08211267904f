"""Latent stores: the VA-VAE latents of every spectrogram, as the DiT reads them.

One zarr v3 group per split (`results/latents/{train,val}.zarr`), written by `extract_latents`:

    latents  [N, C, h, w]  float32 (or float16), one chunk = `chunk_size` whole latents
    labels   [N]           int64, the class label (user index) of each latent
    paths    [N]           string, the manifest path of the image it encodes, in manifest order

and attributes saying where the latents came from: `vae_sha256`, `vae_config`, `image_size`,
`channels`, `sample_posterior`, `dtype`, `split`, `count_per_user`, `seed`, and the per-channel
`mean` and `std` of the *train* split (population std, ddof=0, over all samples and positions),
which both stores carry. The DiT trains on `(z - mean) / std` and sampling decodes
`x * std + mean` with the statistics of the store the DiT trained on.

Stores are written into a temporary folder next to the target and renamed into place when they
are complete, so an interrupted run never leaves something that looks like a store.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import zarr
from torch.utils.data import DataLoader, Dataset, Subset

from mdgen.data.dataset import class_label

ARRAYS = ("latents", "labels", "paths")
ATTRIBUTES = (
    "mean",
    "std",
    "vae_sha256",
    "vae_config",
    "image_size",
    "channels",
    "sample_posterior",
    "dtype",
    "split",
    "count_per_user",
    "seed",
)
DTYPES = ("float32", "float16")
RERUN = "rerun extract_latents (python -m mdgen.stages.extract_latents, or snakemake results/latents/train.zarr)"


class LatentStoreError(ValueError):
    """A latent store that is missing, incomplete, or does not belong to the manifest or VAE at hand."""


def sha256_file(path: str | os.PathLike, block_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in blocks so a multi-GB checkpoint never sits in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(block_size):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------


class ChannelStats:
    """Per-channel mean and population std (ddof=0) of latent batches (B, C, h, w), one batch at a time.

    Each batch is reduced in float64 with two passes (its mean, then its squared deviations M2),
    and batches are merged with Chan et al.'s parallel formula, so the result neither needs all
    latents in memory nor loses precision when the mean is large against the spread.
    """

    def __init__(self, channels: int):
        self.count = 0  # values per channel seen so far: samples × h × w
        self._mean = np.zeros(channels, dtype=np.float64)
        self._m2 = np.zeros(channels, dtype=np.float64)  # sum of squared deviations from the mean

    def update(self, batch: np.ndarray) -> None:
        values = np.asarray(batch, dtype=np.float64)  # (B, C, h, w)
        if values.ndim != 4 or values.shape[1] != len(self._mean):
            raise ValueError(f"expected latents (B, {len(self._mean)}, h, w), got shape {values.shape}")
        batch_count = values.shape[0] * values.shape[2] * values.shape[3]
        if batch_count == 0:
            return
        batch_mean = values.mean(axis=(0, 2, 3))
        batch_m2 = ((values - batch_mean[None, :, None, None]) ** 2).sum(axis=(0, 2, 3))
        total = self.count + batch_count
        delta = batch_mean - self._mean
        self._mean += delta * (batch_count / total)
        self._m2 += batch_m2 + delta**2 * (self.count * batch_count / total)
        self.count = total

    @property
    def mean(self) -> np.ndarray:
        return self._mean.copy()

    @property
    def std(self) -> np.ndarray:
        if self.count == 0:
            raise ValueError("no latents seen: the statistics of an empty split are undefined")
        return np.sqrt(self._m2 / self.count)


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


class LatentStoreWriter:
    """Writes one split's store: labels and paths up front, latents batch by batch, attributes last.

    Latents are buffered and written a whole chunk at a time, so no chunk is written twice
    whatever the batch size.
    """

    def __init__(
        self, path: str | os.PathLike, labels: Sequence[int], paths: Sequence[str], dtype: str, chunk_size: int
    ):
        if dtype not in DTYPES:
            raise ValueError(f"latent dtype must be one of {DTYPES}, got {dtype!r}")
        if len(labels) != len(paths):
            raise ValueError(f"{len(labels)} labels for {len(paths)} paths: expected one label per image")
        self.path = Path(path)
        self.count = len(paths)
        self.dtype = dtype
        self.chunk_size = chunk_size
        self.group = zarr.open_group(self.path, mode="w", zarr_format=3)
        self.group.create_array("labels", data=np.asarray(labels, dtype=np.int64), chunks=(max(1, self.count),))
        # dtype=str is zarr's variable-length "string" type (vlen-utf8 codec), which has a
        # registered v3 spec; fixed-width numpy '<U' would warn that its format may change.
        stored_paths = self.group.create_array("paths", shape=(self.count,), dtype=str, chunks=(max(1, self.count),))
        stored_paths[:] = np.asarray(paths, dtype=object)
        self.latents = None  # created at the first batch, when the latent shape is known
        self.written = 0
        self._pending: list[np.ndarray] = []

    def append(self, latents: np.ndarray) -> np.ndarray:
        """Add a batch (B, C, h, w); return it as stored (cast to the store's dtype)."""
        stored = np.ascontiguousarray(latents, dtype=self.dtype)
        if self.latents is None:
            # Uncompressed: latents are noise-like floats that zstd shrinks by under 10%, while
            # decompressing a chunk takes about 3× as long as reading it (benchmarks/latent_io.py).
            self.latents = self.group.create_array(
                "latents",
                shape=(self.count, *stored.shape[1:]),
                dtype=self.dtype,
                chunks=(self.chunk_size, *stored.shape[1:]),
                compressors=None,
                dimension_names=("sample", "channel", "y", "x"),
            )
        elif stored.shape[1:] != self.latents.shape[1:]:
            raise ValueError(f"latent shape changed within the split: {self.latents.shape[1:]} then {stored.shape[1:]}")
        pending = self.written + sum(len(b) for b in self._pending)
        if pending + len(stored) > self.count:
            raise ValueError(f"{pending + len(stored)} latents for a store of {self.count} images")
        self._pending.append(stored)
        self._flush(whole_chunks_only=True)
        return stored

    def _flush(self, whole_chunks_only: bool) -> None:
        if not self._pending:
            return
        buffered = np.concatenate(self._pending)
        n = len(buffered) // self.chunk_size * self.chunk_size if whole_chunks_only else len(buffered)
        if n:
            self.latents[self.written : self.written + n] = buffered[:n]
            self.written += n
        self._pending = [buffered[n:]] if n < len(buffered) else []

    def finish(self, attrs: dict) -> None:
        """Write the last partial chunk and the attributes; every image must have its latent by now."""
        self._flush(whole_chunks_only=False)
        if self.written != self.count:
            raise ValueError(f"{self.path}: {self.written} latents written for {self.count} images")
        missing = [key for key in ATTRIBUTES if key not in attrs]
        if missing:
            raise ValueError(f"latent store attributes lack {missing}")
        self.group.attrs.update(attrs)


# ---------------------------------------------------------------------------------------------
# Reading and checking
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LatentStore:
    """An opened store: `latents` is the lazy zarr array; labels, paths and attrs are read in full."""

    path: Path
    latents: zarr.Array  # [N, C, h, w]
    labels: np.ndarray  # [N] int64
    paths: list[str]
    attrs: dict


def open_latent_store(path: str | os.PathLike) -> LatentStore:
    """Open a store written by extract_latents, or fail saying what is missing and what to do."""
    path = Path(path)
    if not (path / "zarr.json").is_file():
        raise LatentStoreError(
            f"no latent store at {path} (expected a zarr v3 group with {path / 'zarr.json'}): {RERUN}"
        )
    group = zarr.open_group(path, mode="r")
    missing = [name for name in ARRAYS if name not in group]
    attrs = dict(group.attrs)
    missing += [f"attribute {key!r}" for key in ATTRIBUTES if key not in attrs]
    if missing:
        raise LatentStoreError(f"{path} is not a complete latent store: it lacks {', '.join(missing)}. {RERUN}")
    return LatentStore(
        path=path,
        latents=group["latents"],
        labels=np.asarray(group["labels"][:], dtype=np.int64),
        paths=[str(p) for p in group["paths"][:].tolist()],
        attrs=attrs,
    )


def verify_latent_store(store: LatentStore, rows: Sequence[dict], split: str) -> None:
    """Check a store against the manifest rows of its split: counts per user, order, labels, attributes.

    Raises LatentStoreError listing every difference.
    """
    problems = []
    if store.attrs.get("split") != split:
        problems.append(f"its split attribute is {store.attrs.get('split')!r}, expected {split!r}")
    count_per_user = dict(sorted(Counter(row["user_id"] for row in rows).items()))
    expected = Counter(class_label(row["user_id"]) for row in rows)
    stored = Counter(store.labels.tolist())
    names = {class_label(user): user for user in count_per_user}
    for label in sorted(expected.keys() | stored.keys()):
        if expected[label] != stored[label]:
            problems.append(
                f"{names.get(label, f'label {label}')} has {expected[label]} images in the manifest and "
                f"{stored[label]} latents in the store"
            )
    if store.attrs.get("count_per_user") != count_per_user:
        problems.append(
            f"its count_per_user attribute is {store.attrs.get('count_per_user')}, the manifest has {count_per_user}"
        )
    if store.latents.shape[0] != len(rows) or len(store.paths) != len(rows):
        problems.append(
            f"it holds {store.latents.shape[0]} latents and {len(store.paths)} paths for {len(rows)} manifest images"
        )
    manifest_paths = [row["path"] for row in rows]
    if store.paths != manifest_paths:
        first = next(
            (i for i, (a, b) in enumerate(zip(store.paths, manifest_paths)) if a != b),
            min(len(store.paths), len(manifest_paths)),
        )
        found = store.paths[first] if first < len(store.paths) else "nothing"
        wanted = manifest_paths[first] if first < len(manifest_paths) else "nothing"
        problems.append(
            f"its paths leave the manifest order at index {first}: {found!r} where the manifest has {wanted!r}"
        )
    labels = [class_label(row["user_id"]) for row in rows]
    if len(labels) == len(store.labels) and store.labels.tolist() != labels:
        wrong = int(np.flatnonzero(store.labels != np.asarray(labels))[0])
        problems.append(
            f"label {store.labels[wrong]} at index {wrong} ({manifest_paths[wrong]}), expected {labels[wrong]}"
        )
    if problems:
        raise LatentStoreError(
            f"{store.path} does not match the {split} split of the manifest:\n  - "
            + "\n  - ".join(problems)
            + f"\n{RERUN}"
        )


# ---------------------------------------------------------------------------------------------
# Dataset and DataModule for DiT training
# ---------------------------------------------------------------------------------------------


class LatentDataset(Dataset):
    """Normalised latents `(z - mean) / std` (float32, (C, h, w)) and their labels (int64) from one store.

    The whole store is loaded (and normalised once) when its float32 size fits under
    `memory_limit_mb`; otherwise items are read from zarr, keeping the last chunk read, so that
    sequential access reads each chunk once. With `vae_path`, a store made by another VAE
    checkpoint is refused: its latents mean nothing to that VAE's decoder.

    Exposes `mean` and `std` (C,) float32 tensors, `labels` (N,) int64, `paths`, `attrs` and
    `latents_shape` (C, h, w).
    """

    def __init__(
        self, store_path: str | os.PathLike, vae_path: str | os.PathLike | None = None, memory_limit_mb: float = 4096
    ):
        store = open_latent_store(store_path)
        if vae_path is not None:
            vae_sha256 = sha256_file(vae_path)
            if vae_sha256 != store.attrs["vae_sha256"]:
                raise LatentStoreError(
                    f"{store.path} was made by a VAE with sha256 {store.attrs['vae_sha256']}, but {vae_path} has "
                    f"sha256 {vae_sha256}: the latents must come from the VAE that will decode them. {RERUN} "
                    f"with --vae {vae_path}"
                )
        self.path = store.path
        self.attrs = store.attrs
        self.paths = store.paths
        self.labels = torch.from_numpy(store.labels)  # (N,) int64
        self.mean = torch.tensor(store.attrs["mean"], dtype=torch.float32)  # (C,)
        self.std = torch.tensor(store.attrs["std"], dtype=torch.float32)  # (C,)
        self.latents_shape = tuple(store.latents.shape[1:])  # (C, h, w) of one latent
        if len(self.mean) != self.latents_shape[0] or len(self.std) != self.latents_shape[0]:
            raise LatentStoreError(
                f"{self.path}: mean/std have {len(self.mean)}/{len(self.std)} entries for "
                f"{self.latents_shape[0]} latent channels. {RERUN}"
            )
        if not (torch.isfinite(self.std).all() and (self.std > 0).all()):
            raise LatentStoreError(
                f"{self.path}: std {self.std.tolist()} has a zero or non-finite channel, so latents "
                f"cannot be normalised; check the VAE (a dead latent channel?) and {RERUN}"
            )
        self.chunk_size = store.latents.chunks[0]
        float32_bytes = len(self.labels) * int(np.prod(self.latents_shape)) * 4
        self.in_memory = float32_bytes <= memory_limit_mb * 2**20
        self.chunks_read = 0  # chunks read from disk since opening (the chunked path's cost)
        self._array = None  # zarr array, opened lazily per process (DataLoader workers)
        self._chunk_index, self._chunk = -1, None
        self._normalised = self._normalise(store.latents[:]) if self.in_memory else None

    def _normalise(self, latents: np.ndarray) -> torch.Tensor:
        """(B, C, h, w) as stored -> float32 (B, C, h, w) normalised per channel."""
        z = torch.from_numpy(np.asarray(latents, dtype=np.float32))
        return (z - self.mean[None, :, None, None]) / self.std[None, :, None, None]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.in_memory:
            return self._normalised[index], self.labels[index]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} latents")
        chunk_index, offset = divmod(index, self.chunk_size)
        if chunk_index != self._chunk_index:
            if self._array is None:
                self._array = zarr.open_array(self.path / "latents", mode="r")
            start = chunk_index * self.chunk_size
            self._chunk = self._normalise(self._array[start : start + self.chunk_size])
            self._chunk_index = chunk_index
            self.chunks_read += 1
        return self._chunk[offset], self.labels[index]

    def __getstate__(self) -> dict:
        # Each DataLoader worker opens its own zarr handle and keeps its own chunk.
        return {**self.__dict__, "_array": None, "_chunk_index": -1, "_chunk": None}


class WithFeatures(Dataset):
    """The items of a dataset with one more tensor each: (latents, label, features[index]).
    REPA's train batches: the encoder features of the image each latent encodes."""

    def __init__(self, dataset: Dataset, features: torch.Tensor):
        if len(features) != len(dataset):
            raise ValueError(f"{len(features)} feature rows for {len(dataset)} items: expected one per item")
        self.dataset, self.features = dataset, features

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        return (*self.dataset[index], self.features[index])


class LatentDataModule(pl.LightningDataModule):
    """Train and val LatentDatasets; train is shuffled (dropping the last partial batch when the split is
    larger than a batch), val is read in store order.

    Both stores must come from the same extraction (same VAE, the train statistics in both), since
    the DiT is trained and validated on latents normalised alike.
    """

    def __init__(
        self,
        train_store: str | os.PathLike,
        val_store: str | os.PathLike,
        batch_size: int,
        num_workers: int = 0,
        vae_path: str | os.PathLike | None = None,
        memory_limit_mb: float = 4096,
        train_indices: Sequence[int] | None = None,
        train_features: torch.Tensor | None = None,
    ):
        """`train_indices`: train on these items of the train store only (the low-data study).
        `train_features`: one row per item of the train store, appended to its train items."""
        super().__init__()
        self.train_indices = train_indices
        self.train_features = train_features
        self.train_store, self.val_store = Path(train_store), Path(val_store)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.vae_path = vae_path
        self.memory_limit_mb = memory_limit_mb
        self.train: LatentDataset | None = None
        self.val: LatentDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train is not None:  # Lightning calls setup again after a caller already did
            return
        train = LatentDataset(self.train_store, self.vae_path, self.memory_limit_mb)
        val = LatentDataset(self.val_store, self.vae_path, self.memory_limit_mb)
        differences = [
            key
            for key in ("vae_sha256", "mean", "std", "sample_posterior", "dtype", "image_size", "channels")
            if train.attrs[key] != val.attrs[key]
        ]
        if differences or train.latents_shape != val.latents_shape:
            raise LatentStoreError(
                f"{self.train_store} and {self.val_store} come from different extractions (they differ in "
                f"{', '.join(differences) or 'latent shape'}): {RERUN}"
            )
        self.train, self.val = train, val

    def _loader(self, dataset: LatentDataset, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            drop_last=shuffle and len(dataset) > self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        fit = self.train if self.train_features is None else WithFeatures(self.train, self.train_features)
        fit = fit if self.train_indices is None else Subset(fit, list(self.train_indices))
        return self._loader(fit, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val, shuffle=False)
