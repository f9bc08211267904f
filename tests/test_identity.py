"""Where identity is lost: the reconstruction diagnostics on autoencoders whose answer is known."""

import pytest
import torch
from torch import nn

from mdgen.data.dataset import class_label, MicroDopplerDataset
from mdgen.data.validation import read_manifest
from mdgen.evaluation.classifier import load_images, predict, Recipe
from mdgen.evaluation.identity import (
    format_identity_table,
    judge_view,
    load_judges,
    reconstruct,
    reconstruction_identity,
    save_judges,
    train_judges,
)

RECIPE = Recipe(epochs=20, size=32, batch_size=4)
SEEDS = [0, 1]


class Posterior:
    def __init__(self, z):
        self.z = z

    def mode(self):
        return self.z


class IdentityAutoencoder(nn.Module):
    """Decodes exactly what it was given: a perfect autoencoder."""

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))  # gives the module a device

    def encode(self, x):
        return Posterior(x)

    def decode(self, z):
        return z


class ConstantAutoencoder(IdentityAutoencoder):
    """Decodes every image to the same grey image: no identity left."""

    def decode(self, z):
        return torch.zeros_like(z)


def split_data(manifest):
    rows = {s: read_manifest(manifest, s) for s in ("train", "val")}
    real = {s: load_images([r["path"] for r in rows[s]], 3, RECIPE.size) for s in rows}
    labels = {s: torch.tensor([class_label(r["user_id"]) for r in rows[s]]) for s in rows}
    images = {s: torch.stack([item["image"] for item in MicroDopplerDataset(manifest, s, 32, 3)]) for s in rows}
    return real, labels, images


def table_for(autoencoder, manifest):
    real, labels, images = split_data(manifest)
    recon = {s: judge_view(reconstruct(autoencoder, images[s].split(4)), RECIPE.size) for s in images}
    judges = train_judges(real["train"], labels["train"], 3, RECIPE, SEEDS)
    table = reconstruction_identity(
        judges, labels["train"], real["val"], labels["val"], recon["val"], 3, RECIPE, recon["train"]
    )
    return table, real, recon


def test_an_identity_autoencoder_keeps_every_person(tiny_manifest):
    table, real, recon = table_for(IdentityAutoencoder(), tiny_manifest)
    # The reconstructions are the files' own pixels, so the judge sees the same images.
    assert torch.equal(recon["val"], real["val"])
    assert table["reconstructions"]["runs"] == table["real_val"]["runs"]
    assert table["reconstruction_judge"]["runs"] == table["real_val"]["runs"]
    assert table["real_val"]["mean"] > 1 / 3  # the judge learned something to lose


def test_a_constant_autoencoder_leaves_chance(tiny_manifest):
    table, _, _ = table_for(ConstantAutoencoder(), tiny_manifest)
    # Identical reconstructions get one label: right for one user's share of the balanced val split.
    assert table["chance"] == 1 / 3
    assert table["reconstructions"]["runs"] == pytest.approx([1 / 3] * len(SEEDS))
    assert table["reconstruction_judge"]["runs"] == pytest.approx([1 / 3] * len(SEEDS))
    assert len(table["real_val"]["runs"]) == len(SEEDS)


def test_identity_table_lines_name_every_generator_and_step():
    step = {"mean": 0.5, "std": 0.01, "runs": [0.5]}
    text = format_identity_table(
        {
            "real_train": dict.fromkeys(("real_val", "reconstructions", "fidelity", "cas"), step),
            "k4": {"real_val": step, "reconstructions": step, "fidelity": None, "cas": step},
        }
    )
    lines = text.splitlines()
    assert len(lines) == 3 and "CAS" in lines[0] and "real val" in lines[0]
    assert lines[1].split()[0] == "real_train" and lines[1].count("0.500") == 4
    assert lines[2].split()[0] == "k4" and lines[2].count("0.500") == 3 and "–" in lines[2]


def test_saved_judges_predict_as_the_trained_ones_and_refuse_other_settings(tiny_manifest, tmp_path):
    real, labels, _ = split_data(tiny_manifest)
    rows = read_manifest(tiny_manifest, "train")
    judges = train_judges(real["train"], labels["train"], 3, RECIPE, SEEDS)
    save_judges(tmp_path / "judges.pt", judges, RECIPE, rows, 3, 3)
    save_judges(tmp_path / "again.pt", judges, RECIPE, rows, 3, 3)
    # the same bytes whatever the file is called: a rerun of evaluate_vae rewrites the same file
    assert (tmp_path / "judges.pt").read_bytes() == (tmp_path / "again.pt").read_bytes()
    loaded = load_judges(tmp_path / "judges.pt", RECIPE, SEEDS, rows, 3, 3)
    assert list(loaded) == SEEDS
    for seed in SEEDS:
        trained_logits, loaded_logits = predict(judges[seed], real["val"])[1], predict(loaded[seed], real["val"])[1]
        assert torch.equal(trained_logits, loaded_logits)

    # other seeds, another recipe, other training images: named, not silently reused
    with pytest.raises(SystemExit, match=r"seeds: \[0, 1\] \(expected \[0, 2\]\).*rerun evaluate_vae"):
        load_judges(tmp_path / "judges.pt", RECIPE, [0, 2], rows, 3, 3)
    with pytest.raises(SystemExit, match=r"recipe: .*'epochs': 20.*\(expected .*'epochs': 21"):
        load_judges(tmp_path / "judges.pt", Recipe(epochs=21, size=32, batch_size=4), SEEDS, rows, 3, 3)
    changed = [dict(row) for row in rows]
    changed[0]["sha256"] = "0" * 64  # the same file name, other pixels
    with pytest.raises(SystemExit, match="train_fingerprint"):
        load_judges(tmp_path / "judges.pt", RECIPE, SEEDS, changed, 3, 3)
