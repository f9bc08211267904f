"""The Snakemake workflow, run for real: lint, formatting, config validation, and a tiny pipeline."""

import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
import zarr
from conftest import TINY as TINY_MODELS
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mdgen.data.images import colormap_table

REPO = Path(__file__).resolve().parents[1]

TINY = {
    "data": {"num_classes": 4, "size": 32},
    "simulator": {"train_per_user": 3, "val_per_user": 2},
    **{section: TINY_MODELS[section] for section in ("vae", "dit", "sample", "evaluation")},
}
STAGES = [
    "simulate_dataset",
    "validate_dataset",
    "finetune_vae",
    "evaluate_vae",
    "extract_latents",
    "train_dit",
    "sample",
    "evaluate_generation",
]
MANIFEST = "results/dataset/manifest.csv"


# Rules call `python`: make it this interpreter, whatever the caller's PATH says.
ENV = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def snakemake_command(workdir, *args, config=None) -> list[str]:
    """The real snakemake command line on this repository's Snakefile in `workdir`; with `config`,
    written to `workdir`/test.yaml, else that file if an earlier call wrote it. Run it with ENV."""
    workdir = Path(workdir)
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir), *args]
    if config is not None:
        (workdir / "test.yaml").write_text(yaml.safe_dump(config))
    if (workdir / "test.yaml").exists():
        command += ["--configfile", str(workdir / "test.yaml")]
    return command


def snakemake(workdir, *args, config=None):
    """Run the real snakemake command line on this repository's Snakefile in `workdir`."""
    command = snakemake_command(workdir, *args, config=config)
    return subprocess.run(command, cwd=workdir, env=ENV, capture_output=True, text=True, timeout=600)


def planned_jobs(result):
    """Rule names of the jobs a dry run (-n) would execute."""
    assert result.returncode == 0, result.stderr + result.stdout
    lines = (result.stdout + result.stderr).splitlines()
    return {line.split()[1].rstrip(":") for line in lines if line.startswith("rule ")} - {"all"}


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_lint_is_clean():
    result = subprocess.run([sys.executable, "-m", "snakemake", "--lint"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Lints for" not in result.stdout + result.stderr


def test_snakefmt_check_passes():
    result = subprocess.run(
        [sys.executable, "-m", "snakefmt", "--check", "Snakefile", "workflow"], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_ruff_is_clean(command):
    result = subprocess.run(
        [sys.executable, "-m", "ruff", *command, "src", "tests", "benchmarks"], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_stage_imports_another_stage():
    stages = sorted((REPO / "src/mdgen/stages").glob("*.py"))
    assert len(stages) == 10  # 9 rule scripts and the package's __init__
    importing = re.compile(r"^\s*(from|import) mdgen\.stages", re.M)
    for stage in stages:
        message = f"{stage.name} imports a stage: move what it needs to the library"
        assert not importing.search(stage.read_text()), message


def test_default_config_plans_the_whole_dag():
    jobs = planned_jobs(snakemake(REPO, "-n"))
    assert jobs == set(STAGES) | {"train_teacher"}  # the default aligns the VA-VAE and the DiT to the teacher


@pytest.mark.parametrize(
    "change, message",
    [
        ({"data": {"size": "big"}}, "Invalid config at data.size: 'big' is not of type 'integer'"),
        (
            {"data": {"sizee": 64}},
            "Invalid config at data: Additional properties are not allowed ('sizee' was unexpected)",
        ),
        (
            {"diffusion": {"depth": 2}},
            "Invalid config at (top level): Additional properties are not allowed ('diffusion' was unexpected)",
        ),
        (
            {"dit": {"depth": 2}},
            "Invalid config at dit: Additional properties are not allowed ('depth' was unexpected)",
        ),
        ({"data": {"channels": 2}}, "Invalid config at data.channels: 2 is not one of [1, 3]"),
        ({"data": {"size": 40}}, "Invalid config at data.size: 40 is not a multiple of 16"),
        ({"data": {"source": "folder"}}, "Invalid config at data.root: None is not of type 'string'"),
        (
            {"simulator": {"prf_hz": -1}},
            "Invalid config at simulator.prf_hz: -1 is less than or equal to the minimum of 0",
        ),
        (
            {"dit": {"trainer": {"devices": 0}}},
            "Invalid config at dit.trainer.devices: 0 is less than the minimum of 1",
        ),
        ({"resources": {"gpu_model": "a 100"}}, "Invalid config at resources.gpu_model: 'a 100' does not match"),
        # Valid alone, not together: refused before any job, with the keys named.
        (
            {"vae": {"ddconfig": TINY_MODELS["vae"]["ddconfig"] | {"ch_mult": [1, 2, 2, 2, 2, 2, 2]}}},
            "data.size 32 is not a multiple of the VA-VAE's downsampling 64",
        ),
        ({"evaluation": {"low_data_k": [5]}}, "evaluation.low_data_k [5] asks for more train images per user"),
        ({"sample": {"per_user": 1}}, "sample.per_user 1 does not cover the largest evaluation.ratios 0.5"),
        (
            {"dit": {"optimizer": {"decay_steps": 100000}}},
            "dit.optimizer.decay_steps 100000 must lie within dit.trainer.max_steps",
        ),
        ({"vae": {"decay_epochs": 50}}, "vae.decay_epochs 50 must lie within vae.trainer.max_epochs"),
        (
            {"vae": {"decay_epochs": 1, "trainer": {"max_epochs": -1, "max_steps": 40}}},
            "a decay needs max_epochs >= 1, -1 trains by vae.trainer.max_steps alone",
        ),
        (
            {"data": {"colormap": "jet", "channels": 1}},
            "data.colormap 'jet' describes RGB files: it needs data.channels 3",
        ),
        ({"data": {"colormap": "jett"}}, "data.colormap 'jett' is not a matplotlib colour map"),
        ({"decode": {"colormap": "jett"}}, "decode.colormap 'jett' is not a matplotlib colour map"),
        (
            {"decode": {"colormap": None, "noise": True}},
            "decode.noise draws noise on each pixel's magnitude, and RGB files without a colour map have none",
        ),
        (
            {"data": {"colormap": "viridis"}, "decode": {"colormap": "jet"}},
            "decode.colormap 'jet' differs from data.colormap 'viridis'",
        ),
        (
            {"data": {"colormap": "jet"}, "vae": {"weight_init": "released.pt"}},
            "vae.weight_init is a released VA-VAE, which takes RGB: set data.colormap: null",
        ),
    ],
)
@pytest.mark.fault
def test_bad_config_is_rejected_with_the_key_named(tmp_path, change, message):
    config = {section: TINY[section] | change.get(section, {}) for section in TINY} | {
        k: v for k, v in change.items() if k not in TINY
    }
    result = snakemake(tmp_path, "-n", config=config)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr


def test_nested_command_line_values_get_the_schema_types(tmp_path):
    command = [
        sys.executable,
        "-m",
        "snakemake",
        "-n",
        "-p",
        "--config",
        'data={"size": 64, "channels": 1}',
        'evaluation={"low_data_k": [4]}',
        'decode={"colormap": null}',  # grey files have no colour map (the default's is jet)
    ]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert '"channels": 1' in output and '"size": 64' in output and "--per-user 4" in output
    assert '"decode": {"colormap": null' in output


def test_schema_fills_defaults(tmp_path):
    result = snakemake(tmp_path, "-n", "--printshellcmds", config={"data": {"num_classes": 4}})
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    for default in ('"size": 128', '"channels": 3', '"on_bad_file": "fail"', '"prf_hz": 3000.0'):
        assert default in output, default


def test_tiny_pipeline_runs_and_then_has_nothing_to_do(tiny_run, tmp_path):
    tmp_path = tmp_path / "run"  # a copy of the shared run (`snakemake --cores 2`, then --report)
    shutil.copytree(tiny_run[0], tmp_path, symlinks=True)

    rows = read_csv(tmp_path / "results/dataset/manifest.csv")
    assert len(rows) == 4 * (3 + 2)
    assert {row["user_id"] for row in rows} == {"user_00", "user_01", "user_02", "user_03"}
    assert all(row["path"].startswith("resources/synthetic/") and row["mode"] == "RGB" for row in rows)
    assert all(Image.open(tmp_path / row["path"]).size == (32, 32) for row in rows)
    report = json.loads((tmp_path / "results/dataset/report.json").read_text())
    assert report["passed"] and report["totals"]["valid_images"] == {"train": 12, "val": 8}
    users = json.loads((tmp_path / "resources/synthetic/users.json").read_text())
    assert len(users["users"]) == 4
    for rule in ("simulate_dataset", "validate_dataset"):
        assert (tmp_path / f"results/logs/{rule}.log").stat().st_size > 0
        assert (tmp_path / f"results/benchmarks/{rule}.tsv").exists()
    assert "No problems found." in (tmp_path / "results/logs/validate_dataset.log").read_text()

    for name in ("vavae.pt", "metrics.csv", "curves.png", "eval.json", "reconstructions.png"):
        assert (tmp_path / "results/vae" / name).stat().st_size > 0
    assert json.loads((tmp_path / "results/vae/eval.json").read_text())["images"] == 8
    for split, count in (("train", 12), ("val", 8)):
        assert zarr.open_group(tmp_path / f"results/latents/{split}.zarr", mode="r")["latents"].shape[0] == count
    for name in ("dit.pt", "metrics.csv", "curves.png"):
        assert (tmp_path / "results/dit" / name).stat().st_size > 0
    samples = sorted(p.relative_to(tmp_path / "results/samples") for p in (tmp_path / "results/samples").rglob("*.png"))
    assert [str(p) for p in samples] == ["grid.png"] + [
        f"user_{u:02d}/sample_{i:04d}.png" for u in range(4) for i in range(2)
    ]

    # Logs read as lines: no progress-bar repaints; training reports its progress as plain lines.
    for log in (tmp_path / "results/logs").glob("*.log"):
        assert "\r" not in log.read_text(), log.name
    assert re.search(r"^step \d+ \(epoch \d+\): 100% done", (tmp_path / "results/logs/train_dit.log").read_text(), re.M)
    # TensorBoard: both training stages wrote scalars and a picture of their progress.
    for stage, scalar, picture in (
        ("vae", "train/rec_loss", "reconstructions (top: val input)"),
        ("dit", "train/loss", "samples (one per user, EMA)"),
    ):
        (events,) = (tmp_path / f"results/{stage}/training/tensorboard").glob("version_*")
        tags = EventAccumulator(str(events)).Reload().Tags()
        assert scalar in tags["scalars"] and picture in tags["images"], (stage, tags)
    identity = json.loads((tmp_path / "results/eval/generation.json").read_text())["identity"]
    assert set(identity["generators"]["real_train"]) == {"real_val", "reconstructions", "fidelity", "cas"}
    assert (tmp_path / "results/eval/identity.png").stat().st_size > 0

    assert "Nothing to be done" in (lambda r: r.stdout + r.stderr)(snakemake(tmp_path, "-n", config=TINY))
    # Each setting reruns its own stage and what depends on it, nothing upstream.
    report = json.loads((tmp_path / "results/eval/generation.json").read_text())
    assert report["real_only"]["val_accuracy"]["runs"] and report["low_data"] == {}

    # The report's front page states the run's answer, with links to its figures.
    page = json.loads(re.search(r"var workflow_desc = (\".*?\");\n", (tmp_path / "results/report.html").read_text())[1])
    cas = report["synthetic_only"]["val_accuracy"]
    assert f"<td>{cas['mean']:.3f} ± {cas['std']:.3f}</td>" in page and "Does the generator keep the person?" in page
    for figure in ("eval/identity.png", "eval/accuracy_vs_ratio.png", "samples/grid.png"):
        assert f"showResultInfo('results/{figure}')\">{figure.split('/')[1]}</a>" in page, figure
    assert "system-message" not in page  # no reStructuredText error or warning on the page
    html = (tmp_path / "results/report.html").read_text()
    assert "system-message" not in html and html.count("<strong>Good:</strong>") >= 10  # every caption says both

    changes = {
        "evaluation": ({"evaluation": {"knn_k": 2}}, STAGES[7:]),
        "sample": ({"sample": {"cfg_scale": 2.0}}, STAGES[6:]),
        # the reconstructions and the samples are written through the decode steps; nothing is retrained
        "decode": ({"decode": {"colormap": "jet", "noise": True}}, ["evaluate_vae", "sample", "evaluate_generation"]),
        "dit": ({"dit": {"ema_decay": 0.5}}, STAGES[5:]),
        "latents": ({"latents": {"sample_posterior": False}}, STAGES[4:]),
        "vae": ({"vae": {"base_learning_rate": 1e-4}}, STAGES[2:]),
        "validation": ({"data": {"on_bad_file": "skip"}}, STAGES[1:]),
        "simulator": ({"simulator": {"seed": 1}}, STAGES),
    }
    for name, (change, expected) in changes.items():
        changed = {section: TINY.get(section, {}) | change.get(section, {}) for section in TINY | change}
        assert planned_jobs(snakemake(tmp_path, "-n", config=changed)) == set(expected), name


CONTRACT = REPO / "tests" / "fixtures" / "tiny_run_contract.json"
# What records the run rather than its results, and training's resumable state (named by time).
NOT_IN_CONTRACT = {".snakemake", "logs", "benchmarks", "training", "test.yaml"}


def describe(path: Path) -> str | dict | list:
    """What a user relies on in an output: a picture's size and mode, a table's columns, a JSON
    file's keys, a store's arrays, a checkpoint's entries; never the values a run computes."""
    if path.suffix == ".png":
        with Image.open(path) as image:
            return f"png {image.size[0]}x{image.size[1]} {image.mode}"
    if path.suffix == ".csv":
        return f"csv: {path.read_text().splitlines()[0]}"
    if path.suffix == ".json":
        return json_keys(json.loads(path.read_text()))
    if path.suffix == ".zarr":
        with warnings.catch_warnings():  # Snakemake's .snakemake_timestamp is no zarr object
            warnings.simplefilter("ignore")
            group = zarr.open_group(path, mode="r")
            arrays = {name: f"{array.dtype} {list(array.shape)}" for name, array in sorted(group.arrays())}
        return arrays | {"attrs": sorted(group.attrs)}
    if path.suffix == ".pt":
        return sorted(torch.load(path, map_location="cpu", weights_only=False))
    return "file"


def json_keys(value, prefix=""):
    """The key paths of a JSON document (lists by their first item)."""
    if isinstance(value, dict):
        return sorted(key for name, item in value.items() for key in json_keys(item, f"{prefix}{name}.")) or [prefix]
    if isinstance(value, list) and value and isinstance(value[0], (dict, list)):
        return json_keys(value[0], f"{prefix}[].")
    return [prefix.rstrip(".")]


def run_contract(workdir: Path) -> dict:
    """The tiny run as its users see it: the config keys it accepts, the rules that ran, every
    output file (zarr stores as one) and what it holds."""
    outputs = {}
    pending = [workdir / "results", workdir / "resources"]
    while pending:
        for path in sorted(pending.pop().iterdir()):
            if path.name in NOT_IN_CONTRACT:
                continue
            if path.is_dir() and path.suffix != ".zarr":
                pending.append(path)
            else:
                outputs[str(path.relative_to(workdir))] = describe(path)
    default = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    return {
        "config_keys": json_keys(default),
        "rules": sorted(p.stem for p in (workdir / "results" / "benchmarks").glob("*.tsv")),
        "outputs": dict(sorted(outputs.items())),
    }


def test_the_tiny_run_keeps_its_contract(tiny_run):
    """Nothing a user runs changes unnoticed: same config keys, rules, output files and what they
    hold as the contract written when the layout was settled. A deliberate change rewrites it:
    MDGEN_WRITE_CONTRACT=1 pytest tests/test_workflow.py -k contract, and the diff is reviewed."""
    contract = run_contract(tiny_run[0])
    if os.environ.get("MDGEN_WRITE_CONTRACT"):
        CONTRACT.write_text(json.dumps(contract, indent=1, ensure_ascii=False) + "\n")
    expected = json.loads(CONTRACT.read_text())
    for part in ("config_keys", "rules"):
        assert contract[part] == expected[part], part
    assert contract["outputs"].keys() == expected["outputs"].keys()
    for path, described in expected["outputs"].items():
        assert contract["outputs"][path] == described, path


def test_tiny_pipeline_with_alignment_and_the_low_data_study(tmp_path):
    """The study preset's settings on tiny sizes: VF loss, perceptual term and REPA against the
    teacher, a low-data generator with its own teacher, and the fidelity probe, end to end, on
    jet colour-mapped data modelled as its magnitude (data.colormap)."""
    config = TINY | {
        "data": TINY["data"] | {"colormap": "jet"},
        "teacher": {"width": 4, "size": 32, "epochs": 3, "batch_size": 4},
        "vae": TINY["vae"]
        | {
            "use_vf": "domain",
            "lossconfig": TINY["vae"].get("lossconfig", {}) | {"perceptual_weight": 1.0},
            "perceptual": {"network": "domain"},
        },
        "dit": TINY["dit"] | {"repa": {"weight": 0.5, "depth": 1, "projector_dim": 16}},
        "evaluation": TINY["evaluation"] | {"low_data_k": [2]},
        "logging": {"fidelity_every_n_steps": 10, "fidelity_per_user": 1},
        # the decoder's noise fitted by evaluate_vae and drawn by both sample rules
        "decode": {"colormap": "jet", "noise": True},
    }
    result = snakemake(tmp_path, "--cores", "2", config=config)
    assert result.returncode == 0, result.stderr + (tmp_path / "results/logs").joinpath("train_dit.log").read_text()
    teacher, low_data_teacher = (
        json.loads((tmp_path / f"results/{where}teacher/teacher.json").read_text())["saw"]
        for where in ("", "lowdata/k2/")
    )
    assert (teacher["count"], low_data_teacher["count"]) == (12, 4 * 2)
    vae = torch.load(tmp_path / "results/vae/vavae.pt", weights_only=True)
    dit = torch.load(tmp_path / "results/dit/dit.pt", weights_only=True)
    assert vae["config"]["teacher_sha256"] == dit["config"]["alignment"]["sha256"]
    assert "repa_projector" in dit and "train/repa" in read_csv(tmp_path / "results/dit/metrics.csv")[0]
    assert any(row.get("probe/fidelity") for row in read_csv(tmp_path / "results/dit/metrics.csv"))
    generation = json.loads((tmp_path / "results/eval/generation.json").read_text())
    assert generation["teacher_saw"] == "real_train" and generation["low_data"]["k2"]["teacher_saw"] == "k2"
    noise = json.loads((tmp_path / "results/vae/decoder_noise.json").read_text())
    assert noise["applied"] and noise["model"]["images"] == 12 and len(noise["model"]["std"]) == 16
    for log in ("sample.log", "sample_k2.log"):
        assert "noise fitted on 12 train images drawn" in (tmp_path / "results/logs" / log).read_text(), log
    assert generation["teachers"]["k2"]["fingerprint"] == low_data_teacher["fingerprint"]
    # the models saw 1-channel magnitudes; the samples are RGB files in jet's colours
    assert vae["config"]["model"]["in_channels"] == vae["config"]["model"]["out_ch"] == 1
    jet = {tuple(colour) for colour in colormap_table("jet")}
    samples = sorted((tmp_path / "results/samples").glob("user_*/*.png"))
    assert samples and all({tuple(c) for c in np.asarray(Image.open(p)).reshape(-1, 3)} <= jet for p in samples)
    # and TensorBoard shows the pictures through jet too
    (events,) = (tmp_path / "results/vae/training/tensorboard").glob("version_*")
    picture = EventAccumulator(str(events)).Reload().Images("reconstructions (top: val input)")[-1]
    drawn = np.asarray(Image.open(io.BytesIO(picture.encoded_image_string)).convert("RGB"))
    assert (drawn[..., 0] != drawn[..., 2]).any()  # colours, not a grey magnitude


def test_usable_as_a_snakemake_module(tmp_path):
    """A folder with only a Snakefile that imports the workflow (local-path form) and its own config
    runs the whole pipeline, with every output in that folder."""
    (tmp_path / "config").mkdir()
    (tmp_path / "config/config.yaml").write_text(yaml.safe_dump(TINY | {"logging": {"tensorboard": False}}))
    (tmp_path / "Snakefile").write_text(
        f'configfile: "config/config.yaml"\n\n\nmodule mdgen:\n    snakefile:\n        "{REPO / "Snakefile"}"\n'
        "    config:\n        config\n\n\nuse rule * from mdgen\n"
    )
    command = [sys.executable, "-m", "snakemake", "--cores", "2"]
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    for output in (
        "results/dataset/manifest.csv",
        "results/vae/vavae.pt",
        "results/dit/dit.pt",
        "results/eval/generation.json",
    ):
        assert (tmp_path / output).stat().st_size > 0, output
    assert len(list((tmp_path / "results/samples").glob("user_*/*.png"))) == 4 * 2


@pytest.fixture
def user_folder(tmp_path):
    """A user's own data set (2 users) with one text file posing as a PNG."""
    root = tmp_path / "my_data"
    rng = np.random.default_rng(0)
    for split, count in (("train", 2), ("val", 1)):
        for user in ("user_00", "user_01"):
            (root / split / user).mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
                    root / split / user / f"{i}.png"
                )
    (root / "train/user_01/notes.png").write_text("not an image")
    return root


def folder_config(root, on_bad_file):
    return {"data": {"source": "folder", "root": str(root), "num_classes": 2, "size": 32, "on_bad_file": on_bad_file}}


def test_folder_data_with_a_bad_file_fails_under_fail_and_is_skipped_under_skip(tmp_path, user_folder):
    before = {p: p.read_bytes() for p in user_folder.rglob("*") if p.is_file()}

    failed = snakemake(tmp_path, "--cores", "1", MANIFEST, config=folder_config(user_folder, "fail"))
    assert failed.returncode != 0
    log = (tmp_path / "results/logs/validate_dataset.log").read_text()
    assert "not_an_image" in log and "train/user_01/notes.png" in log
    assert not (tmp_path / "results/dataset/manifest.csv").exists()

    skipped = snakemake(tmp_path, "--cores", "1", MANIFEST, config=folder_config(user_folder, "skip"))
    assert skipped.returncode == 0, skipped.stderr
    paths = [row["path"] for row in read_csv(tmp_path / "results/dataset/manifest.csv")]
    assert len(paths) == 6 and not any(p.endswith("notes.png") for p in paths)
    report = json.loads((tmp_path / "results/dataset/report.json").read_text())
    assert report["excluded"] == [{"path": str(user_folder / "train/user_01/notes.png"), "kind": "not_an_image"}]

    assert {p: p.read_bytes() for p in user_folder.rglob("*") if p.is_file()} == before


@pytest.mark.fault
def test_adding_a_file_to_the_users_folder_reruns_validation(tmp_path, user_folder):
    (user_folder / "train/user_01/notes.png").unlink()
    config = folder_config(user_folder, "fail")
    assert snakemake(tmp_path, "--cores", "1", MANIFEST, config=config).returncode == 0
    Image.new("RGB", (32, 32), "red").save(user_folder / "val/user_00/new.png")
    assert planned_jobs(snakemake(tmp_path, "-n", MANIFEST, config=config)) == {"validate_dataset"}


def test_a_missing_data_root_is_a_clear_error(tmp_path):
    result = snakemake(tmp_path, "-n", config=folder_config(tmp_path / "nowhere", "fail"))
    assert result.returncode != 0
    assert "which is not a folder" in result.stdout + result.stderr


def test_an_evaluation_written_by_an_older_version_does_not_stop_planning(tmp_path):
    """The report's front page reads results/eval/generation.json when the workflow is parsed: a file of
    another layout leaves the page without the answer, and planning goes on."""
    (tmp_path / "results/eval").mkdir(parents=True)
    (tmp_path / "results/eval/generation.json").write_text('{"real_only": {}}')
    result = snakemake(tmp_path, "-n", config=TINY)
    assert result.returncode == 0, result.stderr
