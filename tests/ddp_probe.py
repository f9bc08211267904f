"""Run a stage script under DDP and record, per rank, what that rank saw (for tests/test_ddp.py).

    torchrun --standalone --nproc-per-node 2 tests/ddp_probe.py RECORD_DIR mdgen.stages.train_dit ARGS...

Writes RECORD_DIR/rank<R>.json: the train items the rank's data loader fetched (in order) and the
rank's own values of the logged training loss (before Lightning averages them over the ranks).
The stage runs unchanged; the probe only wraps the dataset getters and LightningModule.log.
"""

import atexit
import importlib
import json
import os
import sys
from pathlib import Path

import pytorch_lightning as pl

from mdgen.data.dataset import MicroDopplerDataset
from mdgen.data.latents import LatentDataset

LOSS_KEYS = {"train/rec_loss", "train/loss"}  # the VA-VAE's and the DiT's

record_dir, stage, *stage_args = sys.argv[1:]
record = {"items": [], "losses": []}


def recording(getter, identify):
    def wrapped(self, index):
        key = identify(self, index)
        if "train" in key:
            record["items"].append(key)
        return getter(self, index)

    return wrapped


MicroDopplerDataset.__getitem__ = recording(MicroDopplerDataset.__getitem__, lambda ds, i: ds.rows[i]["path"])
LatentDataset.__getitem__ = recording(LatentDataset.__getitem__, lambda ds, i: f"{ds.path.name}[{int(i)}]")

log = pl.LightningModule.log


def recording_log(self, name, value, *args, **kwargs):
    if name in LOSS_KEYS and self.training:
        record["losses"].append(float(value))
    return log(self, name, value, *args, **kwargs)


pl.LightningModule.log = recording_log


@atexit.register
def save():
    path = Path(record_dir) / f"rank{os.environ.get('RANK', '0')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))


sys.exit(importlib.import_module(stage).main(stage_args))
