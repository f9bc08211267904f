"""mdgen's LightningDiT and VA-VAE against the official code, side by side in one run.

    LIGHTNINGDIT_REF=/path/to/LightningDiT python benchmarks/dit_speed.py [--model LightningDiT-B/2]
        [--batch 8] [--steps 6] [--precision fp32|bf16] [--compile] [--no-vae] [--out results/dit_speed.json]
    python benchmarks/dit_speed.py --tiny     # mdgen alone at tiny sizes: what the tests run

LIGHTNINGDIT_REF is a checkout of the public hustvl/LightningDiT repository (never committed here).
Both models get the same weights (mdgen's state dict loaded strictly into the official class, so
the key names are checked too), the same inputs, thread count and precision. The script first
checks the outputs agree (forward and flow loss on the same t and noise), then times, alternating
the two models so that a machine's drift hits both alike:
- a DiT training step (forward, backward, AdamW step) on f16d32 latents of 256 px images
  (32 × 16 × 16), in images/s, each with its own recipe's optimizer (mdgen's fused AdamW, the
  official train.py's torch.optim.AdamW with torch's defaults), the update checked equal first;
- the VA-VAE f16d32 of the paper (ch 128, ch_mult [1, 1, 2, 2, 4]) encoding and decoding 256 px
  images, eager fp32 against the official `tokenizer/autoencoder.py`, and mdgen's fast mode
  (channels_last memory layout) beside it.
Without LIGHTNINGDIT_REF it times mdgen alone and says so. `--compile` adds a row for mdgen's model
under `torch.compile` (the `dit.compile` setting). Results and the measured ratios: docs/speed.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from mdgen.models.lightningdit import create_model
from mdgen.models.vavae import VAVAE
from mdgen.transport import training_loss

MODEL_FLAGS = dict(use_qknorm=False, use_swiglu=True, use_rope=True, use_rmsnorm=True, wo_shift=False)
# (latents, VA-VAE) at the paper's sizes, f16d32 of 256 px images, and at the tests' tiny ones
SIZES = {
    False: (
        (32, 16, 16),
        dict(ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, attn_resolutions=(16,), resolution=256),
    ),
    True: ((4, 8, 8), dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), resolution=32)),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="LightningDiT-B/2", help="a size both registries know")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=6, help="timed training steps per model (after one warm-up)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--compile", action="store_true", help="also time mdgen's model under torch.compile")
    p.add_argument("--no-vae", action="store_true", help="skip the VA-VAE encode/decode comparison")
    p.add_argument("--vae-batch", type=int, default=1)
    p.add_argument("--tiny", action="store_true", help="tiny sizes, mdgen alone (--model LightningDiT-Micro/1)")
    p.add_argument("--out", default="results/dit_speed.json")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    args.latent, args.vae = SIZES[args.tiny]
    if args.tiny:
        args.model, reference = "LightningDiT-Micro/1", None
        print("--tiny: mdgen alone at tiny sizes (the official code has no such sizes).")
    else:
        reference = load_reference(os.environ.get("LIGHTNINGDIT_REF"))
        if reference is None:
            print("LIGHTNINGDIT_REF is not set: timing mdgen alone (no ratio to the official code).")
    threads = torch.get_num_threads()
    print(f"{args.model}, batch {args.batch}, {args.precision}, {threads} threads, latents {args.latent}")

    rows = dit_rows(args, reference)
    if not args.no_vae:
        rows += vae_rows(args, reference)
    report = {"threads": threads, "torch": torch.__version__, "reference": bool(reference), "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(rows))
    print(f"\nwritten: {out}")
    return 0


def load_reference(root: str | None):
    """The official modules (models.lightningdit, tokenizer.autoencoder) of a checkout, or None."""
    if not root:
        return None
    if not (Path(root) / "models" / "lightningdit.py").is_file():
        raise SystemExit(f"LIGHTNINGDIT_REF={root} is not a LightningDiT checkout (no models/lightningdit.py)")
    sys.path.insert(0, str(Path(root).resolve()))
    import models.lightningdit as dit  # noqa: PLC0415 (the official code, only importable from its checkout)
    import tokenizer.autoencoder as autoencoder  # noqa: PLC0415

    return dit, autoencoder


def precision_context(precision: str):
    return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext()


# ---------------------------------------------------------------------------------------------
# DiT training step
# ---------------------------------------------------------------------------------------------


def dit_rows(args, reference) -> list[dict]:
    kwargs = dict(input_size=args.latent[1], in_channels=args.latent[0], num_classes=1000, **MODEL_FLAGS)
    ours = create_model(args.model, **kwargs)
    with torch.no_grad():  # adaLN-Zero starts every block and the output at 0: perturb, so outputs are a real check
        for parameter in ours.parameters():
            if parameter.requires_grad:
                parameter.add_(0.02 * torch.randn_like(parameter))
    models = {"mdgen": ours}
    if reference:
        theirs = reference[0].LightningDiT_models[args.model](**kwargs)
        theirs.load_state_dict(ours.state_dict(), strict=True)  # same key names and shapes, or it raises
        print(f"outputs: {agreement(ours, theirs, args.batch, args.latent)}")
        models["official"] = theirs
    if args.compile:
        compiled = create_model(args.model, **kwargs)
        compiled.load_state_dict(ours.state_dict())
        models["mdgen, torch.compile"] = torch.compile(compiled)

    latents = torch.randn(args.batch, *args.latent)
    labels = torch.randint(0, 1000, (args.batch,))
    # Each with its own recipe's optimizer: mdgen's fused AdamW (mdgen.training.dit), the official
    # train.py's torch.optim.AdamW with torch's defaults.
    steps = {
        name: training_step(model, latents, labels, args.precision, fused=name != "official")
        for name, model in models.items()
    }
    seconds = alternate(steps, args.steps)
    setting = f"{args.model}, batch {args.batch}, {args.precision}"
    rows = ratio_rows("DiT training step", setting, seconds, args.batch)
    floor = matmul_floor(ours, latents, labels)
    print(
        f"matmul floor: {floor['flops'] / 1e9:.0f} GFLOP per step at {floor['gflops_per_s']:.0f} GFLOP/s "
        f"(one large GEMM on this machine) = {floor['seconds']:.2f} s per step, "
        f"{args.batch / floor['seconds']:.2f} images/s at most"
    )
    for row in rows:
        row["matmul_floor_images_per_s"] = round(args.batch / floor["seconds"], 3)
    return rows


def matmul_floor(model, latents, labels) -> dict:
    """The time a training step's floating-point work (forward and backward, counted by torch's
    FlopCounterMode: matmuls and attention) takes at the rate of one large GEMM on this machine: no
    implementation of the same model at the same precision steps faster on it."""
    with FlopCounterMode(display=False) as counter:
        training_loss(model, latents, dict(y=labels))["loss"].backward()
    model.zero_grad(set_to_none=True)
    a, b = torch.randn(512, 1024), torch.randn(1024, 2048)
    for _ in range(3):
        a @ b
    start, repeats = time.perf_counter(), 30
    for _ in range(repeats):
        a @ b
    rate = repeats * 2 * a.shape[0] * a.shape[1] * b.shape[1] / (time.perf_counter() - start)
    flops = counter.get_total_flops()
    return {"flops": flops, "gflops_per_s": rate / 1e9, "seconds": flops / rate}


def agreement(ours, theirs, batch: int, latent: tuple) -> str:
    """Largest differences of the forward pass, the flow loss and its gradients (same weights,
    inputs, t and noise), and of the weights after AdamW steps, fused (mdgen) against torch's
    default (the official recipe), on the same gradients. Eval mode: no label dropout."""
    ours.eval(), theirs.eval()
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(batch, *latent, generator=generator)
    t = torch.rand(batch, generator=generator)
    y = torch.randint(0, 1000, (batch,), generator=generator)
    noise = torch.randn(x.shape, generator=generator)
    with torch.no_grad():
        forward = (ours(x, t, y) - theirs(x, t, y)).abs().max().item()
    losses = []
    for model in (ours, theirs):
        loss = training_loss(model, x, dict(y=y), t=t, noise=noise)["loss"]
        loss.backward()
        losses.append(loss.item())
    grads = {
        name: {k: p for k, p in model.named_parameters() if p.requires_grad}
        for name, model in (("ours", ours), ("theirs", theirs))
    }
    gradient = max((p.grad - grads["theirs"][k].grad).abs().max().item() for k, p in grads["ours"].items())
    scale = max(p.grad.abs().max().item() for p in grads["theirs"].values())
    update = optimizer_agreement(list(grads["theirs"].values()), steps=3)
    for model in (ours, theirs):
        model.zero_grad(set_to_none=True)
        model.train()
    if forward > 1e-4 or abs(losses[0] - losses[1]) > 1e-5 * max(1.0, abs(losses[1])) or gradient > 1e-4 * scale:
        raise SystemExit(
            f"mdgen and the official model disagree: forward max |Δ| {forward:.2e}, loss {losses}, "
            f"gradients max |Δ| {gradient:.2e} (largest gradient {scale:.2e})"
        )
    if update > 1e-6:
        raise SystemExit(f"fused AdamW and torch's default disagree: weights after 3 steps max |Δ| {update:.2e}")
    return (
        f"equal (forward max |Δ| {forward:.1e}; loss {losses[0]:.6f} vs {losses[1]:.6f}; gradients max |Δ| "
        f"{gradient:.1e} of {scale:.1e}; 3 AdamW steps, fused vs default, weights max |Δ| {update:.1e})"
    )


def optimizer_agreement(parameters: list[torch.Tensor], steps: int = 3) -> float:
    """Largest difference of the weights after `steps` AdamW steps on the same gradients, fused
    against torch's default implementation."""
    copies = []
    for fused in (True, False):
        weights = [p.detach().clone().requires_grad_() for p in parameters]
        optimizer = torch.optim.AdamW(weights, lr=1e-4, betas=(0.9, 0.95), fused=fused)
        for _ in range(steps):
            for w, p in zip(weights, parameters):
                w.grad = p.grad.clone()
            optimizer.step()
        copies.append(weights)
    return max((a - b).abs().max().item() for a, b in zip(*copies))


def training_step(model, latents, labels, precision: str, fused: bool):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), fused=fused)

    def step():
        with precision_context(precision):
            loss = training_loss(model, latents, dict(y=labels))["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def alternate(calls: dict, repeats: int) -> dict[str, float]:
    """Median seconds per call of each, after one warm-up each, the calls taken in turn."""
    for call in calls.values():
        call()
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


# ---------------------------------------------------------------------------------------------
# VA-VAE encode and decode
# ---------------------------------------------------------------------------------------------


def vae_rows(args, reference) -> list[dict]:
    embed, resolution = args.latent[0], args.vae["resolution"]
    factor = 2 ** (len(args.vae["ch_mult"]) - 1)
    ours = VAVAE(**args.vae, embed_dim=embed, z_channels=embed).eval()
    fast = VAVAE(**args.vae, embed_dim=embed, z_channels=embed).eval().to(memory_format=torch.channels_last)
    fast.load_state_dict(ours.state_dict())
    models = {"mdgen": (ours, torch.contiguous_format), "mdgen, fast mode (channels_last)": (fast, torch.channels_last)}
    if reference:
        theirs = reference[1].AutoencoderKL(embed_dim=32, ch_mult=(1, 1, 2, 2, 4)).eval()
        theirs.load_state_dict(ours.state_dict(), strict=True)
        models["official"] = (theirs, torch.contiguous_format)

    images = torch.rand(args.vae_batch, 3, resolution, resolution) * 2 - 1
    with torch.no_grad():
        latents = ours.encode(images).mode()
        outputs = {name: (m.encode(images).mode(), m.decode(latents)) for name, (m, _) in models.items()}
        for name, (z, x) in outputs.items():
            dz = (z - outputs["mdgen"][0]).abs().max().item()
            dx = (x - outputs["mdgen"][1]).abs().max().item()
            print(f"VA-VAE {name}: encode max |Δ| {dz:.1e}, decode max |Δ| {dx:.1e} against mdgen eager")

        def call(model, fmt, what):
            source = (images if what == "encode" else latents).contiguous(memory_format=fmt)
            return (lambda: model.encode(source).mode()) if what == "encode" else (lambda: model.decode(source))

        rows = []
        for what in ("encode", "decode"):
            calls = {name: call(model, fmt, what) for name, (model, fmt) in models.items()}
            seconds = alternate(calls, 2)
            setting = f"{resolution} px, batch {args.vae_batch}, fp32"
            rows += ratio_rows(f"VA-VAE f{factor}d{embed} {what}", setting, seconds, args.vae_batch)
    return rows


def ratio_rows(what: str, setting: str, seconds: dict[str, float], batch: int) -> list[dict]:
    official = seconds.get("official")
    return [
        {
            "what": what,
            "code": name,
            "setting": setting,
            "images_per_s": round(batch / s, 3),
            "ratio_to_official": round(official / s, 2) if official else None,
        }
        for name, s in seconds.items()
    ]


def table(rows: list[dict]) -> str:
    lines = ["| what | code | setting | images/s | × official |", "|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r['ratio_to_official']:.2f}" if r["ratio_to_official"] else "–"
        lines.append(f"| {r['what']} | {r['code']} | {r['setting']} | {r['images_per_s']:.2f} | {ratio} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
