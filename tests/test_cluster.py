"""What the GPU rules ask SLURM for and how they launch their processes, for one GPU, several GPUs
in one job, and several nodes: the rules' resources (from a dry run) turned into the sbatch command
by the SLURM executor plugin's own code, as it does when it submits."""

import re
import subprocess
import sys

import pytest
import yaml
from snakemake_executor_plugin_slurm.submit_string import get_submit_command
from snakemake_executor_plugin_slurm.utils import set_gres_string
from snakemake_executor_plugin_slurm.validation import validate_slurm_extra
from test_workflow import REPO, snakemake, TINY


class Resources(dict):
    """job.resources as the plugin reads it: .get() and attribute access."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class Job:
    def __init__(self, resources: dict, threads: int):
        self.resources, self.threads = Resources(resources), threads


def planned(tmp_path, **changes) -> dict[str, tuple[dict, str, int]]:
    """rule -> (resources, shell command, threads) of a dry run of the tiny config with `changes`."""
    config = yaml.safe_load(yaml.safe_dump(TINY))
    for section, values in changes.items():
        target = config.setdefault(section, {})
        for key, value in values.items():
            target[key] = target.get(key, {}) | value if isinstance(value, dict) else value
    result = snakemake(tmp_path, "-n", "-p", config=config)
    assert result.returncode == 0, result.stderr + result.stdout
    jobs = {}
    for block in re.split(r"\n(?=rule )", result.stdout + result.stderr):
        name = re.match(r"rule (\w+):", block)
        resources = re.search(r"^\s+resources: (.*)$", block, re.M)
        shell = re.search(r"^Shell command: (.*)$", block, re.M)
        threads = re.search(r"^\s+threads: (\d+)$", block, re.M)
        if name and resources:
            values = dict(item.split("=", 1) for item in resources.group(1).split(", "))
            values = {k: int(v) if v.isdigit() else v for k, v in values.items()}
            jobs[name.group(1)] = (values, shell.group(1) if shell else "", int(threads.group(1)) if threads else 1)
    return jobs


def sbatch(resources: dict, threads: int) -> str:
    """The sbatch command the plugin would run for a job with these resources."""
    job = Job(
        {k: v for k, v in resources.items() if k not in ("tmpdir", "mem", "mem_mib", "disk", "disk_mib")}, threads
    )
    validate_slurm_extra(job)  # what the plugin checks before submitting
    params = {
        "run_uuid": "run",
        "slurm_logfile": "log",
        "comment_str": "rule",
        "account": "-A acct",
        "partition": "-p gpu",
        "workdir": "/work",
    }
    return get_submit_command(job, params) + set_gres_string(job)


def test_one_gpu_by_default(tmp_path):
    jobs = planned(tmp_path, vae={"trainer": {"accelerator": "auto"}}, dit={"trainer": {"accelerator": "auto"}})
    for rule in ("finetune_vae", "evaluate_vae", "extract_latents", "train_dit", "sample"):
        resources, shell, threads = jobs[rule]
        command = sbatch(resources, threads)
        assert "--gpus=1" in command and "--cpus-per-gpu=4" in command and "--nodes" not in command, (rule, command)
        assert re.search(r"--mem \d+ ", command) and re.search(r"-t '?\d+", command), command
    assert jobs["train_dit"][1].startswith("python -m mdgen.stages.train_dit ")
    for rule in ("simulate_dataset", "validate_dataset", "evaluate_generation"):
        assert "gpu" not in jobs[rule][0] and "--gpus" not in sbatch(*jobs[rule][0:3:2]), rule


def test_several_gpus_in_one_job_are_started_by_torchrun(tmp_path):
    jobs = planned(
        tmp_path,
        vae={"trainer": {"accelerator": "auto", "devices": 2}},
        dit={"trainer": {"accelerator": "gpu", "devices": 4}},
        sample={"devices": 2},
        resources={"gpu_model": "h100", "cpus_per_gpu": 6, "train_dit": {"mem_mb": 64000, "runtime": 4320}},
    )
    resources, shell, threads = jobs["train_dit"]
    command = sbatch(resources, threads)
    assert "--gpus=h100:4" in command and "--cpus-per-gpu=6" in command, command
    assert "--mem 64000" in command and "-t 4320" in command, command
    assert shell.startswith("torchrun --standalone --nnodes=1 --nproc-per-node=4 -m mdgen.stages.train_dit "), shell
    assert jobs["finetune_vae"][1].startswith(
        "torchrun --standalone --nnodes=1 --nproc-per-node=2 -m mdgen.stages.finetune_vae "
    )
    assert jobs["sample"][1].startswith("torchrun --standalone --nnodes=1 --nproc-per-node=2 -m mdgen.stages.sample ")
    assert "--gpus=h100:2" in sbatch(*jobs["sample"][0:3:2])


def test_several_nodes_take_the_mpi_route(tmp_path):
    jobs = planned(
        tmp_path,
        dit={"trainer": {"accelerator": "gpu", "devices": 8, "num_nodes": 4}},
        sample={"devices": 1, "num_nodes": 2},
        resources={"gpu_model": "h100"},
    )
    resources, shell, threads = jobs["train_dit"]
    assert resources["mpi"] == "srun"
    command = sbatch(resources, threads)
    for flag in ("--nodes=4", "--ntasks-per-node=8", "--gpus-per-node=h100:8", "--cpus-per-task=4"):
        assert flag in command, (flag, command)
    assert "--gpus=" not in command and "--ntasks-per-gpu" not in command, command
    assert "srun --nodes=4 --ntasks-per-node=8 --kill-on-bad-exit=1 python -m mdgen.stages.train_dit " in shell, shell

    # One GPU on each of 2 nodes: the plugin takes tasks_per_node only above 1.
    command = sbatch(*jobs["sample"][0:3:2])
    for flag in ("--nodes=2", "--ntasks=2", "--gpus-per-node=h100:1 --ntasks-per-node=1"):
        assert flag in command, (flag, command)
    assert "--ntasks-per-gpu" not in command and "--gpus=" not in command, command


def test_several_nodes_without_slurm_stop_with_a_message(tmp_path):
    jobs = planned(tmp_path, dit={"trainer": {"accelerator": "gpu", "devices": 2, "num_nodes": 2}})
    launch = jobs["train_dit"][1].split(" -m mdgen.stages.train_dit")[0]
    env = {"PATH": "/usr/bin:/bin"}  # no SLURM_JOB_ID: not inside a SLURM job
    result = subprocess.run(
        ["bash", "-c", launch.replace("python", f"{sys.executable} -c pass")], env=env, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "num_nodes: 2 needs a SLURM job (snakemake --profile slurm)" in result.stderr


def test_cpu_stages_ask_for_no_gpu(tmp_path):
    jobs = planned(tmp_path, dit={"trainer": {"accelerator": "cpu", "devices": 2}})
    resources, _, threads = jobs["train_dit"]
    assert "gpu" not in resources
    command = sbatch(resources, threads)
    assert "--gpus" not in command and "--cpus-per-task=8" in command, command


def test_cpu_rules_take_their_requests_from_the_config(tmp_path):
    jobs = planned(tmp_path, resources={"evaluate_generation": {"mem_mb": 1234, "runtime": 5}})
    assert jobs["evaluate_generation"][0]["mem_mb"] == 1234 and jobs["evaluate_generation"][0]["runtime"] == 5
    assert jobs["validate_dataset"][0]["mem_mb"] == 4000  # the schema's default
    assert "gpu" not in jobs["simulate_dataset"][0]


def test_one_process_stages_follow_their_sections_accelerator(tmp_path):
    """evaluate_vae runs where vae.trainer.accelerator says, one process however many devices
    fine-tuning uses; extract_latents where latents.accelerator says."""
    jobs = planned(tmp_path, vae={"trainer": {"accelerator": "cpu", "devices": 2}}, latents={"accelerator": "cpu"})
    for rule in ("evaluate_vae", "extract_latents"):
        resources, _, threads = jobs[rule]
        assert "gpu" not in resources and resources["cpus_per_task"] == 4, (rule, resources)
    jobs = planned(tmp_path, vae={"trainer": {"accelerator": "gpu", "devices": 2}})
    assert jobs["evaluate_vae"][0]["gpu"] == 1 and jobs["finetune_vae"][0]["gpu"] == 2


@pytest.mark.parametrize("profile_args", [["--profile", "slurm"]])
def test_slurm_profile_plans_the_whole_dag_from_the_repository_root(profile_args):
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", *profile_args, "-n", "--forceall"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # "Using profiles slurm and workflow specific profile profiles/default ..."
    assert re.search(r"Using profiles? slurm\b", output), output
    for rule in ("simulate_dataset", "finetune_vae", "train_dit", "sample", "evaluate_generation"):
        assert re.search(rf"^{rule}\s+1$", output, re.M), rule
