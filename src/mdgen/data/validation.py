"""Dataset validation: check a `<root>/{train,val}/user_NN/*` tree and list the files later stages may read.

Every problem is found in one pass and reported together. Files are judged by their content, never
by their extension, and are opened read-only: validation never modifies, moves or deletes anything.
It never leaves the data root (a symbolic link that leads outside it is reported, not followed) and
never opens anything but a regular file (a FIFO would block the run, a device could be endless).
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import os
import re
import stat
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

from PIL import Image, ImageFile, UnidentifiedImageError

from mdgen.data.images import ConversionError, convert_spectrogram
from mdgen.io import atomic_output
from mdgen.progress import progress as progress_bar

SPLITS = ("train", "val")
USER_FOLDER = re.compile(r"^user_(\d{2,})$")
MANIFEST_COLUMNS = ("path", "split", "user_id", "sha256", "width", "height", "mode")
# Problems about the dataset as a whole: excluding files cannot fix them, so they fail every run.
FATAL_KINDS = frozenset({"missing_split", "split_outside_root", "user_missing_train", "user_missing_val"})
WARNINGS_SHOWN_PER_KIND = 10


def user_id(index: int) -> str:
    return f"user_{index:02d}"


@dataclass
class Problem:
    kind: str  # short snake_case identifier, e.g. "corrupt_image"
    severity: str  # "error" or "warning"
    path: str  # the file or folder concerned
    message: str  # a full sentence for people
    split: str | None = None
    user_id: str | None = None

    @property
    def fatal(self) -> bool:
        return self.kind in FATAL_KINDS


@dataclass
class ValidationResult:
    settings: dict
    rows: list[dict]  # manifest rows of every file that passed, sorted by split then path
    problems: list[Problem]
    counts: dict[str, dict[str, int]]  # user_id -> split -> number of valid images
    ignored: list[str] = field(default_factory=list)  # root entries other than train/ and val/
    hidden: list[str] = field(default_factory=list)  # entries starting with '.', never read

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def fatal(self) -> list[Problem]:
        """Dataset-level errors, which fail the run even when bad files are skipped."""
        return [p for p in self.errors if p.fatal]

    @property
    def file_errors(self) -> list[Problem]:
        """Errors that exclude a file or folder; with on_bad_file=skip the run goes on without them."""
        return [p for p in self.errors if not p.fatal]

    @property
    def excluded(self) -> dict[str, str]:
        """Excluded file or folder path -> problem kind."""
        return {p.path: p.kind for p in self.file_errors}

    def passed(self, on_bad_file: str) -> bool:
        if on_bad_file not in ("fail", "skip"):
            raise ValueError(f"on_bad_file must be 'fail' or 'skip', got {on_bad_file!r}")
        return not self.fatal and (on_bad_file == "skip" or not self.errors)


# ---------------------------------------------------------------------------------------------
# One file: runs in worker processes, so it takes and returns plain picklable values
# ---------------------------------------------------------------------------------------------


@dataclass
class _FileCheck:
    sha256: str = ""
    width: int = 0
    height: int = 0
    mode: str = ""
    pixel_hash: str = ""  # of the converted image: two files that train identically are duplicates
    problems: list[tuple[str, str, str]] = field(default_factory=list)  # (kind, severity, message)

    @property
    def ok(self) -> bool:
        return all(severity != "error" for _, severity, _ in self.problems)


@contextmanager
def _pil_settings():
    """Our header check against max_pixels replaces PIL's bomb guard, whose warning would be noise
    and whose error would abort the run; truncated files must fail to load, never load padded."""
    saved = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
    Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = None, False
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = saved


def _check_file(path: str, *, channels: int, size: int, max_pixels: int, colormap: str | None = None) -> _FileCheck:
    check = _FileCheck()
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as error:
        reason = error.strerror or type(error).__name__
        check.problems.append(("unreadable", "error", f"cannot be read ({reason}): check its permissions"))
        return check
    if not data:
        check.problems.append(("empty_file", "error", "the file is empty (0 bytes): re-export the image or remove it"))
        return check
    check.sha256 = hashlib.sha256(data).hexdigest()

    with _pil_settings():
        try:
            image = Image.open(io.BytesIO(data))  # reads the header only
        except UnidentifiedImageError:
            check.problems.append(
                (
                    "not_an_image",
                    "error",
                    f"this is not an image Pillow can read (it starts with {data[:16]!r}): "
                    "expected a PNG spectrogram; remove the file or move it out of the dataset",
                )
            )
            return check
        except Image.DecompressionBombError as exc:
            check.problems.append(("too_large", "error", f"Pillow refused to open it as a decompression bomb ({exc})"))
            return check
        check.width, check.height, check.mode = image.width, image.height, image.mode

        pixels = image.width * image.height
        if pixels > max_pixels:
            check.problems.append(
                (
                    "too_large",
                    "error",
                    f"{image.width}x{image.height} = {pixels:,} pixels is above max_pixels={max_pixels:,} "
                    "(a possible decompression bomb), so it was not decoded: expected spectrograms of about "
                    f"{size}x{size}; resize the image or raise data.max_pixels",
                )
            )
            return check

        # verify() checks the file structure (PNG chunk CRCs) but leaves the image unusable, so
        # the pixels are decoded from a fresh open; any decoder exception means the file is unusable.
        try:
            image.verify()
            image = Image.open(io.BytesIO(data))
            image.load()
        except Exception as exc:
            check.problems.append(
                (
                    "corrupt_image",
                    "error",
                    f"the {image.format} data is truncated or corrupt ({type(exc).__name__}: {exc}): "
                    "re-export the image or remove it",
                )
            )
            return check

        try:
            converted, conversion = convert_spectrogram(image, channels)
        except ConversionError as exc:
            check.problems.append(
                (
                    "unsupported_mode",
                    "error",
                    f"mode {image.mode} cannot be used as a {channels}-channel spectrogram: {exc}",
                )
            )
            return check
        if colormap:
            try:
                convert_spectrogram(converted, channels, colormap)
            except ConversionError as exc:
                check.problems.append(("not_colormapped", "error", str(exc)))
                return check

    pixel_key = f"{converted.mode} {converted.width}x{converted.height}\n".encode() + converted.tobytes()
    check.pixel_hash = hashlib.sha256(pixel_key).hexdigest()
    w, h = check.width, check.height
    if conversion:
        check.problems.append(("mode_conversion", "warning", f"mode {image.mode} is converted: {conversion}"))
    if w < size / 2 or h < size / 2:
        check.problems.append(
            (
                "small_image",
                "warning",
                f"{w}x{h} is below half the training size: it will be upsampled from {w}x{h} to {size}x{size}",
            )
        )
    if w != h:
        check.problems.append(
            (
                "non_square",
                "warning",
                f"{w}x{h} is not square: it will be resized to {size}x{size} without crop, so its aspect ratio changes",
            )
        )
    return check


# ---------------------------------------------------------------------------------------------
# The tree
# ---------------------------------------------------------------------------------------------


@dataclass
class _Candidate:
    path: str
    split: str
    user_id: str


def _scan_tree(root: str, num_classes: int, problems: list[Problem], ignored: list[str], hidden: list[str]):
    """Walk the folder structure; return image candidates and report structural problems."""
    candidates = []

    def entries(folder):
        names = sorted(os.listdir(folder))
        hidden.extend(os.path.join(folder, n) for n in names if n.startswith("."))
        return [n for n in names if not n.startswith(".")]

    real_root = os.path.realpath(root)

    def leaves_root(path, split, user=None, kind="outside_root") -> bool:
        """Report a path whose symbolic links lead outside the data root; it is not followed."""
        target = os.path.realpath(path)
        if target == real_root or target.startswith(real_root + os.sep):
            return False
        problems.append(
            Problem(
                kind,
                "error",
                path,
                f"a symbolic link to {target}, outside the data root {root}: not followed; copy the data "
                "into the root or point data.root at where it lives",
                split=split,
                user_id=user,
            )
        )
        return True

    if os.path.isdir(root):
        ignored.extend(os.path.join(root, n) for n in entries(root) if n not in SPLITS)
    for split in SPLITS:
        split_dir = os.path.join(root, split)
        if os.path.isdir(split_dir) and leaves_root(split_dir, split, kind="split_outside_root"):
            continue
        if not os.path.isdir(split_dir):
            problems.append(
                Problem(
                    "missing_split",
                    "error",
                    split_dir,
                    f"{split}/ is missing under {root}: expected {root}/train/ and {root}/val/, "
                    "each holding one user_NN folder per user",
                    split=split,
                )
            )
            continue
        names = entries(split_dir)
        if not names:
            problems.append(Problem("empty_folder", "warning", split_dir, f"{split}/ is empty", split=split))
        for name in names:
            path = os.path.join(split_dir, name)
            if leaves_root(path, split):
                continue
            if not os.path.isdir(path):
                problems.append(
                    Problem(
                        "not_in_user_folder",
                        "error",
                        path,
                        f"files directly in {split}/ belong to no user: move it into a user_NN folder",
                        split=split,
                    )
                )
                continue
            match = USER_FOLDER.match(name)
            if not match or name != user_id(int(match.group(1))):
                expected = f"user_{int(match.group(1)):02d}" if match else "user_NN (e.g. user_00)"
                problems.append(
                    Problem(
                        "bad_folder",
                        "error",
                        path,
                        f"'{name}' is not a user folder: expected {expected}, with NN a user index 0.."
                        f"{num_classes - 1}; its files are excluded: rename or move the folder",
                        split=split,
                    )
                )
                continue
            if int(match.group(1)) >= num_classes:
                problems.append(
                    Problem(
                        "user_out_of_range",
                        "error",
                        path,
                        f"{name} is outside user indices 0..{num_classes - 1} (num_classes={num_classes}); "
                        "its files are excluded: rename the folder or set data.num_classes",
                        split=split,
                        user_id=name,
                    )
                )
                continue
            files = entries(path)
            if not files:
                problems.append(
                    Problem(
                        "empty_folder", "warning", path, f"{split}/{name}/ holds no files", split=split, user_id=name
                    )
                )
            for filename in files:
                file_path = os.path.join(path, filename)
                if leaves_root(file_path, split, name):
                    continue
                if os.path.isdir(file_path):
                    problems.append(
                        Problem(
                            "bad_folder",
                            "error",
                            file_path,
                            f"folders inside a user folder are not read: move its images up into {split}/{name}/ "
                            "or remove it",
                            split=split,
                            user_id=name,
                        )
                    )
                elif (problem := _not_a_regular_file(file_path, split, name)) is not None:
                    problems.append(problem)
                else:
                    candidates.append(_Candidate(file_path, split, name))
    return candidates


SPECIAL_FILES = {
    stat.S_ISFIFO: "a named pipe (FIFO)",
    stat.S_ISSOCK: "a socket",
    stat.S_ISCHR: "a character device",
    stat.S_ISBLK: "a block device",
}


def _not_a_regular_file(path: str, split: str, user: str) -> Problem | None:
    """A Problem for a broken link or a special file, which are never opened; None for a regular file."""
    try:
        mode = os.stat(path).st_mode
    except OSError as error:
        what = "a symbolic link to nothing" if os.path.islink(path) else f"cannot be examined ({error.strerror})"
        return Problem("unreadable", "error", path, f"{what}: remove or fix it", split=split, user_id=user)
    if stat.S_ISREG(mode):
        return None
    kind = next((name for test, name in SPECIAL_FILES.items() if test(mode)), "not a regular file")
    message = f"{kind}, not an image file: never opened (it could block or never end); remove it from the data folder"
    return Problem("not_a_file", "error", path, message, split=split, user_id=user)


def _find_duplicates(valid: list[tuple[_Candidate, _FileCheck]]) -> list[Problem]:
    """Identical decoded pixels: a val image also in train leaks; later copies within a split are duplicates."""
    first_in_split = {}  # (split, pixel_hash) -> path of the copy that is kept
    problems = []
    for candidate, check in sorted(valid, key=lambda item: (item[0].split != "train", item[0].path)):
        train_copy = first_in_split.get(("train", check.pixel_hash))
        kept = first_in_split.setdefault((candidate.split, check.pixel_hash), candidate.path)
        if candidate.split == "val" and train_copy:
            problems.append(
                Problem(
                    "leakage",
                    "error",
                    candidate.path,
                    f"identical pixels to the training image {train_copy}: the same image in train/ and val/ "
                    "makes validation measure memorisation; remove it from val/",
                    split=candidate.split,
                    user_id=candidate.user_id,
                )
            )
        elif kept != candidate.path:
            problems.append(
                Problem(
                    "duplicate",
                    "error",
                    candidate.path,
                    f"identical pixels to {kept}, which is kept (first in sorted order): remove this copy",
                    split=candidate.split,
                    user_id=candidate.user_id,
                )
            )
    return problems


def validate_dataset(
    root,
    *,
    num_classes: int,
    channels: int,
    size: int,
    max_pixels: int,
    workers: int = 1,
    progress: bool = False,
    colormap: str | None = None,
) -> ValidationResult:
    """Check the dataset under `root` and report every problem at once; never modifies a file."""
    root = os.fspath(root)
    problems, ignored, hidden = [], [], []
    candidates = _scan_tree(root, num_classes, problems, ignored, hidden)

    check = functools.partial(_check_file, channels=channels, size=size, max_pixels=max_pixels, colormap=colormap)
    paths = [c.path for c in candidates]
    bar = functools.partial(progress_bar, total=len(paths), desc="checking images", unit="file", disable=not progress)
    if workers > 1 and len(paths) > 1:
        with ProcessPoolExecutor(workers) as pool:
            # map keeps input order, so the result does not depend on the number of workers
            checks = list(bar(pool.map(check, paths, chunksize=max(1, len(paths) // (workers * 8)))))
    else:
        checks = [check(p) for p in bar(paths)]

    valid = []
    for candidate, result in zip(candidates, checks):
        problems.extend(
            Problem(kind, severity, candidate.path, message, candidate.split, candidate.user_id)
            for kind, severity, message in result.problems
        )
        if result.ok:
            valid.append((candidate, result))
    duplicates = _find_duplicates(valid)
    problems.extend(duplicates)
    rejected = {p.path for p in duplicates}
    valid = [(c, r) for c, r in valid if c.path not in rejected]

    counts = {user_id(i): dict.fromkeys(SPLITS, 0) for i in range(num_classes)}
    for candidate, _ in valid:
        counts[candidate.user_id][candidate.split] += 1
    excluded = Counter((p.user_id, p.split) for p in problems if p.severity == "error" and p.user_id)
    unread = {p.split for p in problems if p.kind == "split_outside_root"}
    # a missing or unread split is reported once, not once per user
    present = [s for s in SPLITS if os.path.isdir(os.path.join(root, s)) and s not in unread]
    purpose = {"train": "training", "val": "validation"}
    for user, split in ((u, s) for s in present for u in counts):
        if counts[user][split] == 0:
            note = f" ({excluded[user, split]} of its files were excluded, see above)" if excluded[user, split] else ""
            problems.append(
                Problem(
                    f"user_missing_{split}",
                    "error",
                    os.path.join(root, split, user),
                    f"{user} has 0 valid images in {split}/{note}: "
                    f"every user needs at least one {purpose[split]} image",
                    split=split,
                    user_id=user,
                )
            )

    rows = sorted(
        (
            {
                "path": c.path,
                "split": c.split,
                "user_id": c.user_id,
                "sha256": r.sha256,
                "width": r.width,
                "height": r.height,
                "mode": r.mode,
            }
            for c, r in valid
        ),
        key=lambda row: (row["split"], row["path"]),
    )
    settings = {
        "root": root,
        "num_classes": num_classes,
        "channels": channels,
        "colormap": colormap,
        "size": size,
        "max_pixels": max_pixels,
        "workers": workers,
    }
    return ValidationResult(settings, rows, problems, counts, ignored, hidden)


# ---------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------


def _write_atomically(path, write) -> None:
    """Write text through a temporary file in the same folder, so readers never see half a file."""
    with atomic_output(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        write(f)


def write_manifest(rows: list[dict], path) -> None:
    """CSV with header path,split,user_id,sha256,width,height,mode: the only file list later stages read."""

    def write(f):
        writer = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)

    _write_atomically(path, write)


def read_manifest(path, split: str | None = None) -> list[dict]:
    """Rows of a manifest written by `write_manifest`, optionally of one split only."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = [{**row, "width": int(row["width"]), "height": int(row["height"])} for row in csv.DictReader(f)]
    return [row for row in rows if split is None or row["split"] == split]


def write_report(result: ValidationResult, path, on_bad_file: str) -> None:
    """JSON report: settings, counts, totals, every problem, what was excluded and what was ignored."""
    report = {
        "passed": result.passed(on_bad_file),
        "settings": {**result.settings, "on_bad_file": on_bad_file},
        "totals": {
            "valid_images": {s: sum(c[s] for c in result.counts.values()) for s in SPLITS},
            "errors": len(result.errors),
            "fatal_errors": len(result.fatal),
            "warnings": len(result.warnings),
            "excluded": len(result.excluded),
            "ignored": len(result.ignored),
            "hidden": len(result.hidden),
        },
        "counts": result.counts,
        "problems": [asdict(p) | {"fatal": p.fatal} for p in result.problems],
        "excluded": [{"path": p, "kind": kind} for p, kind in result.excluded.items()],
        "ignored": result.ignored,
        "hidden": result.hidden,
    }
    _write_atomically(path, lambda f: json.dump(report, f, indent=2))


def format_summary(result: ValidationResult, on_bad_file: str, report_path: str = "report.json") -> str:
    """Readable summary for a log: valid images per user, then problems grouped by kind.

    Under on_bad_file='fail' every error is listed in full, since the log is all a failed
    Snakemake job leaves; fatal errors always are. Other lists stop after a few per kind.
    """
    lines = ["Valid images per user:", f"  {'user':<10}{'train':>7}{'val':>7}"]
    lines += [f"  {user:<10}{c['train']:>7}{c['val']:>7}" for user, c in result.counts.items()]
    totals = {s: sum(c[s] for c in result.counts.values()) for s in SPLITS}
    lines.append(f"  {'total':<10}{totals['train']:>7}{totals['val']:>7}")

    for title, problems in (("Errors", result.errors), ("Warnings", result.warnings)):
        if not problems:
            continue
        by_kind = defaultdict(list)
        for p in problems:
            by_kind[p.kind].append(p)
        skipped = title == "Errors" and on_bad_file == "skip"
        lines.append(f"{title}: {len(problems)}" + (f" ({len(result.excluded)} excluded)" if skipped else ""))
        for kind, group in by_kind.items():
            in_full = group[0].fatal or (group[0].severity == "error" and on_bad_file == "fail")
            shown = group if in_full else group[:WARNINGS_SHOWN_PER_KIND]
            lines.append(f"  {kind}: {len(group)}")
            lines += [f"    {p.path}: {p.message}" for p in shown]
            if len(group) > len(shown):
                lines.append(f"    ... and {len(group) - len(shown)} more (see {report_path})")
    if not result.problems:
        lines.append("No problems found.")
    if result.ignored:
        lines.append(f"Ignored {len(result.ignored)} entries next to train/ and val/: {', '.join(result.ignored)}")
    if result.hidden:
        lines.append(f"Ignored {len(result.hidden)} hidden files or folders (names starting with '.')")
    return "\n".join(lines)
