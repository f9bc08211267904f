"""The evaluate_generation stage on known cases: samples that are copies of training images, and noise."""

import csv
import json
import shutil

import numpy as np
import pytest
import torch
from conftest import tiny_config, write_vae_eval
from PIL import Image, ImageFilter

from mdgen.data.dataset import class_label
from mdgen.data.validation import read_manifest
from mdgen.evaluation.classifier import load_images, Recipe
from mdgen.evaluation.identity import save_judges, save_reconstructions, train_judges
from mdgen.evaluation.study import Images, run_protocols
from mdgen.stages.evaluate_generation import main as evaluate

SETTINGS = {
    "seeds": [0, 1],
    "ratios": [0.5],
    "classifier": {"epochs": 30, "size": 32, "batch_size": 4},
    "low_data_k": [2],
}


def copies_of_train(manifest, folder):
    """'Samples' that are the training images themselves: perfect fidelity, all memorised."""
    for row in read_manifest(manifest, "train"):
        target = folder / row["user_id"] / f"copy_{row['path'].rsplit('/', 1)[-1]}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(row["path"], target)
    return folder


def noise_samples(folder, users=3, per_user=4):
    rng = np.random.default_rng(0)
    for user in range(users):
        (folder / f"user_{user:02d}").mkdir(parents=True)
        for i in range(per_user):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"user_{user:02d}/{i}.png")
    return folder


def blurred(path):
    """What a smoothing 'decoder' makes of a spectrogram file: uint8, as a sample PNG holds it."""
    return np.asarray(Image.open(path).convert("RGB").filter(ImageFilter.BoxBlur(1)))


def copied_latents(manifest, root):
    """The reconstructions of both splits through the smoothing decoder (as evaluate_vae saves them)
    and 'samples' that are the train images' reconstructions: a generator that copies train latents."""
    rows = {split: read_manifest(manifest, split) for split in ("train", "val")}
    save_reconstructions(
        root / "reconstructions.pt",
        {split: [blurred(row["path"]) for row in split_rows] for split, split_rows in rows.items()},
        rows,
        SETTINGS["classifier"]["size"],
    )
    for row in rows["train"]:
        target = root / "samples" / row["user_id"] / f"latent_copy_{row['path'].rsplit('/', 1)[-1]}"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(blurred(row["path"])).save(target)
    return root / "samples", root / "reconstructions.pt"


def run(manifest, samples, out, *extra):
    config = tiny_config(evaluation=SETTINGS)
    assert (
        evaluate(
            [
                "--manifest",
                str(manifest),
                "--samples",
                str(samples),
                "--vae-eval",
                str(write_vae_eval(out.parent / "vae_eval.json", SETTINGS)),
                "--out-dir",
                str(out),
                "--config",
                json.dumps(config),
                "--threads",
                "1",
                *extra,
            ]
        )
        == 0
    )
    return json.loads((out / "generation.json").read_text())


@pytest.fixture(scope="module")
def copied(tiny_manifest, tmp_path_factory):
    root = tmp_path_factory.mktemp("copied")
    samples = copies_of_train(tiny_manifest, root / "samples")
    return run(tiny_manifest, samples, root / "eval", f"--low-data=2={samples}"), root / "eval"


def test_copies_of_training_images_are_flagged_as_memorised_and_recognised(copied):
    results, out = copied
    assert results["memorisation"]["fraction_flagged"] == 1.0  # distance 0 to a training image
    assert all(pair["distance"] < 1e-6 for pair in results["memorisation"]["closest_pairs"])
    assert results["fidelity"]["accuracy"]["mean"] >= 0.9  # the classifier saw exactly these images
    assert results["precision_recall"]["precision"] > 0.5
    # the samples are the train set itself, so they score exactly the real reference
    pr = results["precision_recall"]
    assert pr["real_train_vs_val"] == {"precision": pr["precision"], "recall": pr["recall"]}
    for name in ("metrics.csv", "accuracy_vs_ratio.png", "per_user_accuracy.png", "confusion.png", "nearest_pairs.png"):
        assert (out / name).stat().st_size > 0
    assert Image.open(out / "identity.png").size == (650, 400)  # 6.5 × 4 inches at 100 dpi


def test_identity_table_follows_each_generator_from_real_to_cas(copied):
    results, out = copied
    identity = results["identity"]
    assert set(identity["generators"]) == {"real_train", "k2"}
    for name, row in identity["generators"].items():
        study = results if name == "real_train" else results["low_data"][name]
        assert row["real_val"] == results["real_only"]["val_accuracy"]  # the judges' own accuracy
        assert row["reconstructions"]["mean"] == 0.5  # from evaluate_vae's eval.json
        assert row["fidelity"] == study["fidelity"]["accuracy"]
        assert row["cas"] == study["synthetic_only"]["val_accuracy"]
    rows = {r[0]: r for r in csv.reader((out / "metrics.csv").open())}
    assert rows["reconstructions of real val classified as their user"][1:] == ["0.5000", "0.0000"]


def test_saved_judges_give_the_results_of_judges_trained_here(copied, tiny_manifest, tmp_path):
    """evaluate_vae's judges (--judges) replace the real-only training: every number is the same."""
    results, out = copied
    recipe = Recipe(**SETTINGS["classifier"])
    rows = read_manifest(tiny_manifest, "train")
    images = load_images([r["path"] for r in rows], 3, recipe.size)
    labels = torch.tensor([class_label(r["user_id"]) for r in rows])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as run() trains them: --threads 1
    try:
        judges = train_judges(images, labels, 3, recipe, SETTINGS["seeds"])
    finally:
        torch.set_num_threads(threads)
    save_judges(tmp_path / "judges.pt", judges, recipe, rows, 3, 3)
    samples = out.parent / "samples"
    reused = run(
        tiny_manifest, samples, tmp_path / "eval", f"--low-data=2={samples}", "--judges", str(tmp_path / "judges.pt")
    )
    for key in ("real_only", "augmented", "synthetic_only", "fidelity", "frechet_distance", "precision_recall"):
        assert reused[key] == results[key], key
    assert reused["identity"]["generators"] == results["identity"]["generators"]

    other = SETTINGS["seeds"][:1]
    save_judges(tmp_path / "one.pt", {seed: judges[seed] for seed in other}, recipe, rows, 3, 3)
    with pytest.raises(SystemExit, match=r"holds other judges .*seeds: \[0\] \(expected \[0, 1\]\)"):
        run(tiny_manifest, samples, tmp_path / "eval2", "--judges", str(tmp_path / "one.pt"))


def test_given_real_only_classifiers_must_cover_the_seeds():
    images = Images(torch.zeros(2, 3, 8, 8), np.array([0, 1]), ["a.png", "b.png"])
    with pytest.raises(ValueError, match=r"seeds \[5\], the study runs seeds \[0, 1\]"):
        run_protocols(images, images, images, 2, Recipe(), [0, 1], [], "real_train", real_only={5: None})


@pytest.mark.parametrize("seeds", [[0, 1, 2], [0, 2]])
@pytest.mark.fault
def test_an_eval_json_from_other_judges_is_refused(tiny_manifest, tmp_path, seeds):
    samples = noise_samples(tmp_path / "samples")
    other = write_vae_eval(tmp_path / "other.json", SETTINGS | {"seeds": seeds})
    config = tiny_config(evaluation=SETTINGS)
    args = ["--manifest", str(tiny_manifest), "--samples", str(samples), "--out-dir", str(tmp_path / "eval")]
    with pytest.raises(SystemExit, match="rerun evaluate_vae with the same evaluation settings"):
        evaluate([*args, "--vae-eval", str(other), "--config", json.dumps(config)])
    (tmp_path / "old.json").write_text(json.dumps({"images": 8}))  # an eval.json from before the identity table
    with pytest.raises(SystemExit, match="has no identity table: .* rerun evaluate_vae"):
        evaluate([*args, "--vae-eval", str(tmp_path / "old.json"), "--config", json.dumps(config)])


def test_every_protocol_runs_over_every_seed_and_records_what_it_saw(copied, tiny_manifest):
    results, _ = copied
    train = [row["path"] for row in read_manifest(tiny_manifest, "train")]
    assert results["training_sets"]["real_train"] == train and results["generator_saw"] == "real_train"
    for entry in (results["real_only"], *results["augmented"], results["synthetic_only"]):
        assert len(entry["val_accuracy"]["runs"]) == 2
        assert 0 <= entry["val_accuracy"]["mean"] <= 1
    augmented = results["augmented"][0]
    assert augmented["ratio"] == 0.5 and all(
        len(used) == 3 * 2 for used in augmented["synthetic_images"]
    )  # 0.5 × 4 per user
    low = results["low_data"]["k2"]
    assert low["generator_saw"] == "k2" and len(results["training_sets"]["k2"]) == 3 * 2
    assert set(results["training_sets"]["k2"]) <= set(train)
    assert len(low["augmented"][0]["synthetic_images"][0]) == 3 * 1  # 0.5 × 2 per user


def test_noise_samples_are_not_recognised(tiny_manifest, tmp_path):
    results = run(tiny_manifest, noise_samples(tmp_path / "samples"), tmp_path / "eval")
    assert results["memorisation"]["fraction_flagged"] == 0.0
    assert results["frechet_distance"]["overall"] > results["frechet_distance"]["real_train_vs_val"]
    # without evaluate_vae's reconstructions there is no check for copied latents, and no row for one
    assert "memorisation_through_decoder" not in results
    rows = [r[0] for r in csv.reader((tmp_path / "eval" / "metrics.csv").open())]
    assert "samples flagged as copies of a train latent" not in rows


def test_copied_train_latents_are_flagged_against_the_reconstructions(tiny_manifest, tmp_path):
    """Samples that are the decoder's reconstructions of train images (a DiT that copies its train
    latents) sit at distance 0 from those reconstructions: every one is flagged by the second check,
    for the generator on every train image and for the low-data one (whose 2 of 4 images per user
    the samples copy among others)."""
    samples, reconstructions = copied_latents(tiny_manifest, tmp_path)
    results = run(
        tiny_manifest, samples, tmp_path / "eval", f"--low-data=2={samples}", "--reconstructions", str(reconstructions)
    )
    decoded = results["memorisation_through_decoder"]
    assert decoded["fraction_flagged"] == 1.0 and decoded["quantile"] == results["memorisation"]["quantile"]
    assert all(pair["distance"] < 1e-6 for pair in decoded["closest_pairs"])
    for pair in decoded["closest_pairs"]:  # each sample's nearest reconstruction is its own source's
        assert pair["sample"].endswith("latent_copy_" + pair["train"].rsplit("/", 1)[-1])
    # the pixel check measures against the train images themselves: blurred copies sit further away
    assert min(pair["distance"] for pair in results["memorisation"]["closest_pairs"]) > 1e-3
    low = results["low_data"]["k2"]
    saw = set(results["training_sets"]["k2"])
    assert low["memorisation_through_decoder"]["fraction_flagged"] >= 0.5  # at least the copies of what it saw
    assert all(pair["train"] in saw for pair in low["memorisation_through_decoder"]["closest_pairs"])
    assert {"threshold", "fraction_flagged"} <= set(low["memorisation"])
    rows = {r[0]: r[1:] for r in csv.reader((tmp_path / "eval" / "metrics.csv").open())}
    assert rows["samples flagged as copies of a train latent"] == ["1.0000", ""]
    # two panels of closest pairs: against the images and against their reconstructions
    single = Image.open(tmp_path / "eval" / "nearest_pairs.png").size
    assert single[1] > 600


@pytest.mark.fault
def test_reconstructions_of_other_images_or_at_another_size_are_refused(tiny_manifest, tmp_path):
    samples = noise_samples(tmp_path / "samples")
    rows = {split: read_manifest(tiny_manifest, split) for split in ("train", "val")}
    arrays = {split: [blurred(row["path"]) for row in split_rows] for split, split_rows in rows.items()}
    save_reconstructions(tmp_path / "small.pt", arrays, rows, 16)
    with pytest.raises(SystemExit, match=r"reconstructions at 16 px, the judges see 32 px: rerun evaluate_vae"):
        run(tiny_manifest, samples, tmp_path / "eval", "--reconstructions", str(tmp_path / "small.pt"))
    other = {"train": rows["train"][:-1], "val": rows["val"]}
    save_reconstructions(tmp_path / "other.pt", {"train": arrays["train"][:-1], "val": arrays["val"]}, other, 32)
    with pytest.raises(SystemExit, match=r"does not reconstruct the manifest's 12 train images \(it holds 11 other"):
        run(tiny_manifest, samples, tmp_path / "eval", "--reconstructions", str(tmp_path / "other.pt"))


def test_too_few_samples_for_a_ratio_is_a_clear_error(tiny_manifest, tmp_path):
    samples = noise_samples(tmp_path / "samples", per_user=1)
    config = tiny_config(evaluation=SETTINGS | {"ratios": [2.0], "low_data_k": []})
    with pytest.raises(SystemExit, match="raise sample.per_user or lower evaluation.ratios"):
        evaluate(
            [
                "--manifest",
                str(tiny_manifest),
                "--samples",
                str(samples),
                "--vae-eval",
                str(write_vae_eval(tmp_path / "vae_eval.json", SETTINGS)),
                "--out-dir",
                str(tmp_path / "eval"),
                "--config",
                json.dumps(config),
            ]
        )


def test_evaluation_refuses_a_user_without_samples(tiny_manifest, tmp_path):
    (tmp_path / "samples" / "user_00").mkdir(parents=True)
    with pytest.raises(SystemExit, match="user_00 holds no samples: every user needs samples"):
        evaluate(
            [
                "--manifest",
                str(tiny_manifest),
                "--samples",
                str(tmp_path / "samples"),
                "--vae-eval",
                str(write_vae_eval(tmp_path / "vae_eval.json", tiny_config()["evaluation"])),
                "--out-dir",
                str(tmp_path / "eval"),
                "--config",
                json.dumps(tiny_config()),
            ]
        )
