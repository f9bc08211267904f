# Shared by all rule files. Config validation, data set location, run-time environment.

import base64
import io
import json
from pathlib import Path

import yaml

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate


def typed_cli_values(value, schema):
    """Snakemake reads nested --config values (data='{"size": 64}') as strings; give them the
    types the schema asks for, so that the command line works like the config file."""
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        return {k: typed_cli_values(v, properties.get(k, {})) for k, v in value.items()}
    if isinstance(value, list):
        return [typed_cli_values(v, schema.get("items", {})) for v in value]
    types = schema.get("type", [])
    types = [types] if isinstance(types, str) else types
    if isinstance(value, str) and (types or "enum" in schema) and "string" not in types:
        return yaml.safe_load(value)
    # decode='{"colormap": null}' arrives as the string 'null'
    if value == "null" and "null" in types:
        return None
    return value


# Paths of this workflow's own files go through the file that names them, not workflow.basedir or
# the working directory: used as a module (README.md: Using mdgen as a Snakemake module), the main
# Snakefile and the working directory are the user's.
SCHEMA = yaml.safe_load(
    Path(workflow.source_path("../schemas/config.schema.yaml")).read_text()
)
# This checkout, when the workflow runs from a local one (a clone, or a module with a local path).
CHECKOUT = Path(str(workflow.current_basedir)).parents[1]
config.update(typed_cli_values(dict(config), SCHEMA))

# Fill defaults and check the config. On error, name the key and the problem instead of
# printing the whole schema (what snakemake.utils.validate's message does).
try:
    validate(config, "../schemas/config.schema.yaml", set_default=True)
except WorkflowError as error:
    cause = error.__context__  # the jsonschema.ValidationError
    if not hasattr(cause, "absolute_path"):
        raise
    key = ".".join(map(str, cause.absolute_path)) or "(top level)"
    raise WorkflowError(
        f"Invalid config at {key}: {cause.message}. "
        "Allowed keys, types and defaults: workflow/schemas/config.schema.yaml."
    ) from None


def config_conflicts():
    """Settings that are each valid but do not fit together, found before any job runs: what each
    would make fail, hours into a run, as 'key: problem' sentences."""
    data, vae, sample = config["data"], config["vae"], config["sample"]
    problems = []
    downsample = 2 ** (len(vae["ddconfig"]["ch_mult"]) - 1)
    if data["size"] % downsample:
        problems.append(
            f"data.size {data['size']} is not a multiple of the VA-VAE's downsampling {downsample} "
            f"(2 ** (len(vae.ddconfig.ch_mult) - 1), ch_mult {vae['ddconfig']['ch_mult']})"
        )
    if data["colormap"]:
        from matplotlib import colormaps

        if data["colormap"] not in colormaps:
            problems.append(
                f"data.colormap {data['colormap']!r} is not a matplotlib colour map (e.g. jet, turbo, viridis)"
            )
        if data["channels"] != 3:
            problems.append(
                f"data.colormap {data['colormap']!r} describes RGB files: it needs data.channels 3, "
                f"not {data['channels']}"
            )
        if vae["weight_init"]:
            problems.append(
                f"data.colormap {data['colormap']!r} makes the VA-VAE model 1-channel magnitudes, but "
                "vae.weight_init is a released VA-VAE, which takes RGB: set data.colormap: null to fine-tune it"
            )
    decode = config["decode"]
    if decode["colormap"]:
        from matplotlib import colormaps

        if decode["colormap"] not in colormaps:
            problems.append(
                f"decode.colormap {decode['colormap']!r} is not a matplotlib colour map (e.g. jet, turbo, viridis)"
            )
        if data["channels"] != 3:
            problems.append(
                f"decode.colormap {decode['colormap']!r} moves RGB colours onto a map: it needs data.channels 3, "
                f"not {data['channels']} (null for grey files)"
            )
        if data["colormap"] and data["colormap"] != decode["colormap"]:
            problems.append(
                f"decode.colormap {decode['colormap']!r} differs from data.colormap {data['colormap']!r}, whose "
                "map the samples are already drawn through: set decode.colormap to the same map or null"
            )
    if decode["noise"] and not (
        data["colormap"] or decode["colormap"] or data["channels"] == 1
    ):
        problems.append(
            "decode.noise draws noise on each pixel's magnitude, and RGB files without a colour map have none: "
            "set decode.colormap (or data.colormap) to the map the files are drawn in, or decode.noise: false"
        )
    decay_steps = config["dit"]["optimizer"]["decay_steps"]
    max_steps = config["dit"]["trainer"]["max_steps"]
    if decay_steps > max(max_steps, 0):
        problems.append(
            f"dit.optimizer.decay_steps {decay_steps} must lie within dit.trainer.max_steps "
            f"{max_steps} (0 keeps the learning rate constant)"
        )
    if vae["decay_epochs"] > max(vae["trainer"]["max_epochs"], 0):
        problems.append(
            f"vae.decay_epochs {vae['decay_epochs']} must lie within vae.trainer.max_epochs "
            f"{vae['trainer']['max_epochs']} (0 keeps the learning rates constant; a decay needs "
            "max_epochs >= 1, -1 trains by vae.trainer.max_steps alone)"
        )
    if data["source"] == "synthetic":
        per_user = config["simulator"]["train_per_user"]
        too_many = [k for k in config["evaluation"]["low_data_k"] if k > per_user]
        if too_many:
            problems.append(
                f"evaluation.low_data_k {too_many} asks for more train images per user than "
                f"simulator.train_per_user {per_user} makes"
            )
        # rounded as the augmentation study draws them
        needed = round(max(config["evaluation"]["ratios"]) * per_user)
        if sample["per_user"] < needed:
            problems.append(
                f"sample.per_user {sample['per_user']} does not cover the largest evaluation.ratios "
                f"{max(config['evaluation']['ratios'])} × simulator.train_per_user {per_user} = {needed}"
            )
    return problems


CONFLICTS = config_conflicts()
if CONFLICTS:
    raise WorkflowError(
        "The config's settings do not fit together:\n- " + "\n- ".join(CONFLICTS)
    )

SPLITS = ("train", "val")
SYNTHETIC_ROOT = "resources/synthetic"
USERS = [f"user_{index:02d}" for index in range(config["data"]["num_classes"])]

# Stage scripts run as `python -m mdgen.<stage>`. Put this checkout's package first on the path,
# so that a conda env (--sdm conda), which holds only the dependencies, runs this workflow's code.
# (Snakemake formats the prefix with the command: {{ }} is a literal brace.)
if (CHECKOUT / "src" / "mdgen").is_dir():
    shell.prefix(
        'export PYTHONPATH="%s${{PYTHONPATH:+:$PYTHONPATH}}"; ' % (CHECKOUT / "src")
    )


def dataset_root():
    """Root of the raw data set: the simulator's output, or the user's data.root."""
    if config["data"]["source"] == "synthetic":
        return SYNTHETIC_ROOT
    root = Path(config["data"]["root"])
    if not root.is_dir():
        raise WorkflowError(
            f"data.root is {str(root)!r}, which is not a folder (working directory: {Path.cwd()}). "
            "Point it at the folder that holds train/user_NN/ and val/user_NN/."
        )
    return str(root)


def dataset_files(wildcards):
    """What validate_dataset reads. For a user's folder every file is listed, so that adding,
    removing or changing any file reruns validation (and everything after it)."""
    if config["data"]["source"] == "synthetic":
        return rules.simulate_dataset.output
    root = Path(dataset_root())
    return sorted(
        str(path)
        for split in SPLITS
        if (root / split).is_dir()
        for path in (root / split).rglob("*")
        if path.is_file()
    )


def stage_config(*sections, **subsections):
    """The config a stage script reads, as the JSON its --config takes: whole sections, and of
    `subsections` (section=keys) only those keys, so that other settings of that section do not
    rerun the stage. Of the data section only what models depend on: validation settings must not
    retrain them."""
    data = {
        key: config["data"][key]
        for key in ("size", "channels", "colormap", "num_classes")
    }
    parts = {s: config[s] for s in sections} | {
        s: {key: config[s][key] for key in keys} for s, keys in subsections.items()
    }
    return json.dumps({"data": data} | parts, sort_keys=True)


def pretrained_files(section):
    """Local weight files a stage loads (as inputs: a missing one stops the run before it starts)."""
    settings = config[section]
    if section == "dit":
        return [settings["weight_init"]] if settings["weight_init"] else []
    paths = [
        settings["weight_init"],
        settings["foundation"]["weights"] if settings["use_vf"] else None,
        (
            settings["perceptual"]["vgg16_weights"]
            if settings["lossconfig"]["perceptual_weight"] > 0
            and settings["perceptual"]["network"] == "lpips"
            else None
        ),
    ]
    return [path for path in paths if path]


def launch_settings(section):
    """devices, num_nodes and accelerator of a stage: its Trainer's, or (sample) its own."""
    return config[section].get("trainer", config[section])


def launcher(section):
    """The command that starts a stage script (`{launcher} -m mdgen.<stage>`): one process, or one
    per device. On one node torchrun starts them (inside a SLURM job too: the plugin runs the job
    as one task, and Lightning reads torchrun's environment before SLURM's). Over several nodes
    srun starts devices tasks on each node of the job (the plugin's MPI route), and Lightning reads
    SLURM's environment."""
    settings = launch_settings(section)
    devices, nodes = settings["devices"], settings["num_nodes"]
    if nodes > 1:
        need_job = f"num_nodes: {nodes} needs a SLURM job (snakemake --profile slurm)"
        return f": ${{SLURM_JOB_ID:?{need_job}}}; srun --nodes={nodes} --ntasks-per-node={devices} --kill-on-bad-exit=1 python"
    if devices > 1:
        return f"torchrun --standalone --nnodes=1 --nproc-per-node={devices}"
    return "python"


def gpu_resources(rule, section, one_process=False):
    """The resources of a GPU rule. GPUs (devices × num_nodes of `section`, or 1 for a
    `one_process` stage), CPUs per GPU, and the memory and runtime config.resources gives the
    rule. A stage whose section sets accelerator: cpu asks for no GPU. See docs/cluster.md.
    """
    settings = {"devices": 1, "num_nodes": 1} | launch_settings(section)
    if one_process:
        settings |= {"devices": 1, "num_nodes": 1}
    devices, nodes = settings["devices"], settings["num_nodes"]
    asked = config["resources"]
    job = dict(asked[rule])
    if settings["accelerator"] == "cpu":
        return job | {"cpus_per_task": asked["cpus_per_gpu"] * devices}
    model = asked["gpu_model"]
    if nodes == 1:  # sbatch --gpus=[model:]N --cpus-per-gpu=C
        job |= {"gpu": devices, "cpus_per_gpu": asked["cpus_per_gpu"]}
        return job | ({"gpu_model": model} if model else {})
    # Several nodes: N tasks and N GPUs on each (sbatch --nodes=M --ntasks-per-node=N
    # --gpus-per-node=N); the rule's srun starts the tasks. The plugin takes tasks_per_node only
    # above 1, so one GPU per node is asked as M tasks of one per node.
    per_node = f"{model}:{devices}" if model else f"{devices}"
    job |= {"mpi": "srun", "nodes": nodes, "cpus_per_task": asked["cpus_per_gpu"]}
    if devices > 1:
        return job | {
            "tasks_per_node": devices,
            "slurm_extra": f"--gpus-per-node={per_node}",
        }
    return job | {
        "tasks": nodes,
        "slurm_extra": f"--gpus-per-node={per_node} --ntasks-per-node=1",
    }


# Representation alignment (docs/pipeline.md). The teacher and REPA's inputs appear only when
# the config uses them, so that a run without alignment has the DAG it always had.


def vf_teacher():
    """finetune_vae's teacher input: the spectrogram teacher with vae.use_vf domain or a
    perceptual term on the teacher's features (mdgen.training.vavae.teacher_uses)."""
    vae = config["vae"]
    uses = vae["use_vf"] == "domain" or (
        vae["lossconfig"]["perceptual_weight"] > 0
        and vae["perceptual"]["network"] == "domain"
    )
    return ["results/teacher/teacher.pt"] if uses else []


def repa_teacher():
    """Whether the DiTs align to the spectrogram teacher (REPA with encoder domain)."""
    repa = config["dit"]["repa"]
    return repa["weight"] > 0 and repa["encoder"] == "domain"


def evaluation_teachers():
    """{training set: teacher file} of the generators that align to a teacher, for the record
    (and the check) of what each teacher saw in generation.json."""
    teachers = {}
    if vf_teacher() or repa_teacher():
        teachers["real_train"] = "results/teacher/teacher.pt"
    if repa_teacher():
        teachers |= {
            f"k{k}": f"results/lowdata/k{k}/teacher/teacher.pt"
            for k in config["evaluation"]["low_data_k"]
        }
    return teachers


def vae_sections():
    """The sections a VA-VAE-training stage reads: the teacher's too when the latents align to it."""
    return ["vae", "logging"] + (["teacher"] if vf_teacher() else [])


def fidelity_probe():
    """Whether train_dit runs the fidelity probe (logging.fidelity_every_n_steps)."""
    return config["logging"]["fidelity_every_n_steps"] > 0


def dit_inputs(teacher):
    """train_dit's optional inputs: the real images (manifest) for REPA's encoder and the fidelity
    probe's judges, and REPA's encoder, `teacher` or the dinov2/mae weights."""
    repa = config["dit"]["repa"]
    inputs = {}
    if repa["weight"] > 0 or fidelity_probe():
        inputs["manifest"] = "results/dataset/manifest.csv"
    if repa_teacher():
        inputs["teacher"] = teacher
    elif repa["weight"] > 0 and repa["weights"]:
        inputs["encoder_weights"] = repa["weights"]
    return inputs


def dit_config():
    """train_dit's --config: the fidelity probe also reads the sampling settings and the judges'
    recipe (neither is part of what training resumes by: a change only re-exports)."""
    if fidelity_probe():
        return stage_config(
            "dit", "logging", "sample", evaluation=("seeds", "classifier")
        )
    return stage_config("dit", "logging")


def alignment_args(wildcards, input):
    """--manifest/--teacher for a stage whose inputs came from vf_teacher or dit_inputs."""
    return " ".join(
        f"--{name} {getattr(input, name)}"
        for name in ("manifest", "teacher")
        if hasattr(input, name)
    )


def report_answer(generation_json, grid_png):
    """What the report's front page states (workflow/report/workflow.rst): the identity table and
    real vs real + synthetic of a finished evaluation, as text cells, and the sample grid; None
    before there is one, or for a file an older mdgen wrote (the page then says there is no
    evaluation yet)."""
    path = Path(generation_json)
    if not path.exists():
        return None
    try:
        answer = answer_table(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError):
        return None
    return answer | {"grid": picture_uri(grid_png)}


def picture_uri(png, longest=1600):
    """The PNG as a data URI the front page shows inline (the report is one self-contained file),
    scaled so that its longer side is at most `longest` pixels, as the argument of an rST image
    directive; None without the file, or without Pillow where Snakemake runs (the page then links
    the picture only)."""
    if not Path(png).exists():
        return None
    try:
        from PIL import Image
    except ImportError:
        return None
    with Image.open(png) as image:
        image.thumbnail((longest, longest))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
    uri = f"data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"
    # In lines docutils accepts (it refuses lines over 10 000 characters), indented under the
    # image directive, which joins them again.
    return "\n   ".join(uri[i : i + 4000] for i in range(0, len(uri), 4000))


def answer_table(results):
    def cell(value):
        return f"{value['mean']:.3f} ± {value['std']:.3f}"

    identity = results["identity"]
    steps = ("real_val", "reconstructions", "fidelity", "cas")
    return {
        "chance": f"{identity['chance']:.3f}",
        "identity": [
            [identity["labels"].get(name, name), *(cell(row[step]) for step in steps)]
            for name, row in identity["generators"].items()
        ],
        "augmentation": [["real only", cell(results["real_only"]["val_accuracy"])]]
        + [
            [f"real + synthetic ×{run['ratio']:g}", cell(run["val_accuracy"])]
            for run in results["augmented"]
        ],
    }


# The report's front page template sees only the config (snakemake.config), so the answer of a
# finished run travels there; no rule reads this key.
config["report_answer"] = report_answer(
    "results/eval/generation.json", "results/samples/grid.png"
)
