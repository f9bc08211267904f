"""MicroDopplerDataset: what a model sees of the manifest."""

import numpy as np
import pytest
import torch
from PIL import Image

from mdgen.data.dataset import class_label, MicroDopplerDataset, per_user_subset
from mdgen.data.validation import read_manifest, validate_dataset, write_manifest


@pytest.fixture
def manifest(tmp_path):
    """Two users; one 48×40 grey image and one 32×32 RGB image per user and split."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for user in ("user_00", "user_01"):
            folder = tmp_path / "raw" / split / user
            folder.mkdir(parents=True)
            Image.fromarray(rng.integers(0, 256, (40, 48), dtype=np.uint8)).save(folder / "grey.png")
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / "rgb.png")
    result = validate_dataset(tmp_path / "raw", num_classes=2, channels=3, size=32, max_pixels=10**6)
    path = tmp_path / "manifest.csv"
    write_manifest(result.rows, path)
    return path


def test_items_are_chw_tensors_in_minus_one_one_with_labels(manifest):
    dataset = MicroDopplerDataset(manifest, "train", size=32, channels=3)
    assert len(dataset) == 4
    item = dataset[3]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert -1.0 <= item["image"].min() < -0.9 and 0.9 < item["image"].max() <= 1.0
    assert (item["user_id"], item["class_label"]) == ("user_01", 1)
    assert item["path"].endswith("train/user_01/rgb.png")


def test_pixels_map_linearly_to_minus_one_one_without_resize(manifest):
    dataset = MicroDopplerDataset(manifest, "val", size=32, channels=3)
    item = next(dataset[i] for i in range(len(dataset)) if dataset[i]["path"].endswith("rgb.png"))
    pixels = np.asarray(Image.open(item["path"]), dtype=np.float32)
    np.testing.assert_allclose(item["image"].permute(1, 2, 0).numpy(), pixels / 127.5 - 1, atol=1e-6)


def test_grey_images_are_resized_with_lanczos_and_replicated_for_three_channels(manifest):
    dataset = MicroDopplerDataset(manifest, "train", size=32, channels=3)
    item = next(dataset[i] for i in range(len(dataset)) if dataset[i]["path"].endswith("grey.png"))
    expected = np.asarray(Image.open(item["path"]).resize((32, 32), Image.LANCZOS), dtype=np.float32) / 127.5 - 1
    for channel in item["image"]:
        np.testing.assert_allclose(channel.numpy(), expected, atol=1e-6)


def test_one_channel_dataset_returns_one_channel(tmp_path, manifest):
    rows = [row for row in read_manifest(manifest) if row["path"].endswith("grey.png")]
    write_manifest(rows, tmp_path / "grey.csv")
    item = MicroDopplerDataset(tmp_path / "grey.csv", "val", size=16, channels=1)[0]
    assert item["image"].shape == (1, 16, 16)


def test_an_empty_split_is_an_error_that_names_it(manifest):
    with pytest.raises(ValueError, match="no images for split 'test'"):
        MicroDopplerDataset(manifest, "test", size=32, channels=3)


def test_class_label_is_the_folder_number():
    assert class_label("user_00") == 0 and class_label("user_30") == 30


def test_per_user_subset_draws_each_users_count_in_manifest_order():
    labels = np.array([0, 1, 0, 1, 2, 0, 2, 1, 2])
    drawn = per_user_subset(labels, 2, seed=3)
    assert drawn == sorted(drawn) and len(drawn) == 6
    assert all(np.sum(labels[drawn] == u) == 2 for u in (0, 1, 2))
    # A mapping with the same counts is the same draw; other counts per user are honoured.
    assert per_user_subset(labels, {0: 2, 1: 2, 2: 2}, seed=3) == drawn
    assert np.bincount(labels[per_user_subset(labels, {0: 3, 2: 1}, seed=3)]).tolist() == [3, 0, 1]
    assert per_user_subset(labels, 2, seed=4) != drawn or per_user_subset(labels, 2, seed=5) != drawn


def test_per_user_subset_refuses_more_than_a_user_has_with_the_advice():
    labels = np.array([0, 0, 1])
    with pytest.raises(ValueError, match="user_01 has 1 items, fewer than the 2 per user asked for: lower evaluation"):
        per_user_subset(labels, 2, seed=0)
    with pytest.raises(ValueError, match="user_00 has 2 items, fewer than the 3 .*: raise sample.per_user"):
        per_user_subset(labels, {0: 3}, seed=0, advice="raise sample.per_user")


def test_colour_mapped_files_are_seen_as_their_magnitude_inverted_before_resizing(tmp_path):
    from mdgen.data.dataset import to_uint8
    from mdgen.data.images import apply_colormap

    rng = np.random.default_rng(1)
    magnitudes = {}
    for split in ("train", "val"):
        for user in ("user_00", "user_01"):
            folder = tmp_path / "raw" / split / user
            folder.mkdir(parents=True)
            magnitudes[split, user] = rng.integers(33, 256, (48, 48), dtype=np.uint8)  # 48 px: resized to 32
            Image.fromarray(apply_colormap(magnitudes[split, user], "jet")).save(folder / "jet.png")
    result = validate_dataset(tmp_path / "raw", num_classes=2, channels=3, size=32, max_pixels=10**6, colormap="jet")
    write_manifest(result.rows, tmp_path / "manifest.csv")
    dataset = MicroDopplerDataset(tmp_path / "manifest.csv", "train", size=32, channels=3, colormap="jet")
    item = dataset[1]
    assert item["image"].shape == (1, 32, 32)
    # the magnitude is resized, not the colours (LANCZOS on jet colours would leave the map)
    expected = Image.fromarray(magnitudes["train", "user_01"]).resize((32, 32), Image.LANCZOS)
    np.testing.assert_array_equal(((item["image"][0] + 1) * 127.5).round().numpy(), np.asarray(expected))
    # and back through the map: RGB in the map's colours, like the files
    drawn = to_uint8(item["image"][None], "jet")[0]
    assert drawn.shape == (32, 32, 3) and (drawn == apply_colormap(np.asarray(expected), "jet")).all()
    with pytest.raises(ValueError, match="draws 1-channel magnitudes"):
        to_uint8(torch.zeros(1, 3, 4, 4), "jet")
