"""Latent stores: extraction (round trip, statistics, samples vs means, dtype, atomic writes) and reading."""

import hashlib
import json
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import zarr
from conftest import tiny_config
from torch.utils.data import RandomSampler, SequentialSampler

from mdgen.data.dataset import MicroDopplerDataset
from mdgen.data.latents import (
    ChannelStats,
    LatentDataModule,
    LatentDataset,
    LatentStoreError,
    open_latent_store,
    sha256_file,
    verify_latent_store,
)
from mdgen.data.validation import read_manifest
from mdgen.io import atomic_directory
from mdgen.models.vavae import load_vavae, save_official, VAVAE, vavae_kwargs
from mdgen.stages import extract_latents

# Batches of 4 and chunks of 5: writes cross chunk boundaries and the last chunk is partial.
SMALL_BATCHES = {"batch_size": 4, "chunk_size": 5}


@pytest.fixture(scope="module")
def vae_file(tmp_path_factory):
    config = tiny_config()
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vae") / "vavae.pt"
    save_official(path, VAVAE(**vavae_kwargs(config)), {"model": vavae_kwargs(config), **config})
    return path


@pytest.fixture(scope="module")
def extract(tmp_path_factory, tiny_manifest, vae_file):
    """Run the stage with latents settings changed; returns the output folder."""

    def run(**latents):
        out_dir = tmp_path_factory.mktemp("latents")
        config = tiny_config(latents=latents)
        assert (
            extract_latents.main(
                [
                    "--manifest",
                    str(tiny_manifest),
                    "--vae",
                    str(vae_file),
                    "--out-dir",
                    str(out_dir),
                    "--config",
                    json.dumps(config),
                ]
            )
            == 0
        )
        return out_dir

    return run


@pytest.fixture(scope="module")
def means_dir(extract):
    return extract(sample_posterior=False, **SMALL_BATCHES)


@pytest.fixture(scope="module")
def samples_dir(extract):
    return extract(sample_posterior=True, seed=3, **SMALL_BATCHES)


def test_stored_means_equal_encoder_means_and_follow_the_manifest(means_dir, tiny_manifest, vae_file):
    vae = load_vavae(vae_file, use_vf=None).eval()
    for split, count in (("train", 12), ("val", 6)):
        store = open_latent_store(means_dir / f"{split}.zarr")
        rows = read_manifest(tiny_manifest, split)
        images = MicroDopplerDataset(tiny_manifest, split, 32, 3)
        with torch.inference_mode():
            expected = vae.encode(torch.stack([images[i]["image"] for i in range(len(images))])).mode().numpy()
        assert store.latents.shape == (count, 4, 16, 16)
        assert store.latents.chunks == (5, 4, 16, 16)
        assert store.latents.dtype == np.float32
        np.testing.assert_allclose(store.latents[:], expected, rtol=0, atol=1e-6)
        assert store.paths == [row["path"] for row in rows]
        assert store.labels.tolist() == [int(row["user_id"][-2:]) for row in rows] == sorted(store.labels.tolist())
        assert store.attrs["count_per_user"] == {"user_00": count // 3, "user_01": count // 3, "user_02": count // 3}
        assert store.attrs["split"] == split
        assert store.attrs["vae_sha256"] == hashlib.sha256(vae_file.read_bytes()).hexdigest()
        assert store.attrs["vae_config"] == json.loads(json.dumps(vavae_kwargs(tiny_config())))
        assert (store.attrs["image_size"], store.attrs["channels"]) == (32, 3)
        assert (store.attrs["sample_posterior"], store.attrs["dtype"], store.attrs["seed"]) == (False, "float32", 0)


def test_statistics_are_those_of_the_stored_train_latents_in_both_stores(means_dir):
    train = open_latent_store(means_dir / "train.zarr")
    val = open_latent_store(means_dir / "val.zarr")
    latents = train.latents[:].astype(np.float64)
    np.testing.assert_allclose(train.attrs["mean"], latents.mean(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(train.attrs["std"], latents.std(axis=(0, 2, 3), ddof=0), rtol=1e-6)
    assert (val.attrs["mean"], val.attrs["std"]) == (train.attrs["mean"], train.attrs["std"])
    assert not np.allclose(val.attrs["mean"], val.latents[:].astype(np.float64).mean(axis=(0, 2, 3)), rtol=1e-6)


def test_channel_stats_merge_uneven_batches_without_losing_precision():
    rng = np.random.default_rng(0)
    # A large offset against a small spread: E[x²] - E[x]² in float32 would give garbage here.
    latents = 1e4 + rng.normal(0.0, 1e-2, size=(37, 3, 4, 4)) * np.array([1.0, 2.0, 3.0])[None, :, None, None]
    stats = ChannelStats(3)
    for start, stop in ((0, 1), (1, 17), (17, 30), (30, 37)):
        stats.update(latents[start:stop].astype(np.float32).astype(np.float64))
    reference = latents.astype(np.float32).astype(np.float64)
    assert stats.count == 37 * 16
    np.testing.assert_allclose(stats.mean, reference.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(stats.std, reference.std(axis=(0, 2, 3)), rtol=1e-6)


def test_posterior_samples_come_from_the_seeded_generator_and_repeat(
    means_dir, samples_dir, extract, tiny_manifest, vae_file
):
    means = open_latent_store(means_dir / "train.zarr").latents[:]
    samples = open_latent_store(samples_dir / "train.zarr")
    assert samples.attrs["sample_posterior"] is True and samples.attrs["seed"] == 3
    # The tiny random VAE's posterior std is about 1 (logvar near 0): samples sit well away from the means.
    assert 0.5 < np.abs(samples.latents[:] - means).mean() < 2.0
    # The train split draws first from a generator seeded with latents.seed (CPU here).
    vae = load_vavae(vae_file, use_vf=None).eval()
    images = MicroDopplerDataset(tiny_manifest, "train", 32, 3)
    with torch.inference_mode():
        posterior = vae.encode(torch.stack([images[i]["image"] for i in range(len(images))]))
        expected = posterior.sample(generator=torch.Generator().manual_seed(3)).numpy()
    np.testing.assert_allclose(samples.latents[:], expected, rtol=0, atol=1e-5)
    again = open_latent_store(extract(sample_posterior=True, seed=3, **SMALL_BATCHES) / "train.zarr")
    assert np.array_equal(again.latents[:], samples.latents[:])


def test_float16_store_holds_the_rounded_means(means_dir, extract):
    store = open_latent_store(extract(sample_posterior=False, dtype="float16", **SMALL_BATCHES) / "train.zarr")
    means = open_latent_store(means_dir / "train.zarr").latents[:]
    assert store.latents.dtype == np.float16 and store.attrs["dtype"] == "float16"
    assert np.array_equal(store.latents[:], means.astype(np.float16))
    np.testing.assert_allclose(store.attrs["std"], store.latents[:].astype(np.float64).std(axis=(0, 2, 3)), rtol=1e-6)


# A stage run that hangs right after its first batch reached the store, so the test kills it mid-write.
HANG_AFTER_FIRST_BATCH = """
import sys, time
from pathlib import Path
from mdgen.stages import extract_latents
from mdgen.data.latents import LatentStoreWriter

append = LatentStoreWriter.append
def append_then_hang(self, latents):
    append(self, latents)
    Path(sys.argv[1]).write_text(str(self.path))
    time.sleep(600)
LatentStoreWriter.append = append_then_hang
extract_latents.main(sys.argv[2:])
"""


@pytest.mark.fault
def test_an_interrupted_run_leaves_no_store_and_the_rerun_cleans_up(tmp_path, tiny_manifest, vae_file, capsys):
    out_dir = tmp_path / "latents"
    writing = tmp_path / "writing"
    args = [
        "--manifest",
        str(tiny_manifest),
        "--vae",
        str(vae_file),
        "--out-dir",
        str(out_dir),
        "--config",
        json.dumps(tiny_config(latents={"batch_size": 4, "chunk_size": 2})),
    ]
    process = subprocess.Popen([sys.executable, "-c", HANG_AFTER_FIRST_BATCH, str(writing), *args])
    try:
        deadline = time.monotonic() + 120
        while not writing.exists():
            assert process.poll() is None, f"the stage exited with {process.returncode} before writing"
            assert time.monotonic() < deadline, "the stage wrote no batch within 120 s"
            time.sleep(0.05)
    finally:
        process.kill()
        process.wait()

    partial = list(out_dir.glob(".train.zarr.incomplete-*"))
    assert [str(p) for p in partial] == [writing.read_text()]
    assert len(list((partial[0] / "latents" / "c").iterdir())) == 2  # two chunks of 2 of the first batch of 4
    assert not (out_dir / "train.zarr").exists() and not (out_dir / "val.zarr").exists()
    with pytest.raises(LatentStoreError, match="no latent store.*rerun extract_latents"):
        open_latent_store(out_dir / "train.zarr")
    with pytest.raises(LatentStoreError, match="not a complete latent store: it lacks attribute 'mean'"):
        open_latent_store(partial[0])

    assert extract_latents.main(args) == 0
    output = capsys.readouterr().out
    assert f"Removed {partial[0]}, left by an interrupted run" in output
    assert sorted(p.name for p in out_dir.iterdir()) == ["train.zarr", "val.zarr"]
    assert open_latent_store(out_dir / "train.zarr").latents.shape == (12, 4, 16, 16)


def test_atomic_directory_replaces_only_after_success(tmp_path):
    target = tmp_path / "train.zarr"
    with atomic_directory(target) as tmp:
        (tmp / "version").write_text("1")
    with pytest.raises(RuntimeError, match="interrupted"), atomic_directory(target) as tmp:
        (tmp / "version").write_text("2")
        raise RuntimeError("interrupted")
    assert (target / "version").read_text() == "1"
    with atomic_directory(target) as tmp:
        (tmp / "version").write_text("3")
    assert (target / "version").read_text() == "3"
    assert [p.name for p in tmp_path.iterdir()] == ["train.zarr"]  # no temporary or replaced folder left


@pytest.mark.fault
def test_dataset_refuses_a_store_of_another_vae(means_dir, vae_file, tmp_path):
    assert sha256_file(vae_file, block_size=1000) == hashlib.sha256(vae_file.read_bytes()).hexdigest()
    assert len(LatentDataset(means_dir / "train.zarr", vae_path=vae_file)) == 12
    other = tmp_path / "other.pt"
    config = tiny_config()
    save_official(other, VAVAE(**vavae_kwargs(config)), {"model": vavae_kwargs(config), **config})
    with pytest.raises(LatentStoreError) as error:
        LatentDataset(means_dir / "train.zarr", vae_path=other)
    message = str(error.value)
    assert sha256_file(vae_file) in message and sha256_file(other) in message
    assert "rerun extract_latents" in message


def test_chunked_reading_gives_the_in_memory_items(means_dir):
    store = open_latent_store(means_dir / "train.zarr")
    in_memory = LatentDataset(means_dir / "train.zarr")
    chunked = LatentDataset(means_dir / "train.zarr", memory_limit_mb=0)
    assert in_memory.in_memory and not chunked.in_memory
    assert in_memory.mean.shape == in_memory.std.shape == (4,) and in_memory.latents_shape == (4, 16, 16)
    for index in np.random.default_rng(0).permutation(12).tolist() + [-1]:
        latent, label = chunked[index]
        assert latent.dtype == torch.float32 and label.dtype == torch.int64
        torch.testing.assert_close(latent, in_memory[index][0], rtol=0, atol=0)
        assert label == in_memory[index][1] == int(store.labels[index])
    expected = (store.latents[:] - np.array(store.attrs["mean"])[:, None, None]) / np.array(store.attrs["std"])[
        :, None, None
    ]
    np.testing.assert_allclose(in_memory[7][0].numpy(), expected[7], rtol=1e-6, atol=1e-6)
    sequential = LatentDataset(means_dir / "train.zarr", memory_limit_mb=0)
    for index in range(12):
        sequential[index]
    assert sequential.chunks_read == 3  # chunks of 5: [0, 5), [5, 10), [10, 12), each read once


@pytest.mark.fault
def test_store_that_disagrees_with_the_manifest_is_an_error(means_dir, tiny_manifest, tmp_path):
    rows = read_manifest(tiny_manifest, "train")
    store = open_latent_store(means_dir / "train.zarr")
    verify_latent_store(store, rows, "train")
    missing_one = [row for row in rows if row["path"] != rows[5]["path"]]
    with pytest.raises(LatentStoreError, match="user_01 has 3 images in the manifest and 4 latents in the store"):
        verify_latent_store(store, missing_one, "train")

    corrupted = tmp_path / "train.zarr"
    shutil.copytree(means_dir / "train.zarr", corrupted)
    zarr.open_array(corrupted / "labels", mode="r+")[0] = 2
    with pytest.raises(LatentStoreError) as error:
        verify_latent_store(open_latent_store(corrupted), rows, "train")
    assert "user_00 has 4 images in the manifest and 3 latents in the store" in str(error.value)
    assert "user_02 has 4 images in the manifest and 5 latents in the store" in str(error.value)
    swapped = [rows[1], rows[0], *rows[2:]]  # same counts, another order
    with pytest.raises(LatentStoreError, match="paths leave the manifest order at index 0"):
        verify_latent_store(store, swapped, "train")
    with pytest.raises(LatentStoreError, match="split attribute is 'train', expected 'val'"):
        verify_latent_store(store, read_manifest(tiny_manifest, "val"), "val")


def test_datamodule_shuffles_train_and_keeps_val_order(means_dir, samples_dir, vae_file):
    data = LatentDataModule(means_dir / "train.zarr", means_dir / "val.zarr", batch_size=5, vae_path=vae_file)
    data.setup("fit")
    train, val = data.train_dataloader(), data.val_dataloader()
    assert isinstance(train.sampler, RandomSampler) and isinstance(val.sampler, SequentialSampler)
    assert [len(latents) for latents, _ in train] == [5, 5]  # 12 latents: the partial batch is dropped
    batches = list(val)
    assert [len(latents) for latents, _ in batches] == [5, 1]
    assert torch.cat([labels for _, labels in batches]).tolist() == data.val.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert batches[0][0].shape == (5, 4, 16, 16)

    mixed = LatentDataModule(means_dir / "train.zarr", samples_dir / "val.zarr", batch_size=5)
    with pytest.raises(LatentStoreError, match="different extractions.*mean, std, sample_posterior"):
        mixed.setup("fit")
