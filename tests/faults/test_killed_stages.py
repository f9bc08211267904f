"""SIGKILL of the stages that do not train, through Snakemake, as a lost node or a closed laptop does
it: the whole process group (Snakemake and the job) dies at a point in the job. The promise: nothing
the killed job left is taken as done; after `snakemake --unlock` (the dead run's lock stays, and
the rerun says so) the same command redoes the job, and the folder then equals, byte for byte,
that of a run that was never interrupted (training stages resume instead: their kill-and-resume
tests sit with them)."""

import filecmp
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from test_workflow import ENV, planned_jobs, snakemake, snakemake_command

pytestmark = pytest.mark.fault  # every case here injects a fault (docs/faults.md)

SHORT_STAGES = [
    "simulate_dataset",
    "validate_dataset",
    "evaluate_vae",
    "extract_latents",
    "sample",
    "evaluate_generation",
]
# Not compared: what records the run itself rather than its results.
RUN_RECORDS = {".snakemake", "logs", "benchmarks", "test.yaml", "report.html"}


def stage_process(group: int, stage: str) -> int | None:
    """The PID of `python -m mdgen.stages.<stage>` in process group `group`, if it runs."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
            if os.getpgid(int(entry.name)) == group and f"mdgen.stages.{stage}".encode() in command:
                return int(entry.name)
        except (OSError, ProcessLookupError):
            continue  # ended while we looked
    return None


def kill_during(workdir: Path, stage: str, after: float, timeout: float = 300) -> None:
    """Run `snakemake --forcerun <stage> <stage>` and SIGKILL its process group `after` seconds into
    the stage's own process. Fails if the stage was not running at that moment."""
    command = snakemake_command(workdir, "--cores", "2", "--forcerun", stage, stage)
    process = subprocess.Popen(
        command, cwd=workdir, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.monotonic() + timeout
        while (pid := stage_process(process.pid, stage)) is None:
            assert process.poll() is None and time.monotonic() < deadline, f"{stage} never started"
            time.sleep(0.05)
        time.sleep(after)
        assert Path(f"/proc/{pid}").exists(), f"{stage} ended within {after:.1f} s: nothing was killed"
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def differences(left: Path, right: Path) -> list[str]:
    """Paths (relative) that differ between two folders: missing on one side or other bytes."""
    found = []

    def walk(comparison: filecmp.dircmp, prefix: str) -> None:
        found.extend(prefix + name for name in comparison.left_only + comparison.right_only)
        found.extend(prefix + name for name in comparison.common_files if not same_bytes(comparison, name))
        for name, sub in comparison.subdirs.items():
            walk(sub, f"{prefix}{name}/")

    walk(filecmp.dircmp(left, right, ignore=sorted(RUN_RECORDS)), "")
    return found


def same_bytes(comparison: filecmp.dircmp, name: str) -> bool:
    return filecmp.cmp(Path(comparison.left) / name, Path(comparison.right) / name, shallow=False)


@pytest.mark.slow
@pytest.mark.parametrize("point", ["start-up", "half-way"])
@pytest.mark.parametrize("stage", SHORT_STAGES)
def test_a_killed_stage_is_redone_and_equals_an_uninterrupted_run(tiny_run, tmp_path, stage, point):
    reference, seconds = tiny_run
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir, symlinks=True)
    kill_during(workdir, stage, after=0.2 if point == "start-up" else seconds[stage] / 2)

    # Nothing the killed job left is taken as done: the plain command plans the job again.
    assert stage in planned_jobs(snakemake(workdir, "-n", stage))
    # The dead run's lock stays (Snakemake cannot tell a dead run from a live one): the rerun
    # stops before any job and says how to lift it.
    refused = snakemake(workdir, "--cores", "2", stage)
    assert refused.returncode != 0 and "--unlock" in refused.stderr, refused.stderr
    assert snakemake(workdir, "--unlock").returncode == 0
    # Then the same command redoes the job; the folder equals the uninterrupted run's, byte for byte.
    rerun = snakemake(workdir, "--cores", "2", stage)
    assert rerun.returncode == 0, rerun.stderr
    assert differences(reference, workdir) == []
