"""Shared training helpers: resumable work folders and metrics joined across resumes."""

import csv

import torch

from mdgen.training import collect_metrics, prepare_work_dir


def write_run(path, rows, columns):
    path.parent.mkdir(parents=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def test_metrics_of_a_resumed_run_replace_what_the_interrupted_run_logged_after_the_checkpoint(tmp_path):
    logs = tmp_path / "logs"
    write_run(
        logs / "version_0/metrics.csv",
        [{"epoch": 0, "step": s, "loss": 10 - s} for s in range(10)],
        ["epoch", "step", "loss"],
    )
    write_run(
        logs / "version_1/metrics.csv",
        [{"epoch": 0, "step": s, "val": s} for s in range(6, 13)],
        ["epoch", "step", "val"],
    )
    (logs / "version_2").mkdir()  # a run interrupted before it logged anything
    collect_metrics(tmp_path, tmp_path / "metrics.csv")
    with open(tmp_path / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == list(range(13))
    assert rows[5]["loss"] == "5" and rows[5]["val"] == ""
    assert rows[6]["loss"] == "" and rows[6]["val"] == "6"


def test_work_dir_is_kept_for_the_same_config_and_cleared_for_another(tmp_path):
    work = tmp_path / "training"
    assert prepare_work_dir(work, {"lr": 1}) is None
    (work / "checkpoints").mkdir()
    torch.save({"global_step": 1}, work / "checkpoints" / "last.ckpt")
    assert prepare_work_dir(work, {"lr": 1}) == work / "checkpoints" / "last.ckpt"
    assert prepare_work_dir(work, {"lr": 2}) is None
    assert not (work / "checkpoints").exists()
