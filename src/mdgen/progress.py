"""Progress a person can follow: a live bar in a terminal, plain periodic lines in a log file.

Snakemake sends each stage's output to `results/logs/<rule>.log`, where tqdm's carriage-return
repaints pile up into one unreadable line. So every long loop and every training run reports
through here:

    for batch in progress(loader, desc="encoding train", unit="batch"):
        ...
    trainer = pl.Trainer(..., **training_progress())   # a bar, or a line every 30 s

In a terminal it is tqdm's bar with its time estimate; elsewhere the same text, one line at most
every `LOG_INTERVAL_S` seconds (and the final one), each ending in a newline.
"""

from __future__ import annotations

import io
import sys
import time

import pytorch_lightning as pl
from pytorch_lightning.callbacks import TQDMProgressBar
from pytorch_lightning.utilities import rank_zero_only
from tqdm import tqdm

LOG_INTERVAL_S = 30.0


def say(*args, **kwargs) -> None:
    """print(), flushed, on rank 0 only: how every stage speaks, so a DDP run's log says each thing once."""
    if rank_zero_only.rank == 0:
        print(*args, **{"flush": True, **kwargs})


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


class LogLines(pl.Callback):
    """Lightning's progress for a log file: one line every `interval_s` seconds of training with
    the step, the epoch, the logged metrics of the progress bar and the time left."""

    def __init__(self, interval_s: float = LOG_INTERVAL_S):
        self.interval_s = interval_s
        self._start = self._last = 0.0

    def on_train_start(self, trainer, pl_module):
        self._start = self._last = time.perf_counter()
        self._first_fraction = self.fraction_done(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        now = time.perf_counter()
        if now - self._last < self.interval_s or not trainer.is_global_zero:
            return
        self._last = now
        print(self.line(trainer, now), flush=True)

    def on_train_end(self, trainer, pl_module):
        if trainer.is_global_zero:
            print(self.line(trainer, time.perf_counter()), flush=True)

    @staticmethod
    def fraction_done(trainer) -> float:
        """How far training is, by whichever limit (max_steps or max_epochs) ends it first."""
        fractions = [0.0]
        if trainer.max_steps > 0:
            fractions.append(trainer.global_step / trainer.max_steps)
        batches = trainer.num_training_batches
        if trainer.max_epochs and trainer.max_epochs > 0 and batches not in (0, float("inf")):
            fractions.append(trainer.fit_loop.total_batch_idx / (trainer.max_epochs * batches))
        return min(max(fractions), 1.0)

    def line(self, trainer, now: float) -> str:
        elapsed, fraction = now - self._start, self.fraction_done(trainer)
        gained = fraction - self._first_fraction
        eta = f", about {elapsed * (1 - fraction) / gained / 60:.1f} min left" if gained > 0 else ""
        metrics = {k: v for k, v in trainer.progress_bar_metrics.items() if k != "v_num"}
        shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())
        return (
            f"step {trainer.global_step} (epoch {trainer.current_epoch}): {100 * fraction:.0f}% done, "
            f"{elapsed / 60:.1f} min{eta}" + (f"; {shown}" if shown else "")
        )


def training_progress() -> dict:
    """Trainer settings and callbacks for progress: Lightning's bar in a terminal, LogLines elsewhere."""
    if interactive():
        return {"enable_progress_bar": True, "callbacks": [TQDMProgressBar()]}
    return {"enable_progress_bar": False, "callbacks": [LogLines()]}
