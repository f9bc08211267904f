"""Recognisability against variety for several evaluations of one run: a picture and a table.

    python benchmarks/sampler_frontier.py --out docs/study_sampler_frontier.png \
        "preset=results/eval/generation.json" "no guidance=../cfg1/eval/generation.json" \
        [--ceiling ../ceiling/eval/generation.json]

Each LABEL=PATH is a `generation.json` that `evaluate_generation` wrote for one set of samples of
the same run (another sampler setting, another guidance, another DiT on the same latents). The
figure puts each at its recall (x) against its fidelity and its Fréchet distance (y), with the
targets of issue 11 drawn in (fidelity 0.75, recall 0.5, Fréchet distance 5 × val vs train);
`--ceiling` adds the decoder's ceiling (`benchmarks/decoder_ceiling.py`) as a star. The table
(Markdown, on stdout) lists fidelity, CAS, real + synthetic, Fréchet distance and precision /
recall of each, mean ± std over the evaluation seeds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mdgen.plots import plt, save

FIDELITY_TARGET, RECALL_TARGET, FD_TARGET_FACTOR = 0.75, 0.5, 5.0


def summary(results: dict) -> dict:
    """The figures one evaluation contributes to the frontier."""
    augmented = {f"{row['ratio']:g}": row["val_accuracy"]["mean"] for row in results["augmented"]}
    return {
        "fidelity": results["fidelity"]["accuracy"]["mean"],
        "fidelity_std": results["fidelity"]["accuracy"]["std"],
        "cas": results["synthetic_only"]["val_accuracy"]["mean"],
        "cas_std": results["synthetic_only"]["val_accuracy"]["std"],
        "augmented": augmented,
        "fd": results["frechet_distance"]["overall"],
        "fd_reference": results["frechet_distance"]["real_train_vs_val"],
        "precision": results["precision_recall"]["precision"],
        "recall": results["precision_recall"]["recall"],
    }


def parse_item(item: str) -> tuple[str, Path]:
    label, sep, path = item.rpartition("=")
    if not sep or not label:
        raise SystemExit(f"expected LABEL=PATH/generation.json, got {item!r}")
    if not Path(path).is_file():
        raise SystemExit(f"{path} (for {label!r}) does not exist: run evaluate_generation on those samples first")
    return label, Path(path)


def table(rows: dict[str, dict]) -> str:
    ratios = sorted({r for row in rows.values() for r in row["augmented"]}, key=float)
    head = ["", "fidelity", "CAS", " / ".join(f"real + synthetic ×{r}" for r in ratios), "FD", "precision / recall"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, row in rows.items():
        augmented = " / ".join(f"{row['augmented'][r]:.3f}" if r in row["augmented"] else "–" for r in ratios)
        lines.append(
            f"| {label} | {row['fidelity']:.3f} ± {row['fidelity_std']:.3f} | {row['cas']:.3f} ± {row['cas_std']:.3f} "
            f"| {augmented} | {row['fd']:.1f} | {row['precision']:.2f} / {row['recall']:.3f} |"
        )
    return "\n".join(lines)


def plot(rows: dict[str, dict], ceiling: dict | None, out: Path) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 5.6), layout="constrained")
    reference = next(iter(rows.values()))
    shown = [*rows.values(), *([ceiling] if ceiling else [])]  # the axes hold every point drawn
    for ax, key, name in (
        (left, "fidelity", "fidelity (samples recognised as their user)"),
        (right, "fd", "Fréchet distance, val vs samples"),
    ):
        for i, (label, row) in enumerate(rows.items()):
            marker = "osD^v"[i // 20 % 5]  # colour and marker tell up to 100 entries apart
            ax.scatter(row["recall"], row[key], color=plt.cm.tab20(i % 20), marker=marker, s=45, zorder=3, label=label)
        if ceiling is not None:
            ax.scatter(
                ceiling["recall"], ceiling[key], marker="*", s=200, color="black", zorder=3, label="decoder's ceiling"
            )
        ax.axvline(RECALL_TARGET, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel("recall (k = 3, real val inside the samples' neighbourhoods)")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.set_xlim(0, max(RECALL_TARGET + 0.05, *(row["recall"] + 0.05 for row in shown)))
    left.axhline(FIDELITY_TARGET, color="grey", linestyle=":", linewidth=1)
    left.set_ylim(0, 1)
    left.set_title("targets (dotted): fidelity ≥ 0.75, recall ≥ 0.5 (top right)", fontsize=9)
    fd_target = FD_TARGET_FACTOR * reference["fd_reference"]
    right.axhline(fd_target, color="grey", linestyle=":", linewidth=1)
    right.set_ylim(0, max(fd_target, *(row["fd"] for row in shown)) * 1.15)
    right.set_title(
        f"targets (dotted): FD ≤ {fd_target:.1f} (5 × val vs train), recall ≥ 0.5 (bottom right)", fontsize=9
    )
    fig.legend(*left.get_legend_handles_labels(), loc="outside lower center", ncols=2, fontsize=8)
    fig.suptitle("Recognisability against variety, one run's samples under several samplers")
    save(fig, out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="LABEL=PATH", help="generation.json of one set of samples")
    p.add_argument("--ceiling", type=Path, default=None, help="the decoder ceiling's generation.json")
    p.add_argument("--out", type=Path, required=True, help="the PNG to write")
    args = p.parse_args(argv)
    items = [parse_item(item) for item in args.runs]
    labels = [label for label, _ in items]
    if len(set(labels)) < len(labels):
        raise SystemExit(f"each LABEL must be given once (one point, one table row), got {labels}")
    rows = {label: summary(json.loads(path.read_text())) for label, path in items}
    ceiling = summary(json.loads(args.ceiling.read_text())) if args.ceiling else None
    plot(rows, ceiling, args.out)
    print(table(rows | ({"decoder's ceiling": ceiling} if ceiling else {})))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
