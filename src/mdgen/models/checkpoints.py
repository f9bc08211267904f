"""Strict checkpoint loading shared by the VA-VAE and the LightningDiT: key names are the contract,
so every difference is an error that names the keys (and shapes) before any weight changes."""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping

import torch
from torch import nn

SHOWN = 20  # keys listed per group in an error message


class CheckpointMismatchError(RuntimeError):
    """The checkpoint's tensors do not match the model built from the config."""

    def __init__(
        self,
        source: str | None,
        model: str,
        missing: list[str],
        unexpected: list[str],
        mismatched: list[tuple[str, tuple, tuple]],
        hints: list[str] = (),
    ):
        self.missing, self.unexpected, self.mismatched = missing, unexpected, mismatched

        def listing(title, lines):
            more = [f"    ... and {len(lines) - SHOWN} more"] if len(lines) > SHOWN else []
            return [f"  {title} ({len(lines)}):"] + [f"    {line}" for line in lines[:SHOWN]] + more

        lines = [f"checkpoint {source or '<in-memory checkpoint>'} does not match {model}:"]
        if missing:
            lines += listing("missing from the checkpoint", missing)
        if unexpected:
            lines += listing("unexpected in the checkpoint", unexpected)
        if mismatched:
            lines += listing(
                "shape mismatches",
                [f"{key}: checkpoint {tuple(have)} vs model {tuple(want)}" for key, have, want in mismatched],
            )
        super().__init__("\n".join(lines + list(hints)))


def load_strictly(model: nn.Module, state_dict: Mapping, source: str | None, hints=lambda missing: []) -> list[str]:
    """Load `state_dict` into `model` with strict=True semantics; on any difference raise
    CheckpointMismatchError naming it (`hints(missing)` adds model-specific advice). Returns the keys."""
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    mismatched = [
        (key, tuple(state_dict[key].shape), shape)
        for key, shape in expected.items()
        if key in state_dict and tuple(state_dict[key].shape) != shape
    ]
    if missing or unexpected or mismatched:
        name = f"{type(model).__name__}({model.extra_repr()})"
        raise CheckpointMismatchError(source, name, missing, unexpected, mismatched, hints(missing))
    model.load_state_dict(state_dict, strict=True)
    return list(expected)


def read_checkpoint(path_or_checkpoint, layout: str) -> tuple[str | None, Mapping]:
    """(path or None, the loaded dict) from a path (torch.load weights_only=True) or a dict;
    `layout` describes the expected content for the error message."""
    if isinstance(path_or_checkpoint, Mapping):
        return None, path_or_checkpoint
    if not isinstance(path_or_checkpoint, (str, os.PathLike)):
        raise TypeError(f"expected a checkpoint path or a dict, got {type(path_or_checkpoint).__name__}")
    path = os.fspath(path_or_checkpoint)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"{path} holds Python objects besides tensors, which torch.load(weights_only=True) refuses. If you "
            f"trust the file, load it with torch.load(path, map_location='cpu', weights_only=False) and pass "
            f"the dict to load_pretrained."
        ) from error
    except (RuntimeError, EOFError, OSError) as error:
        if isinstance(error, FileNotFoundError):
            raise
        raise ValueError(
            f"{path} cannot be read as a torch checkpoint ({type(error).__name__}: {error}): the file is damaged or "
            "incomplete (a copy cut short, a full disk). Rerun the stage that writes it."
        ) from error
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"{path} holds a {type(checkpoint).__name__}, expected {layout}")
    return path, checkpoint
