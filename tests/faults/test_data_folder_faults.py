"""Faults in the data folder: validate_dataset never leaves the data root, never opens anything but a
regular file, reports each such entry by name, and changes nothing (issue: faults survived).

Each case builds a valid tree, adds one fault, and checks: under `on_bad_file: fail` the run stops
with the entry named in the log and in report.json; under `skip` the manifest holds exactly the good
files; the data folder is unchanged (checked without reading anything but regular files).
"""

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_config
from test_validate_dataset import make_tree, NUM_CLASSES, save_image, SIZE

from mdgen.data.validation import read_manifest
from mdgen.stages.validate_dataset import main

pytestmark = pytest.mark.fault  # every case here injects a fault (docs/faults.md)


def snapshot(root):
    """Every entry's type, link target and, for regular files, content: never opens a FIFO or socket."""
    entries = {}
    for folder, dirs, names in os.walk(root):
        for name in dirs + names:
            path = os.path.join(folder, name)
            info = os.lstat(path)
            link = os.readlink(path) if os.path.islink(path) else None
            content = Path(path).read_bytes() if os.path.isfile(path) and not link else None
            entries[path] = (info.st_mode, link, content)
    return entries


@pytest.fixture
def data(tmp_path):
    root = tmp_path / "raw"
    return str(root), make_tree(str(root))


def validate(tmp_path, root, on_bad_file):
    out = tmp_path / f"out_{on_bad_file}"
    config = tiny_config(data={"num_classes": NUM_CLASSES, "size": SIZE, "channels": 3, "on_bad_file": on_bad_file})
    argv = ["--root", root, "--manifest", str(out / "manifest.csv"), "--report", str(out / "report.json")]
    return argv + ["--config", json.dumps(config)], out


def run(tmp_path, root, on_bad_file, capsys):
    before = snapshot(root)
    argv, out = validate(tmp_path, root, on_bad_file)
    rc = main(argv)
    assert snapshot(root) == before
    manifest = out / "manifest.csv"
    rows = list(csv.DictReader(manifest.read_text().splitlines())) if manifest.exists() else None
    return rc, rows, json.loads((out / "report.json").read_text()), capsys.readouterr().out


def assert_reported(tmp_path, capsys, root, good, bad, kind, words):
    rc, rows, report, log = run(tmp_path, root, "fail", capsys)
    assert rc == 1 and rows is None
    problems = [p for p in report["problems"] if p["path"] == str(bad)]
    assert [p["kind"] for p in problems] == [kind]
    assert f"{bad}: " in log and all(word in problems[0]["message"] for word in words)
    rc, rows, report, log = run(tmp_path, root, "skip", capsys)
    assert rc == 0 and sorted(r["path"] for r in rows) == sorted(good)


def test_a_file_linked_from_outside_the_root_is_not_followed(data, tmp_path, capsys):
    root, good = data
    outside = save_image(str(tmp_path / "elsewhere" / "secret.png"))
    link = os.path.join(root, "train", "user_00", "linked.png")
    os.symlink(outside, link)
    assert_reported(tmp_path, capsys, root, good, link, "outside_root", ["outside the data root", outside])


def test_a_user_folder_linked_from_outside_the_root_is_not_followed(data, tmp_path, capsys):
    root, good = data
    elsewhere = tmp_path / "elsewhere" / "user_02"
    for i in range(2):
        save_image(str(elsewhere / f"{i}.png"))
    moved = os.path.join(root, "train", "user_02")
    for name in os.listdir(moved):  # user_02's own train images are replaced by the link
        os.remove(os.path.join(moved, name))
    os.rmdir(moved)
    os.symlink(elsewhere, moved)
    rc, rows, report, log = run(tmp_path, root, "skip", capsys)
    assert rc == 1  # user_02 has no train image left: fatal even under skip
    kinds = {p["kind"] for p in report["problems"] if p["path"] == moved}
    assert kinds == {"outside_root", "user_missing_train"} and f"{moved}: a symbolic link to {elsewhere}" in log


def test_a_split_linked_from_outside_the_root_is_one_fatal_problem(data, tmp_path, capsys):
    root, _ = data
    os.rename(os.path.join(root, "val"), tmp_path / "val_elsewhere")
    os.symlink(tmp_path / "val_elsewhere", os.path.join(root, "val"))
    rc, rows, report, _ = run(tmp_path, root, "skip", capsys)
    assert rc == 1 and rows is None
    assert [p["kind"] for p in report["problems"]] == ["split_outside_root"]  # not one line per user


def test_a_link_inside_the_root_is_followed(data, tmp_path, capsys):
    root, good = data
    kept = save_image(os.path.join(root, "originals", "walk.png"))  # not a split: ignored, but inside the root
    link = os.path.join(root, "train", "user_01", "walk.png")
    os.symlink(kept, link)
    rc, rows, report, _ = run(tmp_path, root, "fail", capsys)
    assert rc == 0 and sorted(r["path"] for r in rows) == sorted(good + [link])


def test_a_link_to_nothing_is_reported(data, tmp_path, capsys):
    root, good = data
    link = os.path.join(root, "val", "user_01", "gone.png")
    os.symlink(os.path.join(root, "val", "user_01", "deleted.png"), link)
    assert_reported(tmp_path, capsys, root, good, link, "unreadable", ["a symbolic link to nothing"])


def test_a_fifo_is_never_opened(data, tmp_path):
    """Opening a FIFO blocks until a writer comes: the stage runs in a subprocess with a time limit."""
    root, good = data
    fifo = os.path.join(root, "train", "user_01", "pipe.png")
    os.mkfifo(fifo)
    argv, out = validate(tmp_path, root, "skip")
    result = subprocess.run(
        [sys.executable, "-m", "mdgen.stages.validate_dataset", *argv], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(r["path"] for r in read_manifest(out / "manifest.csv")) == sorted(good)
    report = json.loads((out / "report.json").read_text())
    assert [p["kind"] for p in report["problems"] if p["path"] == fifo] == ["not_a_file"]
    assert f"{fifo}: a named pipe (FIFO), not an image file" in result.stdout


def test_a_socket_is_reported_by_name(data, tmp_path, capsys):
    root, good = data
    path = os.path.join(root, "val", "user_00", "s.png")
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(path)
        assert_reported(tmp_path, capsys, root, good, path, "not_a_file", ["a socket", "never opened"])
    finally:
        server.close()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its permissions")
def test_an_unreadable_file_is_reported_by_name(data, tmp_path, capsys):
    root, good = data
    path = os.path.join(root, "train", "user_00", "locked.png")
    save_image(path)
    os.chmod(path, 0)
    try:
        assert_reported(tmp_path, capsys, root, good, path, "unreadable", ["cannot be read", "permission"])
    finally:
        os.chmod(path, 0o644)


def test_names_with_spaces_and_non_ascii_letters_round_trip(data, tmp_path, capsys):
    root, good = data
    odd = save_image(os.path.join(root, "train", "user_02", "Gang am Fluß, Lauf 2 (é).png"))
    rc, rows, _, _ = run(tmp_path, root, "fail", capsys)
    assert rc == 0 and sorted(r["path"] for r in rows) == sorted(good + [odd])
    manifest = tmp_path / "out_fail" / "manifest.csv"
    assert odd in {row["path"] for row in read_manifest(manifest)}
