"""Shared training helpers: resumable work folders and metrics joined across resumes."""

import csv
import json

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


def test_adam_runs_fused_except_under_mixed_precision_where_lightning_clips_and_unscales():
    import pytorch_lightning as pl
    from conftest import tiny_config

    from mdgen.config import load_config
    from mdgen.models.lightningdit import dit_kwargs
    from mdgen.training import fused_adam
    from mdgen.training.dit import DiTTraining

    config = load_config(json.dumps(tiny_config()))  # with the schema's defaults, as a stage reads it
    module = DiTTraining(config, dit_kwargs(config, (4, 2, 2)))
    module.trainer = pl.Trainer(accelerator="cpu", precision="32-true", logger=False, enable_checkpointing=False)
    optimizer = module.configure_optimizers()
    assert optimizer.defaults["fused"] is True
    assert optimizer.defaults["betas"] == (0.9, config["dit"]["optimizer"]["beta2"])

    class Trainer:  # fp16 mixed precision needs a GPU; only the trainer's precision matters here
        precision = "16-mixed"

    assert fused_adam(Trainer()) is False  # Lightning's GradScaler unscales (and clips) before the step
    module.trainer = pl.Trainer(accelerator="cpu", precision="bf16-mixed", logger=False, enable_checkpointing=False)
    assert module.configure_optimizers().defaults["fused"] is False  # Lightning would refuse to clip
