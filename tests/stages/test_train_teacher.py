"""The train_teacher stage, run for real: the spectrogram teacher learns the users of the train
split, records what it saw, loads strictly, and a teacher of another run is refused."""

import json

import pytest
import torch
from conftest import teach

from mdgen.data.validation import read_manifest
from mdgen.models.checkpoints import CheckpointMismatchError
from mdgen.models.teacher import images_fingerprint, load_teacher, TeacherMismatchError


def test_teacher_stage_learns_and_records_what_it_saw(teacher_file, tiny_manifest):
    out = teacher_file.parent
    summary = json.loads((out / "teacher.json").read_text())
    rows = read_manifest(tiny_manifest, "train")
    assert summary["saw"] == {
        "count": len(rows),
        "per_user": None,
        "subset_seed": None,
        "fingerprint": images_fingerprint(rows),
    }
    assert 0 <= summary["val_accuracy"] <= 1 and summary["train_accuracy"] > 1 / 3
    assert (out / "features.png").stat().st_size > 5_000
    teacher, saw = load_teacher(teacher_file, images_seen=rows)
    assert saw["paths"] == [row["path"] for row in rows]
    assert teacher.feature_dim == 32 and not teacher.training
    assert teacher(torch.zeros(1, 3, 32, 32), grid=(4, 4)).shape == (1, 32, 4, 4)


@pytest.mark.fault
def test_a_teacher_from_another_run_is_refused(teacher_file, tiny_manifest, tmp_path):
    rows = read_manifest(tiny_manifest, "train")
    with pytest.raises(TeacherMismatchError, match="another run, data set or low-data draw"):
        load_teacher(teacher_file, images_seen=rows[:-1])
    # A low-data teacher saw fewer images than a generator trained on all of them.
    assert teach(tiny_manifest, tmp_path, "--per-user", "2") == 0
    assert json.loads((tmp_path / "teacher.json").read_text())["saw"]["count"] == 3 * 2
    with pytest.raises(TeacherMismatchError, match="trained on 6 images"):
        load_teacher(tmp_path / "teacher.pt", images_seen=rows)


def test_teacher_loads_strictly(teacher_file, tmp_path):
    checkpoint = torch.load(teacher_file, weights_only=True)
    checkpoint["state_dict"]["net.extra.weight"] = checkpoint["state_dict"].pop("net.head.weight")
    torch.save(checkpoint, tmp_path / "renamed.pt")
    with pytest.raises(CheckpointMismatchError, match=r"net\.head\.weight[\s\S]*net\.extra\.weight"):
        load_teacher(tmp_path / "renamed.pt")
