"""A real SLURM cluster: the tiny pipeline with the project's profile (`--profile slurm`), one of its
trainings killed midway and resumed by the profile's retry; and the several-nodes launch (srun)
on the one node there is.

Needs a cluster that answers `sinfo`, with the account, partitions and fake GPU of
ci/slurm/up.sh (`make ci` brings one up as root). Without one these tests are skipped, saying
why; with MDGEN_REQUIRE_SLURM=1 (CI) they fail instead.
"""

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from test_workflow import REPO, snakemake, STAGES, TINY

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
    result = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-S", "2020-01-01", "--name", run_id, "-o", ",".join(fields)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return [dict(zip(fields, line.split("|"), strict=True)) for line in result.stdout.splitlines() if line]


def result_files(workdir: Path) -> set[str]:
    """The pipeline's outputs, without what differs by where it ran (logs, timings, and TensorBoard's
    event files, named by time, host and process)."""
    results = workdir / "results"
    return {
        str(p.relative_to(results))
        for p in results.rglob("*")
        if p.is_file()
        and p.relative_to(results).parts[0] not in ("logs", "benchmarks")
        and "tensorboard" not in p.relative_to(results).parts
    }


def kill_when_checkpointed(run: subprocess.Popen, slurm_dir: Path, rule: str, step: int) -> int:
    """Once the rule's last.ckpt holds `step`, SIGKILL the job's training process, as the
    out-of-memory killer or a hand would; return the job's id.

    (Not `scancel`: sacct then says "CANCELLED by <uid>", which the plugin (2.8) does not take for
    an end, and Snakemake would wait forever; see docs/cluster.md, Known limits.)
    """
    import torch

    last = slurm_dir / "results" / "dit" / "training" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline and run.poll() is None:
        if last.exists() and torch.load(last, weights_only=False)["global_step"] >= step:
            queue = subprocess.run(["squeue", "-h", "-o", "%i %k"], capture_output=True, text=True, timeout=60).stdout
            job_id = next(line.split()[0] for line in queue.splitlines() if line.split()[1] == f"rule_{rule}")
            pattern = f"mdgen[.]stages[.]{rule} .*--out-dir results/"
            subprocess.run(["pkill", "-KILL", "-f", pattern], check=True, timeout=60)
            return int(job_id)
        time.sleep(0.5)
    pytest.fail(f"{rule} wrote no checkpoint at step {step} (snakemake exit status {run.poll()})")


@pytest.mark.fault
def test_tiny_pipeline_runs_through_slurm_with_the_project_profile(cluster, tmp_path, capsys):
    # The trainers on "auto" (the default), so the GPU rules ask for a GPU: the fake one of the CI
    # cluster, with no CUDA behind it, so Lightning trains on the CPU. The DiT trains long enough
    # to be killed mid-run.
    config = yaml.safe_load(yaml.safe_dump(TINY))
    for section in ("vae", "dit"):
        config[section]["trainer"]["accelerator"] = "auto"
    config["dit"]["trainer"]["max_steps"] = 600
    slurm_dir, local_dir = tmp_path / "slurm", tmp_path / "local"
    slurm_dir.mkdir()
    local_dir.mkdir()
    (slurm_dir / "test.yaml").write_text(yaml.safe_dump(config))
    command = [
        "timeout",
        "-k",
        "10",
        str(TIMEOUT),
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(REPO / "Snakefile"),
        "-d",
        str(slurm_dir),
        "--profile",
        str(REPO / "slurm"),
        "--profile",
        str(REPO / "ci/slurm/profile"),
        "--configfile",
        str(slurm_dir / "test.yaml"),
    ]
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    with open(tmp_path / "snakemake.log", "w") as log:
        run = subprocess.Popen(command, cwd=slurm_dir, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        try:
            # The training dies mid-run: the profile's retry must resume it.
            killed = kill_when_checkpointed(run, slurm_dir, "train_dit", step=8)
            run.wait(timeout=TIMEOUT + 30)
        finally:
            if run.poll() is None:
                run.kill()
    output = (tmp_path / "snakemake.log").read_text()
    assert run.returncode == 0, output[-5000:]

    # Every stage was a SLURM job: the plugin's log names the run and each submission...
    run_id = re.search(r"SLURM run ID: (\S+)", output).group(1)
    submitted = re.findall(r"submitted with SLURM jobid (\d+)", output)
    assert len(submitted) == len(STAGES) + 1, output[-5000:]  # train_dit twice
    # ...and the accounting database has them: GPU rules on the gpu partition with a GPU, the
    # killed train_dit followed by its retry, which resumed from the checkpoint.
    jobs = sorted(sacct_jobs(run_id), key=lambda job: int(job["JobID"]))
    with capsys.disabled():  # into the test log (CI's too): what went through the scheduler
        print(f"\nSLURM run {run_id}, as sacct records it:")
        for job in jobs:
            print(
                f"  job {job['JobID']:>5}  {job['Comment'].removeprefix('rule_'):<20} {job['Partition']:<4} "
                f"{job['State']:<10} {job['AllocTRES']}"
            )
    assert sorted(job["JobID"] for job in jobs) == sorted(submitted)
    rules = [job["Comment"].removeprefix("rule_") for job in jobs]
    assert sorted(rules) == sorted([*STAGES, "train_dit"]), rules
    for rule, job in zip(rules, jobs, strict=True):
        if int(job["JobID"]) == killed:
            assert rule == "train_dit" and job["State"] == "FAILED", job
            continue
        assert job["State"] == "COMPLETED", job
        if rule in GPU_RULES:
            assert job["Partition"] == "gpu" and "gres/gpu=1" in job["AllocTRES"], job
        else:
            assert job["Partition"] == "cpu" and "gres/gpu" not in job["AllocTRES"], job
    assert "Resuming from" in (slurm_dir / "results/logs/train_dit.log").read_text()

    # The same outputs as a local run.
    local = snakemake(local_dir, "--cores", "2", config=config)
    assert local.returncode == 0, local.stderr[-5000:]
    resumed_log = {"dit/training/logs/version_1/metrics.csv", "dit/training/logs/version_1/hparams.yaml"}
    assert result_files(slurm_dir) == result_files(local_dir) | resumed_log
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
    stage = (
        f"srun --nodes=1 --ntasks-per-node=2 --kill-on-bad-exit=1 {sys.executable} -m mdgen.stages.train_dit"
        f" --latents {latents} --vae {vae} --out-dir {tmp_path / 'dit'} --config {tmp_path / 'config.json'}"
    )
    env = os.environ | {"PYTHONPATH": str(REPO / "src")}
    result = subprocess.run(
        [
            "timeout",
            "-k",
            "10",
            "300",
            "sbatch",
            "--wait",
            "--parsable",
            "-A",
            "ci",
            "-p",
            "cpu",
            "--nodes=1",
            "--ntasks-per-node=2",
            "--cpus-per-task=1",
            "--mem=3000",
            "-t",
            "10",
            "-o",
            str(tmp_path / "job.log"),
            "--wrap",
            stage,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=330,
    )
    log = (tmp_path / "job.log").read_text() if (tmp_path / "job.log").exists() else ""
    assert result.returncode == 0, result.stderr + log[-5000:]
    assert "(2 processes, DDPStrategy)" in log, log[-5000:]
    assert (tmp_path / "dit" / "dit.pt").exists()
    assert sorted(p.name for p in (tmp_path / "dit" / "training" / "logs").iterdir()) == ["version_0"]
