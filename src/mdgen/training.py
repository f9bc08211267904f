"""What every training stage shares: resumable work folders, the Trainer, and their metrics.

A stage keeps its resumable state (Lightning's last.ckpt) in a work folder that is not a
Snakemake output, so a rerun after an interruption continues; the folder remembers the
configuration it belongs to, so a changed configuration starts over instead.
"""

from __future__ import annotations

import csv
import json
import shutil
import time
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.loggers import CSVLogger

from mdgen.config import config_hash
from mdgen.io import atomic_output


def prepare_work_dir(work_dir: Path, config: dict) -> Path | None:
    """The checkpoint to resume from, if the saved state belongs to this configuration."""
    stamp = work_dir / "config.json"
    fingerprint = config_hash(config)
    if stamp.exists() and json.loads(stamp.read_text()).get("hash") != fingerprint:
        print(f"The configuration changed since {work_dir} was written: starting over.")
        shutil.rmtree(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps({"hash": fingerprint, "config": config}, indent=1))
    last = work_dir / "checkpoints" / "last.ckpt"
    return last if last.exists() else None


def trainer_from_config(trainer_config: dict, work_dir: Path, callbacks: list, **overrides) -> pl.Trainer:
    """A Trainer from a config's `trainer` section, logging to a new CSV version per run."""
    settings = dict(
        accelerator=trainer_config["accelerator"],
        devices=trainer_config["devices"],
        num_nodes=trainer_config["num_nodes"],
        precision=trainer_config["precision"],
        max_epochs=trainer_config["max_epochs"],
        max_steps=trainer_config["max_steps"],
        check_val_every_n_epoch=trainer_config["check_val_every_n_epoch"],
        log_every_n_steps=trainer_config["log_every_n_steps"],
        default_root_dir=work_dir,
        logger=CSVLogger(work_dir, name="logs"),
        callbacks=callbacks,
    )
    return pl.Trainer(**(settings | overrides))


def fit(trainer: pl.Trainer, module: pl.LightningModule, datamodule, resume_from: Path | None, what: str) -> float:
    """Say where and how training runs, run it (resuming from `resume_from` when given), return its seconds."""
    device = trainer.accelerator.__class__.__name__.removesuffix("Accelerator")
    print(f"Training {what} on {device} × {trainer.num_devices}, precision {trainer.precision}")
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from)
    return time.perf_counter() - start


def collect_metrics(work_dir: Path, out_csv: Path) -> None:
    """Join the metrics of every run (the first one and each resume) into one CSV.

    A resumed run restarts from its checkpoint's step: rows an earlier run logged from that step
    on were lost with the interruption, and the resumed run's rows replace them.
    """
    runs = []
    for path in sorted((work_dir / "logs").glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name[8:])):
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        if rows:
            runs.append(rows)
    merged = []
    for i, rows in enumerate(runs):
        resumed_at = float(runs[i + 1][0]["step"]) if i + 1 < len(runs) else float("inf")
        merged += [row for row in rows if float(row["step"]) < resumed_at]
    columns = list(dict.fromkeys(key for row in merged for key in row)) or ["epoch", "step"]
    with atomic_output(out_csv) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(merged)
