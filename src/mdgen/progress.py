"""Progress a person can follow: a live bar in a terminal, plain periodic lines in a log file.

Snakemake sends each stage's output to `results/logs/<rule>.log`, where tqdm's carriage-return
repaints pile up into one unreadable line. So every long loop and every training run reports
through here:

    for batch in progress(loader, desc="encoding train", unit="batch"):
        ...
    trainer = pl.Trainer(..., **training_progress())   # mdgen.training.progress: a bar, or a line every 30 s

In a terminal it is tqdm's bar with its time estimate; elsewhere the same text, one line at most
every `LOG_INTERVAL_S` seconds (and the final one), each ending in a newline.
"""

from __future__ import annotations

import io
import os
import sys

from tqdm import tqdm

LOG_INTERVAL_S = 30.0


def say(*args, **kwargs) -> None:
    """print(), flushed, on rank 0 only: how every stage speaks, so a DDP run's log says each thing once."""
    if rank() == 0:
        print(*args, **{"flush": True, **kwargs})


def rank() -> int:
    """This process's rank: Lightning's where a stage has loaded it (a DDP strategy sets it when it
    starts), else the launcher's, from the environment variables Lightning reads. Lightning is not
    imported here: stages that do not train (validation, simulation) start without torch."""
    rank_zero = sys.modules.get("lightning_fabric.utilities.rank_zero")
    if rank_zero is not None:
        return rank_zero.rank_zero_only.rank
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if key in os.environ:
            return int(os.environ[key])
    return 0


def interactive() -> bool:
    """Whether stdout is a terminal (a person watching), not a file or a pipe."""
    return sys.stdout.isatty()


class _LineWriter(io.TextIOBase):
    """Turns tqdm's carriage-return repaints into whole lines on stdout."""

    def write(self, text: str) -> int:
        line = text.replace("\r", "").strip("\n")
        if line.strip():
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        return len(text)


def progress(iterable=None, **kwargs) -> tqdm:
    """tqdm over `iterable` (or a manual bar with total=...): a bar in a terminal, lines in a log."""
    if interactive():
        return tqdm(iterable, file=sys.stdout, **kwargs)
    return tqdm(
        iterable, file=_LineWriter(), mininterval=LOG_INTERVAL_S, maxinterval=LOG_INTERVAL_S, ascii=True, **kwargs
    )
