"""The sample stage, run for real on a tiny tiny_dit DiT: every user written, reproducible, guided,
and a damaged export refused by name."""

import json

import numpy as np
import pytest
from conftest import tiny_config
from PIL import Image

from mdgen.stages.sample import main as sample


def run_sample(tiny_dit, tiny_latents, out, vae=None, data=None, **changes):
    dit_dir, config = tiny_dit
    config = tiny_config(sample=changes, data=data or {}) | {"dit": config["dit"]}
    return sample(
        [
            "--dit",
            str(dit_dir / "dit.pt"),
            "--vae",
            str(vae or tiny_latents[1]),
            "--out-dir",
            str(out),
            "--config",
            json.dumps(config),
        ]
    )


def pixels(folder):
    return {p.relative_to(folder): np.asarray(Image.open(p)) for p in sorted(folder.glob("user_*/*.png"))}


def test_sampling_writes_every_user_and_is_reproducible(tiny_dit, tiny_latents, tmp_path):
    for name, changes in (("a", {}), ("again", {}), ("one_by_one", {"batch_size": 1})):
        assert run_sample(tiny_dit, tiny_latents, tmp_path / name, **changes) == 0
    first, again, one_by_one = (pixels(tmp_path / name) for name in ("a", "again", "one_by_one"))
    assert sorted(str(p) for p in first) == [f"user_{u:02d}/sample_{i:04d}.png" for u in range(3) for i in range(2)]
    assert all(image.shape == (32, 32, 3) and image.dtype == np.uint8 for image in first.values())
    assert all(np.array_equal(first[p], again[p]) for p in first)
    # Another batch size draws the same noise; only float rounding in the batched matmuls differs.
    assert max(np.abs(first[p].astype(int) - one_by_one[p]).max() for p in first) <= 2
    assert (tmp_path / "a" / "grid.png").stat().st_size > 5_000


def test_colour_mapped_samples_are_rgb_files_in_the_maps_colours(tiny_dit, tiny_latents, tmp_path):
    from mdgen.data.images import colormap_table
    from mdgen.models.vavae import save_official, VAVAE, vavae_kwargs

    config = tiny_config(data={"colormap": "jet"})  # a VA-VAE of 1-channel magnitudes, same latents
    kwargs = vavae_kwargs(config)
    assert kwargs["in_channels"] == kwargs["out_ch"] == 1
    save_official(tmp_path / "vavae.pt", VAVAE(**kwargs), {"model": kwargs, **config})
    assert (
        run_sample(tiny_dit, tiny_latents, tmp_path / "jet", vae=tmp_path / "vavae.pt", data={"colormap": "jet"}) == 0
    )
    images = pixels(tmp_path / "jet")
    assert len(images) == 6 and all(image.shape == (32, 32, 3) for image in images.values())
    table = {tuple(colour) for colour in colormap_table("jet")}
    assert all({tuple(c) for c in image.reshape(-1, 3)} <= table for image in images.values())


def test_guidance_and_seed_change_the_samples(tiny_dit, tiny_latents, tmp_path):
    assert run_sample(tiny_dit, tiny_latents, tmp_path / "base") == 0
    assert run_sample(tiny_dit, tiny_latents, tmp_path / "no_cfg", cfg_scale=1.0) == 0
    assert run_sample(tiny_dit, tiny_latents, tmp_path / "seed", seed=1) == 0
    base = pixels(tmp_path / "base")
    for other in ("no_cfg", "seed"):
        assert any(not np.array_equal(base[p], image) for p, image in pixels(tmp_path / other).items()), other


@pytest.mark.fault
def test_sampling_refuses_a_damaged_export_by_name(tiny_dit, tiny_latents, tmp_path):
    out, config = tiny_dit
    damaged = tmp_path / "dit.pt"
    damaged.write_bytes((out / "dit.pt").read_bytes()[:5000])
    _, vae = tiny_latents
    argv = ["--dit", str(damaged), "--vae", str(vae), "--out-dir", str(tmp_path / "samples")]
    with pytest.raises(ValueError, match=f"{damaged} cannot be read as a torch checkpoint .*damaged or incomplete"):
        sample([*argv, "--config", json.dumps(config)])
    assert not (tmp_path / "samples").exists()
