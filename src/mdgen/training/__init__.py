"""What every training stage shares: resumable work folders, the Trainer, and their metrics.

A stage keeps its resumable state (Lightning's last.ckpt) in a work folder that is not a
Snakemake output, so a rerun after an interruption continues; the folder remembers the
configuration it belongs to, so a changed configuration starts over instead.

Under DDP (`trainer.devices` > 1 or `num_nodes` > 1) every rank runs the stage script: only rank 0
touches the work folder and prints, and every rank reaches the same resume decision from the same
files, so that all of them load the same checkpoint.
"""

from __future__ import annotations

import csv
import json
import shutil
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from lightning_fabric import Fabric
from lightning_fabric.utilities.rank_zero import rank_zero_only
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

from mdgen.config import config_hash
from mdgen.io import atomic_output, NO_SPACE
from mdgen.plots import plot_curves
from mdgen.progress import say
from mdgen.training.progress import training_progress


def device_from_config(accelerator: str) -> torch.device:
    """The device of a one-process stage for a config's `accelerator` (cpu, gpu, cuda, mps, auto),
    resolved by Lightning Fabric as the training stages' Trainer resolves it."""
    return Fabric(accelerator=accelerator, devices=1).device


def cpp_compiler() -> str | None:
    """The C++ compiler torch.compile's inductor would build CPU kernels with ($CXX, else g++ or
    clang++ on macOS), or None where there is none."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        return get_cpp_compiler()
    except Exception:  # inductor's InvalidCxxCompiler, or a torch whose private module moved
        return None


def compiled(model: torch.nn.Module, accelerator: str) -> torch.nn.Module:
    """torch.compile(model), or the model itself where compiling cannot work: on the CPU inductor
    builds C++ kernels, so without a compiler the first step would fail after the data and any
    REPA targets were prepared. Then training runs eager, with the same results and about 1.3×
    slower (a LightningDiT-Tiny/2 step at batch 64: docs/speed.md), and says so."""
    if device_from_config(accelerator).type == "cpu" and cpp_compiler() is None:
        say(
            "compile: no C++ compiler found (torch.compile builds its CPU kernels with $CXX or g++); "
            "training runs uncompiled: same results, about 1.3× slower. Install g++ to compile."
        )
        return model
    return torch.compile(model)


def lr_decay_factor(step: int, *, total: int, decay: int) -> float:
    """The learning rate's factor at step `step` (0-based) of `total`: 1, then down linearly over
    the last `decay` steps (1/decay at the last step, 0 after the end). Warmup-stable-decay without
    the warmup; the DiT counts optimizer steps, the VA-VAE batches."""
    return min(1.0, max(0.0, (total - step) / decay))


def fused_adam(trainer: pl.Trainer) -> bool:
    """Whether Adam(W) runs as torch's fused kernel: one pass over each tensor, the same update to
    float rounding, and on the CPU 12× faster than torch's default per-tensor loop (a LightningDiT-B/2
    step 0.05 s instead of 0.63 s: docs/speed.md). Not under mixed precision: Lightning's
    MixedPrecision plugin refuses to clip the gradients of an optimizer that could unscale them
    itself, and under fp16 it would also show the callbacks (the non-finite check, the gradient
    norm) scaled gradients. There torch's default (`foreach` on a GPU) steps."""
    return not str(trainer.precision).endswith("-mixed")


def is_rank_zero() -> bool:
    """Rank 0 of a DDP run (from the launcher's RANK or SLURM_PROCID), or the only process."""
    return rank_zero_only.rank == 0


def prepare_work_dir(work_dir: Path, config: dict) -> Path | None:
    """The checkpoint to resume from, if the saved state belongs to this configuration.

    Rank 0 clears a stale folder and stamps it; other ranks only read. Whichever order they run in,
    they agree: the stamp is replaced atomically, a checkpoint is trusted only next to a stamp of
    this configuration, and after a clear there is no last.ckpt.
    """
    stamp = work_dir / "config.json"
    fingerprint = config_hash(config)
    try:
        saved = json.loads(stamp.read_text()).get("hash")
    except FileNotFoundError:  # a new folder, or one that rank 0 is clearing
        saved = None
    last = work_dir / "checkpoints" / "last.ckpt"
    resume_from = last if saved == fingerprint and last.exists() else None
    unreadable = resume_from and unreadable_checkpoint(resume_from)
    if unreadable:
        resume_from = None
    if is_rank_zero():
        if saved is not None and saved != fingerprint:
            say(f"The configuration changed since {work_dir} was written: starting over.")
            shutil.rmtree(work_dir)
        if unreadable:
            kept = last.with_name("last.ckpt.unreadable")
            last.replace(kept)
            say(f"{last} cannot be read ({unreadable}), e.g. cut short by a crash: starting over; kept as {kept}.")
        with atomic_output(stamp) as tmp:
            tmp.write_text(json.dumps({"hash": fingerprint, "config": config}, indent=1))
    return resume_from


def unreadable_checkpoint(path: Path) -> str | None:
    """Why torch cannot open a checkpoint (a file cut short by a kill or a full disk), or None.
    Memory-mapped: the check reads the archive's index, not the tensors."""
    try:
        torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as error:  # any failure to open means the file cannot be resumed from
        return f"{type(error).__name__}: {error}"
    return None


class DistinctNoisePerRank(pl.Callback):
    """Under DDP, give each rank other random draws (diffusion noise and times, posterior samples).

    Stages seed every rank alike, so that they build the same model; left so, all ranks would draw
    the same noise for their different batches. Rank 0 keeps the stage's seed: one process trains
    exactly as before.
    """

    def __init__(self, seed: int):
        self.seed = seed

    def on_train_start(self, trainer, pl_module):
        if trainer.global_rank > 0:
            torch.manual_seed(self.seed + 1_000_003 * trainer.global_rank)


class NonFiniteError(RuntimeError):
    """Training produced NaN or Inf gradients."""


class StopOnNonFinite(pl.Callback):
    """Stops training at the first optimizer step whose gradients hold NaN or Inf, before that step
    changes any weight, naming the step and the first parameters hit. Checkpoints are written after
    finite steps only, so the last one stays good to resume from, and the stage exports nothing.

    Under 16-bit mixed precision the GradScaler finds non-finite gradients itself and skips those
    steps (they are how it tunes its scale), so the check is off there.
    """

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if str(trainer.precision).startswith("16"):
            return
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not grads or torch.isfinite(torch.nn.utils.get_total_norm(grads)):
            return
        hit = [name for name, p in pl_module.named_parameters() if p.grad is not None and not p.grad.isfinite().all()]
        raise NonFiniteError(
            f"non-finite gradients at step {trainer.global_step} (epoch {trainer.current_epoch}) in {len(hit)} "
            f"parameter(s), first {', '.join(hit[:3])}: training stopped before the step, and nothing is exported. "
            f"The last checkpoint ({trainer.default_root_dir}/checkpoints/last.ckpt) is from an earlier, finite "
            "step and a rerun resumes from it; if the fault repeats, lower the learning rate or check the data."
        )


def trainer_from_config(
    trainer_config: dict,
    work_dir: Path,
    callbacks: list,
    seed: int,
    find_unused_parameters: bool = False,
    tensorboard: bool = False,
    **overrides,
) -> pl.Trainer:
    """A Trainer from a config's `trainer` section, logging to a new CSV version per run (and to
    TensorBoard under work_dir/tensorboard with `tensorboard`).

    More than one process (devices × num_nodes) means DDP; the launcher (torchrun or srun, see
    workflow/rules/common.smk) has started them, and Lightning reads its environment.
    `find_unused_parameters`: for modules whose backward passes leave some parameters without
    gradients (the VA-VAE's generator and discriminator updates).
    """
    processes = trainer_config["devices"] * trainer_config["num_nodes"]
    strategy = "auto" if processes == 1 else "ddp_find_unused_parameters_true" if find_unused_parameters else "ddp"
    settings = dict(
        strategy=strategy,
        accelerator=trainer_config["accelerator"],
        devices=trainer_config["devices"],
        num_nodes=trainer_config["num_nodes"],
        precision=trainer_config["precision"],
        max_epochs=trainer_config["max_epochs"],
        max_steps=trainer_config["max_steps"],
        check_val_every_n_epoch=trainer_config["check_val_every_n_epoch"],
        log_every_n_steps=trainer_config["log_every_n_steps"],
        default_root_dir=work_dir,
        logger=[CSVLogger(work_dir, name="logs")]
        + ([TensorBoardLogger(work_dir, name="tensorboard")] if tensorboard else []),
    )
    shown = training_progress()
    settings |= {"enable_progress_bar": shown["enable_progress_bar"]}
    settings["callbacks"] = [*callbacks, DistinctNoisePerRank(seed), StopOnNonFinite(), *shown["callbacks"]]
    return pl.Trainer(**(settings | overrides))


def fit(trainer: pl.Trainer, module: pl.LightningModule, datamodule, resume_from: Path | None, what: str) -> float:
    """Say where and how training runs, run it (resuming from `resume_from` when given), return its seconds."""
    device = trainer.accelerator.__class__.__name__.removesuffix("Accelerator")
    say(
        f"Training {what} on {device} × {trainer.num_devices}"
        + (f" × {trainer.num_nodes} nodes" if trainer.num_nodes > 1 else "")
        + f" ({trainer.world_size} processes, {trainer.strategy.__class__.__name__}), precision {trainer.precision}"
    )
    start = time.perf_counter()
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from)
    except NonFiniteError as error:
        raise SystemExit(f"{type(module).__name__}: {error}") from None
    except OSError as error:
        if error.errno not in NO_SPACE:
            raise
        where = f" writing {error.filename}" if error.filename else ""
        raise SystemExit(
            f"{type(module).__name__}: no space left at step {trainer.global_step}{where} ({error.strerror}: a full "
            f"disk, a quota or a file-size limit). Nothing was exported; the checkpoints under "
            f"{trainer.default_root_dir} are kept (one cut short is set aside when the rule reruns). Free space "
            "and rerun the rule: training resumes from the last complete checkpoint."
        ) from None
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


def write_curves(work_dir: Path, out_dir: Path, title: str, panels: dict[str, list[str]], **plot_kwargs) -> None:
    """The declared outputs every training stage writes after its export: out_dir/metrics.csv
    (every run's metrics joined) and out_dir/curves.png (those panels)."""
    collect_metrics(work_dir, out_dir / "metrics.csv")
    plot_curves(out_dir / "metrics.csv", out_dir / "curves.png", title=title, panels=panels, **plot_kwargs)
