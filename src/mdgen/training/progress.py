"""Lightning's training progress for people: its bar in a terminal, a line every 30 s in a log file
(the rest of `mdgen.progress`, kept apart so that stages which do not train never import Lightning)."""

from __future__ import annotations

import time

import pytorch_lightning as pl
from pytorch_lightning.callbacks import TQDMProgressBar

from mdgen.progress import interactive, LOG_INTERVAL_S


class LogLines(pl.Callback):
    """Lightning's progress for a log file: one line every `interval_s` seconds of training with
    the step, the epoch, the logged metrics of the progress bar and the time left.

    The time left is paced by the batches after the first: the first one carries the warm-up
    (torch.compile's compilation, first allocations), which would otherwise promise hours at step 1
    of a compiled run. After a resume the pace counts only the batches of this run."""

    def __init__(self, interval_s: float = LOG_INTERVAL_S):
        self.interval_s = interval_s
        self._start = self._last = 0.0
        self._pace_from: tuple[float, float] | None = None  # (time, fraction done) after the first batch

    def on_train_start(self, trainer, pl_module):
        self._start = self._last = time.perf_counter()
        self._pace_from = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        now = time.perf_counter()
        if self._pace_from is None:
            self._pace_from = (now, self.fraction_done(trainer))
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
        eta = ""
        if self._pace_from is not None and fraction > self._pace_from[1]:
            since, fraction_then = self._pace_from
            left = (now - since) * (1 - fraction) / (fraction - fraction_then)
            eta = f", about {left / 60:.1f} min left"
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
