"""The paper sizes on one GPU, in one command (about 5 minutes on an H100-class GPU):

    python benchmarks/gpu_check.py [--out results/gpu_check.json]
    python benchmarks/gpu_check.py --tiny        # CPU, tiny sizes: what the tests run, so it never rots

Measures, with random weights (speed does not depend on them):
- LightningDiT-XL/1 training on f16d32 latents (32 × 16 × 16), batch 32, bf16-mixed: a full step
  (forward, backward, AdamW) in images/s and peak memory; eager, with `torch.compile` of the whole
  model, and with gradient checkpointing (`dit.use_checkpoint`, the 24 GB setting of docs/cluster.md);
- the VA-VAE f16d32 (paper preset: ch 128, ch_mult [1, 1, 2, 2, 4]) encoding and decoding at 256 px in
  fp16, images/s;
- one sampling batch of 32 with classifier-free guidance (cfg 4, 50 Euler steps), as the sample stage.

Writes the rows as JSON and prints them as a Markdown table. The official training log's reference
for LightningDiT-XL/1: about 166 images/s per H800 GPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from mdgen.models.lightningdit import create_model
from mdgen.models.vavae import VAVAE
from mdgen.sampling import guided_velocity
from mdgen.transport import sample_ode, training_loss

REFERENCE = "official log: about 166 images/s per H800 for LightningDiT-XL/1"

# (paper size, tiny size); tiny runs on a CPU in seconds.
SIZES = {
    "dit": ("LightningDiT-XL/1", "LightningDiT-Micro/1"),
    "latent": ((32, 16, 16), (4, 8, 8)),
    "batch": (32, 4),
    "steps": (20, 2),
    "vae": (
        dict(ch=128, ch_mult=[1, 1, 2, 2, 4], num_res_blocks=2, attn_resolutions=[16], resolution=256),
        dict(ch=32, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[], resolution=32),
    ),
    "vae_batch": (16, 2),
    "sampling_steps": (50, 2),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny sizes on the CPU (the test)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile row")
    p.add_argument("--out", default="results/gpu_check.json")
    args = p.parse_args(argv)
    size = {key: value[1 if args.tiny else 0] for key, value in SIZES.items()}
    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    if device.type == "cpu" and not args.tiny:
        raise SystemExit(
            "No CUDA GPU here: the paper sizes would take hours on a CPU. Run with --tiny to check the script."
        )
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True

    rows = [dit_training(size, device, compiled=False, checkpointing=False)]
    if not args.no_compile:
        rows.append(dit_training(size, device, compiled=True, checkpointing=False))
    rows.append(dit_training(size, device, compiled=False, checkpointing=True))
    rows += vae_throughput(size, device)
    rows.append(sampling(size, device))
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "tiny": args.tiny,
        "reference": REFERENCE,
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    print(f"\nwritten: {out}")
    return 0


def autocast(device: torch.device, dtype: torch.dtype):
    return torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()


def timed(step, repeats: int, device: torch.device) -> tuple[float, float]:
    """(seconds per call after one warm-up call, peak memory in GiB or 0 on a CPU)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()  # what the previous measurement left
    step()  # warm-up: allocations, cuDNN autotuning, compilation
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - start) / repeats
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    return seconds, peak


def dit_training(size: dict, device: torch.device, *, compiled: bool, checkpointing: bool) -> dict:
    channels, height, _ = size["latent"]
    model = create_model(
        size["dit"], input_size=height, in_channels=channels, num_classes=31, use_checkpoint=checkpointing
    ).to(device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), fused=device.type == "cuda")
    forward = torch.compile(model) if compiled else model
    latents = torch.randn(size["batch"], *size["latent"], device=device)
    labels = torch.randint(0, 31, (size["batch"],), device=device)

    def step():
        with autocast(device, torch.bfloat16):
            loss = training_loss(forward, latents, dict(y=labels))["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    seconds, peak = timed(step, size["steps"], device)
    setting = "torch.compile" if compiled else "gradient checkpointing" if checkpointing else "eager"
    setting = f"bf16-mixed, batch {size['batch']}, {setting}"
    return row(f"{size['dit']} training step", setting, size["batch"] / seconds, "images/s", peak)


def vae_throughput(size: dict, device: torch.device) -> list[dict]:
    vae_size = size["vae"]
    embed, factor = size["latent"][0], 2 ** (len(vae_size["ch_mult"]) - 1)
    vae = VAVAE(embed_dim=embed, z_channels=embed, double_z=True, in_channels=3, out_ch=3, dropout=0.0, **vae_size)
    vae = vae.to(device).eval()
    images = torch.rand(size["vae_batch"], 3, vae_size["resolution"], vae_size["resolution"], device=device) * 2 - 1
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    rows = []
    with torch.no_grad(), autocast(device, dtype):
        latents = vae.encode(images).mode()
        for name, call in (("encode", lambda: vae.encode(images).mode()), ("decode", lambda: vae.decode(latents))):
            seconds, peak = timed(call, 3, device)
            precision = "fp16" if dtype == torch.float16 else "bf16 (CPU)"
            setting = f"{vae_size['resolution']} px, {precision}, batch {size['vae_batch']}"
            rows.append(row(f"VA-VAE f{factor}d{embed} {name}", setting, size["vae_batch"] / seconds, "images/s", peak))
    return rows


def sampling(size: dict, device: torch.device) -> dict:
    channels, height, _ = size["latent"]
    model = create_model(size["dit"], input_size=height, in_channels=channels, num_classes=31).to(device).eval()
    labels = torch.arange(size["batch"], device=device) % 31
    noise = torch.randn(size["batch"], *size["latent"], device=device)
    settings = dict(cfg_scale=4.0, cfg_interval_start=0.11, guidance_channels=None)
    velocity = guided_velocity(model, labels, settings)

    def batch():
        with torch.no_grad(), autocast(device, torch.bfloat16):
            return sample_ode(velocity, noise, num_steps=size["sampling_steps"], method="euler", shift=0.3)

    seconds, peak = timed(batch, 1, device)
    setting = f"cfg 4, {size['sampling_steps']} Euler steps, batch {size['batch']}, bf16"
    return row(f"{size['dit']} sampling", setting, size["batch"] / seconds, "images/s", peak)


def row(what: str, setting: str, throughput: float, unit: str, peak_gib: float) -> dict:
    return dict(what=what, setting=setting, throughput=round(throughput, 2), unit=unit, peak_gib=round(peak_gib, 2))


def table(report: dict) -> str:
    lines = [
        f"{report['device']}, torch {report['torch']}{' (tiny sizes)' if report['tiny'] else ''}",
        "",
        "| what | setting | throughput | peak memory |",
        "|---|---|---|---|",
    ]
    for r in report["rows"]:
        memory = f"{r['peak_gib']:.1f} GiB" if r["peak_gib"] else "–"
        lines.append(f"| {r['what']} | {r['setting']} | {r['throughput']:.1f} {r['unit']} | {memory} |")
    lines.append(f"\nReference: {report['reference']}.")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
