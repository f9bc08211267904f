"""The alignment ablation of the study preset: off, REPA only, VF only, both (docs/identity-study.md).

    python benchmarks/alignment_ablation.py run --root /tmp/ablation      # about 1½ hours on 2 CPU cores
    python benchmarks/alignment_ablation.py summarize --root /tmp/ablation --out docs/

`run` makes one folder per setting under --root (a clone of this checkout's files is not needed:
each folder gets a Snakefile that uses this workflow as a module) and runs the whole study preset
in each, one after the other (two torch processes on two cores slow each other several times).
The settings that share a VA-VAE share its files: REPA only reuses the "off" VA-VAE and latents,
"both" the VF-aligned ones, copied with their times so that Snakemake does not redo them. Every
run has the fidelity probe on, so the DiT's curves hold steps-to-fidelity.

`summarize` reads each folder's results/vae/eval.json, results/eval/generation.json and
results/dit/metrics.csv and writes alignment_ablation.md (the table) and alignment_ablation.png
(probe fidelity against DiT steps, both judges) into --out.
"""

import argparse
import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from mdgen.config import deep_update
from mdgen.plots import plt, save

REPO = Path(__file__).resolve().parents[1]
REPA = {"repa": {"weight": 0.5, "depth": 2, "encoder": "domain", "projector_dim": 512}}
# name -> (config changes, the setting whose VA-VAE it reuses)
SETTINGS = {
    "off": ({}, None),
    "repa": ({"dit": REPA}, "off"),
    "vf": ({"vae": {"use_vf": "domain"}}, None),
    "both": ({"vae": {"use_vf": "domain"}, "dit": REPA}, "vf"),
}
SHARED = ("resources", "results/dataset")
VAE_OUTPUTS = ("results/teacher", "results/vae", "results/latents")


def run(root: Path) -> None:
    study = yaml.safe_load((REPO / "config/presets/study.yaml").read_text())
    default = yaml.safe_load((REPO / "config/config.yaml").read_text())
    for name, (changes, reuses) in SETTINGS.items():
        folder = root / name
        (folder / "config").mkdir(parents=True, exist_ok=True)
        config = deep_update(deep_update(default, study), changes)
        (folder / "config/config.yaml").write_text(yaml.safe_dump(config))
        (folder / "Snakefile").write_text(
            f'configfile: "config/config.yaml"\n\n\nmodule mdgen:\n    snakefile:\n        "{REPO / "Snakefile"}"\n'
            "    config:\n        config\n\n\nuse rule * from mdgen\n"
        )
        # The simulated data of the first setting, and the VA-VAE of the one it reuses.
        source = root / (reuses or next(iter(SETTINGS)))
        for part in SHARED + (VAE_OUTPUTS if reuses else ()):
            if source != folder and (source / part).exists() and not (folder / part).exists():
                shutil.copytree(source / part, folder / part, symlinks=True, copy_function=shutil.copy2)
        print(f"== {name}: snakemake in {folder}", flush=True)
        command = [sys.executable, "-m", "snakemake", "--cores", "all", "--rerun-triggers", "mtime"]
        with open(folder / "run.log", "w") as log:
            subprocess.run(command, cwd=folder, stdout=log, stderr=subprocess.STDOUT, check=True)


def probe_curves(metrics_csv: Path) -> dict[str, list[tuple[int, float]]]:
    curves = {"probe/fidelity": [], "probe/fidelity_recon_judge": []}
    with open(metrics_csv, newline="") as f:
        for row in csv.DictReader(f):
            for name, points in curves.items():
                if row.get(name):
                    points.append((int(float(row["step"])) + 1, float(row[name])))
    return curves


def summarize(root: Path, out: Path) -> None:
    rows, curves, chance = [], {}, None
    for name in SETTINGS:
        folder = root / name
        if not (folder / "results/eval/generation.json").exists():
            print(f"{name}: no results/eval/generation.json in {folder}, left out")
            continue
        vae = json.loads((folder / "results/vae/eval.json").read_text())
        generation = json.loads((folder / "results/eval/generation.json").read_text())
        chance = 1 / generation["num_classes"]
        curves[name] = probe_curves(folder / "results/dit/metrics.csv")
        fd, pr = generation["frechet_distance"], generation["precision_recall"]
        augmented = {a["ratio"]: a["val_accuracy"] for a in generation["augmented"]}
        cell = lambda v: f"{v['mean']:.3f} ± {v['std']:.3f}"  # noqa: E731
        rows.append(
            [
                name,
                cell(vae["identity"]["reconstructions"]),
                cell(vae["identity"]["reconstruction_judge"]),
                cell(generation["fidelity"]["accuracy"]),
                cell(generation["synthetic_only"]["val_accuracy"]),
                cell(generation["real_only"]["val_accuracy"]),
                cell(augmented[max(augmented)]),
                f"{fd['overall']:.1f} ({fd['real_train_vs_val']:.2f})",
                f"{pr['precision']:.2f} / {pr['recall']:.2f}",
            ]
        )
    header = [
        "setting",
        "reconstructions, real judge",
        "reconstruction judge",
        "fidelity",
        "CAS",
        "real only",
        "real + synthetic ×1",
        "FD val–samples (val–train)",
        "precision / recall",
    ]
    table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]
    out.mkdir(parents=True, exist_ok=True)
    (out / "alignment_ablation.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
    for ax, (metric, title) in zip(
        axes, (("probe/fidelity", "real judge"), ("probe/fidelity_recon_judge", "reconstruction judge"))
    ):
        for name, curve in curves.items():
            if curve[metric]:
                steps, values = zip(*curve[metric])
                ax.plot(steps, values, marker="o", label=name)
        ax.axhline(chance, color="grey", linestyle="--", linewidth=1, label="chance")
        ax.set_title(f"samples recognised as their user ({title})")
        ax.set_xlabel("DiT step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("fidelity (4 samples per user)")
    axes[0].legend()
    save(fig, out / "alignment_ablation.png")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=("run", "summarize"))
    p.add_argument("--root", type=Path, required=True, help="one folder per setting goes here")
    p.add_argument("--out", type=Path, default=REPO / "docs", help="where summarize writes its table and figure")
    args = p.parse_args()
    run(args.root) if args.command == "run" else summarize(args.root, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
