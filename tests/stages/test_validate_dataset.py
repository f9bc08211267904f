"""Dataset validation on crafted trees: every problem is named, fails or is skipped, and no source file changes."""

import csv
import hashlib
import json
import os
import shutil
import struct
import time
import warnings
import zlib
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_config
from PIL import Image, ImageFile

from mdgen.data.validation import format_summary, validate_dataset
from mdgen.stages.validate_dataset import main

NUM_CLASSES, SIZE = 3, 32
rng = np.random.default_rng(0)


def random_pixels(shape, dtype=np.uint8, high=256):
    # fresh random content per image, so no two test images are accidental duplicates
    return rng.integers(0, high, shape, dtype=dtype)


def save_image(path, array=None, mode="RGB", size=(SIZE, SIZE), **save_kwargs):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if array is None:
        array = random_pixels((size[1], size[0], 3) if mode == "RGB" else (size[1], size[0]))
    Image.fromarray(array).save(path, **save_kwargs)
    return str(path)


def make_tree(root, mode="RGB", train=2, val=1):
    """A valid tree: NUM_CLASSES users with `train` training and `val` validation images each."""
    paths = []
    for split, n in (("train", train), ("val", val)):
        for user in range(NUM_CLASSES):
            paths += [
                save_image(os.path.join(root, split, f"user_{user:02d}", f"{i}.png"), mode=mode) for i in range(n)
            ]
    return paths


def snapshot(root):
    files = [Path(folder, name) for folder, _, names in os.walk(root) for name in names]
    return {str(f): (f.read_bytes(), f.stat().st_mtime_ns) for f in files}


@pytest.fixture
def root(tmp_path):
    return str(tmp_path / "raw")


@pytest.fixture
def run_stage(tmp_path, root, capsys):
    """Run the stage script; check the source tree is byte-identical (same mtimes) afterwards."""

    def run(*args, on_bad_file="fail", channels=3):
        """args: (data key, value) pairs, e.g. ("max_pixels", 100)."""
        before = snapshot(root)
        out = tmp_path / f"out_{on_bad_file}_{len(os.listdir(tmp_path))}"
        manifest, report = out / "manifest.csv", out / "report.json"
        data = {"num_classes": NUM_CLASSES, "size": SIZE, "channels": channels, "on_bad_file": on_bad_file}
        config = json.dumps(tiny_config(data=data | dict(args)))
        rc = main(["--root", root, "--manifest", str(manifest), "--report", str(report), "--config", config])
        assert snapshot(root) == before
        rows = list(csv.DictReader(manifest.read_text().splitlines())) if manifest.exists() else None
        return rc, rows, json.loads(report.read_text()), capsys.readouterr().out

    return run


def kinds_at(report, path):
    return {p["kind"] for p in report["problems"] if p["path"] == str(path)}


def assert_rejected(run_stage, good, bad, kind, *args, **kwargs):
    """Under fail: exit 1, no manifest, the file named in report and log. Under skip: excluded."""
    rc, rows, report, log = run_stage(*args, on_bad_file="fail", **kwargs)
    assert rc == 1 and rows is None
    assert kinds_at(report, bad) == {kind}
    assert report["excluded"] == [{"path": str(bad), "kind": kind}]
    assert f"{bad}: " in log and "data.on_bad_file: skip" in log

    rc, rows, report, log = run_stage(*args, on_bad_file="skip", **kwargs)
    assert rc == 0
    assert sorted(r["path"] for r in rows) == sorted(good)
    return report


def assert_accepted_with_warning(run_stage, good, path, kind, **kwargs):
    rc, rows, report, _ = run_stage(on_bad_file="fail", **kwargs)
    assert rc == 0
    assert sorted(r["path"] for r in rows) == sorted(good + [str(path)])
    assert kinds_at(report, path) == {kind}
    assert all(p["severity"] == "warning" for p in report["problems"])
    return report, {r["path"]: r for r in rows}[str(path)]


# ---------------------------------------------------------------------------------------------
# Clean tree, outputs, determinism
# ---------------------------------------------------------------------------------------------


def test_clean_tree_writes_every_file_to_the_manifest(run_stage, root):
    paths = make_tree(root)
    rc, rows, report, log = run_stage()
    assert rc == 0 and report["passed"] is True and report["problems"] == []
    assert len(rows) == 9 and [r["path"] for r in rows] == sorted(paths)
    for row in rows:
        assert row["sha256"] == hashlib.sha256(Path(row["path"]).read_bytes()).hexdigest()
        assert (row["width"], row["height"], row["mode"]) == ("32", "32", "RGB")
        assert row["split"] == row["path"].split(os.sep)[-3] and row["user_id"] == row["path"].split(os.sep)[-2]
    assert report["counts"] == {f"user_{u:02d}": {"train": 2, "val": 1} for u in range(3)}
    assert report["totals"]["valid_images"] == {"train": 6, "val": 3}
    assert "No problems found." in log


def test_relative_root_stays_relative(tmp_path, monkeypatch):
    make_tree(tmp_path / "raw")
    monkeypatch.chdir(tmp_path)
    result = validate_dataset("raw", num_classes=NUM_CLASSES, channels=3, size=SIZE, max_pixels=10**6)
    assert result.rows[0]["path"] == os.path.join("raw", "train", "user_00", "0.png")


def test_hidden_and_extra_entries_are_ignored_but_reported(run_stage, root):
    paths = make_tree(root)
    for hidden in ("train/user_00/.DS_Store", ".git/config"):
        os.makedirs(os.path.dirname(os.path.join(root, hidden)), exist_ok=True)
        Path(os.path.join(root, hidden)).write_text("x")
    Path(os.path.join(root, "README.txt")).write_text("notes")
    rc, rows, report, _ = run_stage()
    assert rc == 0 and len(rows) == len(paths) and report["problems"] == []
    assert report["ignored"] == [os.path.join(root, "README.txt")]
    assert sorted(report["hidden"]) == sorted(
        [os.path.join(root, ".git"), os.path.join(root, "train/user_00/.DS_Store")]
    )


def build_messy_tree(root):
    make_tree(root)
    for i in range(12):  # more than the 10 per kind that a summary shows of a long list
        Path(os.path.join(root, "train", "user_00", f"text_{i:02d}.png")).write_text("not an image")
        save_image(os.path.join(root, "train", "user_01", f"wide_{i:02d}.png"), size=(SIZE, SIZE - 8))
    shutil.copy(os.path.join(root, "train", "user_02", "0.png"), os.path.join(root, "val", "user_02", "leak.png"))
    save_image(os.path.join(root, "val", "user_00", "small.png"), size=(8, 8))


def test_workers_give_the_same_result_as_one_process(root):
    build_messy_tree(root)
    kwargs = dict(num_classes=NUM_CLASSES, channels=3, size=SIZE, max_pixels=10**6)
    one, two = validate_dataset(root, workers=1, **kwargs), validate_dataset(root, workers=2, **kwargs)
    assert len(one.problems) == 12 + 12 + 1 + 1  # texts, non-square, leakage, small
    assert one.rows == two.rows
    assert [asdict(p) for p in one.problems] == [asdict(p) for p in two.problems]


def test_summary_lists_every_error_under_fail_and_abbreviates_warnings(run_stage, root):
    build_messy_tree(root)
    rc, rows, report, log = run_stage()
    assert rc == 1 and rows is None
    errors = [p for p in report["problems"] if p["severity"] == "error"]
    assert len(errors) == 13
    for p in errors:
        assert f"{p['path']}: {p['message']}" in log
    non_square = [p for p in report["problems"] if p["kind"] == "non_square"]
    assert len(non_square) == 12
    assert sum(p["path"] in log for p in non_square) == 10 and "... and 2 more (see " in log

    result = validate_dataset(root, num_classes=NUM_CLASSES, channels=3, size=SIZE, max_pixels=10**6)
    assert "not_an_image: 12" in format_summary(result, "skip")
    assert format_summary(result, "skip").count("text_") == 10


# ---------------------------------------------------------------------------------------------
# Structure
# ---------------------------------------------------------------------------------------------


def test_missing_split_fails_even_with_skip(run_stage, root):
    make_tree(root, val=0)
    for on_bad_file in ("fail", "skip"):
        rc, rows, report, log = run_stage(on_bad_file=on_bad_file)
        assert rc == 1 and rows is None
        assert [(p["kind"], p["path"], p["fatal"]) for p in report["problems"]] == [
            ("missing_split", os.path.join(root, "val"), True)
        ]  # and no per-user noise for val
        assert "cannot help" in log


def test_folder_not_named_user_nn_is_excluded(run_stage, root):
    good = make_tree(root)
    save_image(os.path.join(root, "train", "person_01", "0.png"))
    bad_folder = os.path.join(root, "train", "person_01")
    report = assert_rejected(run_stage, good, bad_folder, "bad_folder")
    assert "expected user_NN" in report["problems"][0]["message"]


def test_non_canonical_user_number_is_a_bad_folder(root):
    make_tree(root)
    save_image(os.path.join(root, "train", "user_001", "0.png"))
    result = validate_dataset(root, num_classes=NUM_CLASSES, channels=3, size=SIZE, max_pixels=10**6)
    [problem] = result.problems
    assert problem.kind == "bad_folder" and "expected user_01" in problem.message


def test_user_index_out_of_range_is_excluded(run_stage, root):
    good = make_tree(root)
    save_image(os.path.join(root, "val", "user_03", "0.png"))
    report = assert_rejected(run_stage, good, os.path.join(root, "val", "user_03"), "user_out_of_range")
    assert "0..2 (num_classes=3)" in report["problems"][0]["message"]


def test_file_directly_in_split_is_excluded(run_stage, root):
    good = make_tree(root)
    bad = save_image(os.path.join(root, "train", "loose.png"))
    assert_rejected(run_stage, good, bad, "not_in_user_folder")


def test_user_missing_from_train_fails_even_with_skip(run_stage, root):
    make_tree(root)
    shutil.rmtree(os.path.join(root, "train", "user_01"))
    for on_bad_file in ("fail", "skip"):
        rc, rows, report, log = run_stage(on_bad_file=on_bad_file)
        assert rc == 1 and rows is None
        assert [p["kind"] for p in report["problems"]] == ["user_missing_train"]
        assert "user_01 has 0 valid images in train/: every user needs at least one training image" in log


def test_user_whose_only_val_file_is_bad_fails_even_with_skip(run_stage, root):
    make_tree(root)
    bad = os.path.join(root, "val", "user_02", "0.png")
    Path(bad).write_bytes(b"")  # now 0 bytes
    for on_bad_file in ("fail", "skip"):
        rc, rows, report, log = run_stage(on_bad_file=on_bad_file)
        assert rc == 1 and rows is None
        assert sorted(p["kind"] for p in report["problems"]) == ["empty_file", "user_missing_val"]
        assert "user_02 has 0 valid images in val/ (1 of its files were excluded" in log


def test_empty_user_folder_warns_and_the_missing_user_fails(run_stage, root):
    make_tree(root)
    os.remove(os.path.join(root, "val", "user_02", "0.png"))
    rc, rows, report, _ = run_stage(on_bad_file="skip")
    assert rc == 1 and rows is None
    assert {(p["kind"], p["severity"]) for p in report["problems"]} == {
        ("empty_folder", "warning"),
        ("user_missing_val", "error"),
    }
    assert kinds_at(report, os.path.join(root, "val", "user_02")) == {"empty_folder", "user_missing_val"}


# ---------------------------------------------------------------------------------------------
# Files that are not usable images
# ---------------------------------------------------------------------------------------------


def test_text_file_named_png(run_stage, root):
    good = make_tree(root)
    bad = os.path.join(root, "train", "user_00", "notes.png")
    Path(bad).write_text("these are my notes")
    report = assert_rejected(run_stage, good, bad, "not_an_image")
    assert "b'these are my not" in report["problems"][0]["message"]


def test_zero_byte_file(run_stage, root):
    good = make_tree(root)
    bad = os.path.join(root, "val", "user_01", "empty.png")
    Path(bad).write_bytes(b"")
    assert_rejected(run_stage, good, bad, "empty_file")


@pytest.mark.fault
def test_truncated_png(run_stage, root):
    good = make_tree(root)
    data = Path(good[0]).read_bytes()
    bad = os.path.join(root, "train", "user_00", "truncated.png")
    Path(bad).write_bytes(data[: len(data) // 2])
    assert_rejected(run_stage, good, bad, "corrupt_image")


def idat_data_range(png: bytes):
    start = png.index(b"IDAT") + 4
    return start, start + struct.unpack(">I", png[start - 8 : start - 4])[0]


@pytest.mark.fault
def test_corrupt_png_of_the_right_length(run_stage, root):
    good = make_tree(root)
    data = bytearray(Path(good[1]).read_bytes())
    start, end = idat_data_range(bytes(data))
    middle = (start + end) // 2
    data[middle : middle + 8] = bytes(b ^ 0xFF for b in data[middle : middle + 8])
    bad = os.path.join(root, "train", "user_00", "flipped.png")
    Path(bad).write_bytes(bytes(data))
    assert os.path.getsize(bad) == os.path.getsize(good[1])
    assert_rejected(run_stage, good, bad, "corrupt_image")


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def test_decompression_bomb_is_rejected_from_its_header_without_decoding(run_stage, root, monkeypatch):
    good = make_tree(root)
    bad = os.path.join(root, "train", "user_02", "bomb.png")
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)  # 10^10 grey pixels
    Path(bad).write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 1000))
        + png_chunk(b"IEND", b"")
    )
    assert os.path.getsize(bad) < 200

    decoded_sizes = []
    original_load = ImageFile.ImageFile.load
    monkeypatch.setattr(
        ImageFile.ImageFile, "load", lambda self: decoded_sizes.append(self.size) or original_load(self)
    )
    limit = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL's own bomb warning would fail the test
        start = time.perf_counter()
        report = assert_rejected(run_stage, good, bad, "too_large")
        assert time.perf_counter() - start < 5
    assert (100_000, 100_000) not in decoded_sizes and len(decoded_sizes) > 0
    assert limit == Image.MAX_IMAGE_PIXELS
    assert "100000x100000 = 10,000,000,000 pixels" in report["problems"][0]["message"]


def test_normal_image_above_max_pixels(run_stage, root):
    good = make_tree(root)
    bad = save_image(os.path.join(root, "val", "user_00", "big.png"), size=(40, 40))  # 1600 pixels
    assert_rejected(run_stage, good, bad, "too_large", ("max_pixels", 1500))


# ---------------------------------------------------------------------------------------------
# Modes
# ---------------------------------------------------------------------------------------------


def test_opaque_rgba_is_accepted_with_a_warning(run_stage, root):
    good = make_tree(root)
    pixels = random_pixels((SIZE, SIZE, 4))
    pixels[..., 3] = 255
    path = save_image(os.path.join(root, "train", "user_00", "rgba.png"), pixels)
    report, row = assert_accepted_with_warning(run_stage, good, path, "mode_conversion")
    assert row["mode"] == "RGBA"  # the manifest keeps the original mode
    assert "alpha is fully opaque and is dropped" in report["problems"][0]["message"]


def test_transparent_rgba_is_rejected(run_stage, root):
    good = make_tree(root)
    pixels = random_pixels((SIZE, SIZE, 4))
    pixels[..., 3] = 255
    pixels[0, :5, 3] = 0
    bad = save_image(os.path.join(root, "train", "user_00", "rgba.png"), pixels)
    report = assert_rejected(run_stage, good, bad, "unsupported_mode")
    assert "5 of 1,024 pixels with alpha < 255" in report["problems"][0]["message"]


def test_palette_image_is_converted(run_stage, root):
    good = make_tree(root)
    image = Image.frombytes("P", (SIZE, SIZE), random_pixels((SIZE, SIZE), high=16).tobytes())
    image.putpalette(random_pixels(16 * 3).tolist())
    path = os.path.join(root, "val", "user_00", "palette.png")
    image.save(path)
    report, row = assert_accepted_with_warning(run_stage, good, path, "mode_conversion")
    assert row["mode"] == "P" and "P -> RGB" in report["problems"][0]["message"]


def test_16_bit_grey_is_converted(run_stage, root):
    good = make_tree(root, mode="L")
    path = save_image(os.path.join(root, "train", "user_01", "deep.png"), random_pixels((SIZE, SIZE), np.uint16, 65536))
    report, row = assert_accepted_with_warning(run_stage, good, path, "mode_conversion", channels=1)
    assert row["mode"] == "I;16" and "value/257" in report["problems"][0]["message"]


def test_cmyk_is_rejected_whatever_the_extension(run_stage, root):
    good = make_tree(root)
    bad = os.path.join(root, "train", "user_01", "print.png")
    Image.frombytes("CMYK", (SIZE, SIZE), random_pixels((SIZE, SIZE, 4)).tobytes()).save(bad, format="TIFF")
    report = assert_rejected(run_stage, good, bad, "unsupported_mode")
    assert "ICC profile" in report["problems"][0]["message"]


def test_grey_image_in_3_channel_config_is_replicated(run_stage, root):
    good = make_tree(root)
    path = save_image(os.path.join(root, "train", "user_02", "grey.png"), mode="L")
    report, row = assert_accepted_with_warning(run_stage, good, path, "mode_conversion")
    assert row["mode"] == "L" and "replicated" in report["problems"][0]["message"]


def test_colour_image_in_1_channel_config_is_rejected(run_stage, root):
    good = make_tree(root, mode="L")
    bad = save_image(os.path.join(root, "val", "user_01", "jet.png"), mode="RGB")
    report = assert_rejected(run_stage, good, bad, "unsupported_mode", channels=1)
    assert "set data.channels: 3" in report["problems"][0]["message"]


def test_colour_mapped_tree_passes_and_off_map_colours_are_rejected_by_name(run_stage, root):
    from mdgen.data.images import apply_colormap

    good = []
    for split, n in (("train", 2), ("val", 1)):
        for user in range(NUM_CLASSES):
            for i in range(n):
                jet = apply_colormap(random_pixels((SIZE, SIZE)), "jet")
                good.append(save_image(os.path.join(root, split, f"user_{user:02d}", f"{i}.png"), jet))
    rc, rows, report, _ = run_stage(("colormap", "jet"))
    assert rc == 0 and len(rows) == len(good) and report["settings"]["colormap"] == "jet"
    bad = save_image(os.path.join(root, "train", "user_01", "photo.png"))  # random colours: not jet
    report = assert_rejected(run_stage, good, bad, "not_colormapped", ("colormap", "jet"))
    assert "not colours of the jet map" in report["problems"][0]["message"]


def test_grey_rgb_in_1_channel_config_is_accepted(run_stage, root):
    good = make_tree(root, mode="L")
    grey = random_pixels((SIZE, SIZE))
    path = save_image(os.path.join(root, "val", "user_01", "grey_rgb.png"), np.stack([grey] * 3, axis=-1))
    report, row = assert_accepted_with_warning(run_stage, good, path, "mode_conversion", channels=1)
    assert row["mode"] == "RGB" and "RGB -> L" in report["problems"][0]["message"]


# ---------------------------------------------------------------------------------------------
# Duplicates, leakage, geometry
# ---------------------------------------------------------------------------------------------


def test_same_pixels_compressed_differently_are_duplicates(run_stage, root):
    good = make_tree(root)
    pixels = random_pixels((SIZE, SIZE, 3))
    kept = save_image(os.path.join(root, "train", "user_01", "a.png"), pixels, compress_level=9)
    copy = save_image(os.path.join(root, "train", "user_01", "b.png"), pixels, compress_level=0)
    assert Path(kept).read_bytes() != Path(copy).read_bytes()
    report = assert_rejected(run_stage, good + [kept], copy, "duplicate")
    assert kept in report["problems"][0]["message"]


def test_the_same_image_in_train_and_val_is_leakage(run_stage, root):
    good = make_tree(root)
    train_file = good[0]
    leak = os.path.join(root, "val", "user_00", "leak.png")
    shutil.copy(train_file, leak)
    report = assert_rejected(run_stage, good, leak, "leakage")
    assert train_file in report["problems"][0]["message"]


def test_small_image_is_kept_with_a_warning(run_stage, root):
    good = make_tree(root)
    path = save_image(os.path.join(root, "train", "user_00", "small.png"), size=(12, 12))
    report, row = assert_accepted_with_warning(run_stage, good, path, "small_image")
    assert (row["width"], row["height"]) == ("12", "12")
    assert "upsampled from 12x12 to 32x32" in report["problems"][0]["message"]


def test_non_square_image_is_kept_with_a_warning(run_stage, root):
    good = make_tree(root)
    path = save_image(os.path.join(root, "val", "user_02", "wide.png"), size=(48, 24))
    report, _ = assert_accepted_with_warning(run_stage, good, path, "non_square")
    assert "48x24" in report["problems"][0]["message"] and "aspect ratio changes" in report["problems"][0]["message"]
