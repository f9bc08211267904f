"""The tiny pipeline through a real SLURM cluster with the project's profile (`--profile slurm`).

Needs a cluster that answers `sinfo`, with the account, partitions and fake GPU of
ci/slurm/up.sh (`make ci` brings one up as root). Without one the test is skipped, saying why;
with MDGEN_REQUIRE_SLURM=1 (CI) it fails instead.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from test_workflow import REPO, STAGES, TINY, snakemake

GPU_RULES = {"finetune_vae", "evaluate_vae", "extract_latents", "train_dit", "sample"}
TIMEOUT = 1200


def cluster_problem() -> str | None:
    """Why no SLURM cluster can be used here, or None."""
    if not shutil.which("sinfo"):
        return "SLURM is not installed (no sinfo); `make ci` installs and starts a single-node cluster (root, Debian)"
    result = subprocess.run(["sinfo", "-h", "-o", "%P %a %G"], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        return f"no SLURM controller answers: {result.stderr.strip()}; start one with `bash ci/slurm/up.sh` (root)"
    if "gpu" not in result.stdout:
        return f"the cluster has no gpu partition with a GPU gres (sinfo: {result.stdout.strip()}): see ci/slurm/up.sh"
    return None


@pytest.fixture(scope="module")
def cluster():
    problem = cluster_problem()
    if problem:
        if os.environ.get("MDGEN_REQUIRE_SLURM") == "1":
            pytest.fail(f"MDGEN_REQUIRE_SLURM=1 but {problem}")
        pytest.skip(problem)


def sacct_jobs(run_id: str) -> list[dict]:
    fields = ["JobID", "JobName", "Partition", "State", "AllocTRES", "Comment"]
    result = subprocess.run(["sacct", "-X", "-n", "-P", "-S", "2020-01-01", "--name", run_id, "-o", ",".join(fields)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [dict(zip(fields, line.split("|"), strict=True)) for line in result.stdout.splitlines() if line]


def result_files(workdir: Path) -> set[str]:
    """The pipeline's outputs, without what differs by where it ran (logs, timings)."""
    results = workdir / "results"
    return {str(p.relative_to(results)) for p in results.rglob("*")
            if p.is_file() and p.relative_to(results).parts[0] not in ("logs", "benchmarks")}


def test_tiny_pipeline_runs_through_slurm_with_the_project_profile(cluster, tmp_path, capsys):
    # The trainers on "auto" (the default), so the GPU rules ask for a GPU: the fake one of the CI
    # cluster, with no CUDA behind it, so Lightning trains on the CPU.
    config = yaml.safe_load(yaml.safe_dump(TINY))
    for section in ("vae", "dit"):
        config[section]["trainer"]["accelerator"] = "auto"
    slurm_dir, local_dir = tmp_path / "slurm", tmp_path / "local"
    slurm_dir.mkdir()
    local_dir.mkdir()
    (slurm_dir / "test.yaml").write_text(yaml.safe_dump(config))
    command = ["timeout", "-k", "10", str(TIMEOUT), sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"),
               "-d", str(slurm_dir), "--profile", str(REPO / "slurm"), "--profile", str(REPO / "ci/slurm/profile"),
               "--configfile", str(slurm_dir / "test.yaml")]
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    run = subprocess.run(command, cwd=slurm_dir, env=env, capture_output=True, text=True, timeout=TIMEOUT + 30)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-5000:]

    # Every stage was a SLURM job: the plugin's log names the run and each submission...
    run_id = re.search(r"SLURM run ID: (\S+)", output).group(1)
    submitted = re.findall(r"submitted with SLURM jobid (\d+)", output)
    assert len(submitted) == len(STAGES), output[-5000:]
    # ...and the accounting database has them, completed, GPU rules on the gpu partition with a GPU.
    jobs = {job["Comment"].removeprefix("rule_"): job for job in sacct_jobs(run_id)}
    with capsys.disabled():  # into the test log (CI's too): what went through the scheduler
        print(f"\nSLURM run {run_id}, as sacct records it:")
        for rule, job in sorted(jobs.items(), key=lambda item: int(item[1]["JobID"])):
            print(f"  job {job['JobID']:>5}  {rule:<20} {job['Partition']:<4} {job['State']:<10} {job['AllocTRES']}")
    assert set(jobs) == set(STAGES), jobs
    assert sorted(job["JobID"] for job in jobs.values()) == sorted(submitted)
    for rule, job in jobs.items():
        assert job["State"] == "COMPLETED", job
        if rule in GPU_RULES:
            assert job["Partition"] == "gpu" and "gres/gpu=1" in job["AllocTRES"], job
        else:
            assert job["Partition"] == "cpu" and "gres/gpu" not in job["AllocTRES"], job

    # The same outputs as a local run.
    local = snakemake(local_dir, "--cores", "2", config=config)
    assert local.returncode == 0, local.stderr[-5000:]
    assert result_files(slurm_dir) == result_files(local_dir)
    assert len(result_files(slurm_dir)) > 30


def test_srun_started_ddp_trains_on_one_node(cluster, tiny_latents, tmp_path):
    """The multi-node route on the one node this cluster has: the command shape the rule builds for
    num_nodes > 1 (srun starts devices tasks per node; Lightning takes ranks from SLURM's
    environment), here with 2 CPU processes on 1 node."""
    import json

    from conftest import tiny_config

    latents, vae = tiny_latents
    config = tiny_config(dit={"trainer": {"max_steps": 4, "devices": 2}})
    (tmp_path / "config.json").write_text(json.dumps(config))
    stage = (f"srun --nodes=1 --ntasks-per-node=2 --kill-on-bad-exit=1 {sys.executable} -m mdgen.train_dit"
             f" --latents {latents} --vae {vae} --out-dir {tmp_path / 'dit'} --config {tmp_path / 'config.json'}")
    env = os.environ | {"PYTHONPATH": str(REPO / "src")}
    result = subprocess.run(["timeout", "-k", "10", "300", "sbatch", "--wait", "--parsable", "-A", "ci", "-p", "cpu",
                             "--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1", "--mem=3000", "-t", "10",
                             "-o", str(tmp_path / "job.log"), "--wrap", stage],
                            env=env, capture_output=True, text=True, timeout=330)
    log = (tmp_path / "job.log").read_text() if (tmp_path / "job.log").exists() else ""
    assert result.returncode == 0, result.stderr + log[-5000:]
    assert "(2 processes, DDPStrategy)" in log, log[-5000:]
    assert (tmp_path / "dit" / "dit.pt").exists()
    assert sorted(p.name for p in (tmp_path / "dit" / "training" / "logs").iterdir()) == ["version_0"]
