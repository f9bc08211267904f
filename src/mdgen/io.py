"""Writing outputs so that an interrupted run never leaves something that looks complete."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Temporary folders of a store being written, and of the store it replaces while it is swapped.
INCOMPLETE_MARK = ".incomplete-"
REPLACED_MARK = ".replaced-"
# A write that failed for want of space: a full disk, a quota, a file-size limit (ulimit -f).
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def _no_space(error: BaseException, path: Path) -> SystemExit | None:
    """The message for a write of `path` that ran out of space, or None for any other error."""
    if not isinstance(error, OSError) or error.errno not in NO_SPACE:
        return None
    where = f" at {error.filename}" if error.filename else ""
    return SystemExit(
        f"{path}: no space to write it ({error.strerror}{where}: a full disk, a quota or a file-size limit). "
        f"Nothing was replaced: the previous {path.name}, if any, is intact and the partial copy is removed. "
        f"Free space under {path.parent.resolve()} and rerun."
    )


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path next to `path`; when the block succeeds it replaces `path`.

    Readers see the old file or the complete new one, never half of it; on error the temporary
    file is removed, and a write that runs out of space exits with a message naming `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; outputs are shared like any other file
        os.replace(tmp, path)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        full = _no_space(error, path)
        if full is None:
            raise
        raise full from error


def remove_leftovers(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary folders an interrupted write of `path` left next to it; return them.

    Only one run may write a store at a time (Snakemake guarantees it for its outputs), since a
    running write's folder looks the same as an abandoned one.
    """
    path = Path(path)
    leftovers = sorted(p for mark in (INCOMPLETE_MARK, REPLACED_MARK) for p in path.parent.glob(f".{path.name}{mark}*"))
    for leftover in leftovers:
        shutil.rmtree(leftover)
    return leftovers


@contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder next to `path`; when the block succeeds it becomes `path`.

    The folder-level twin of `atomic_output`. A directory cannot be swapped in one
    rename (os.replace refuses a non-empty target), so the old store is first renamed aside and
    deleted after the new one is in place: `path` is missing for the moment between two renames,
    but never incomplete. On error the temporary folder is removed; a killed process leaves it
    behind as `.<name>.incomplete-*`, which `remove_leftovers` deletes on the next run. A write
    that runs out of space exits with a message naming `path`, the old store intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}{INCOMPLETE_MARK}"))
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; outputs are shared like any other folder
        replaced = None
        if path.exists():
            replaced = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}{REPLACED_MARK}"))
            os.replace(path, replaced / path.name)
        os.replace(tmp, path)
        if replaced is not None:
            shutil.rmtree(replaced)
    except BaseException as error:
        shutil.rmtree(tmp, ignore_errors=True)
        full = _no_space(error, path)
        if full is None:
            raise
        raise full from error
