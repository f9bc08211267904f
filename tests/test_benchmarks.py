"""The benchmark scripts that measure what the tests cannot time run at tiny sizes, so they never rot."""

import importlib.util
import json
import shutil

import numpy as np
import pytest
from conftest import REPO


def script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_runs_every_measurement_at_tiny_size(tmp_path, capsys):
    compile_row = shutil.which("g++") is not None  # torch.compile on a CPU builds C++ kernels
    out = tmp_path / "gpu_check.json"
    argv = ["--tiny", "--out", str(out)] + ([] if compile_row else ["--no-compile"])
    assert script("gpu_check").main(argv) == 0
    report = json.loads(out.read_text())
    assert report["tiny"] is True and report["device"]
    settings = [(row["what"], row["setting"]) for row in report["rows"]]
    expected = ["eager", "gradient checkpointing", "encode", "decode", "cfg 4"]
    expected += ["torch.compile"] if compile_row else []
    for word in expected:
        assert any(word in what or word in setting for what, setting in settings), word
    assert all(row["throughput"] > 0 and row["unit"] == "images/s" for row in report["rows"])
    printed = capsys.readouterr().out
    assert "| what | setting | throughput | peak memory |" in printed and "166 images/s" in printed


def test_gpu_check_refuses_the_paper_sizes_without_a_gpu(monkeypatch):
    module = script("gpu_check")
    monkeypatch.setattr(module.torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="No CUDA GPU here.*--tiny"):
        module.main(["--out", "unused.json"])


def test_dit_speed_times_mdgen_alone_without_a_reference(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("LIGHTNINGDIT_REF", raising=False)
    out = tmp_path / "dit_speed.json"
    assert script("dit_speed").main(["--tiny", "--batch", "2", "--steps", "1", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["reference"] is False
    codes = {(row["what"].split()[0], row["code"]) for row in report["rows"]}
    assert codes == {("DiT", "mdgen"), ("VA-VAE", "mdgen"), ("VA-VAE", "mdgen, fast mode (channels_last)")}
    assert all(row["images_per_s"] > 0 and row["ratio_to_official"] is None for row in report["rows"])
    assert "fast mode (channels_last): encode max |Δ|" in capsys.readouterr().out


def test_dit_speed_names_a_folder_that_is_not_a_lightningdit_checkout(tmp_path, monkeypatch):
    monkeypatch.setenv("LIGHTNINGDIT_REF", str(tmp_path))
    with pytest.raises(SystemExit, match="is not a LightningDiT checkout"):
        script("dit_speed").main(["--no-vae", "--out", str(tmp_path / "x.json")])


def test_cfg_sweep_judges_samples_of_a_finished_run_at_each_setting(tiny_manifest, tiny_latents, tmp_path, capsys):
    import yaml
    from conftest import tiny_config

    from mdgen.data.dataset import MicroDopplerDataset
    from mdgen.data.observation import NoiseModel, Observation, save_noise
    from mdgen.data.validation import read_manifest
    from mdgen.evaluation.identity import reconstruct, save_reconstructions
    from mdgen.models.vavae import load_vavae
    from mdgen.stages import train_dit

    latents, vae = tiny_latents
    config = tiny_config(dit={"trainer": {"max_steps": 2}}, decode={"colormap": "jet", "noise": True})
    results = tmp_path / "results"
    (results / "dataset").mkdir(parents=True)
    (results / "vae").mkdir()
    shutil.copy(tiny_manifest, results / "dataset" / "manifest.csv")
    shutil.copy(vae, results / "vae" / "vavae.pt")
    argv = ["--latents", str(latents), "--vae", str(vae), "--out-dir", str(results / "dit"), "--config"]
    assert train_dit.main([*argv, json.dumps(config)]) == 0
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    # the run's decoder noise (decode.noise), which the swept samples are drawn with
    save_noise(results / "vae" / "decoder_noise.json", NoiseModel((4.0,) * 16, (1000,) * 16, 12), True, "test")
    capsys.readouterr()

    sweep = ["--run", str(tmp_path), "--config", str(tmp_path / "run.yaml"), "--scales", "1", "3", "--per-user", "2"]
    assert script("cfg_sweep").main([*sweep, "--steps", "2", "--interval-starts", "0", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "real train vs val (reference): Fréchet distance" in out
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in out.splitlines() if line.startswith("| ")]
    assert rows[0][:2] == ["cfg scale", "interval start"] and rows[0][-3:] == ["copies", "copied latents", "seconds"]
    assert [row[:2] for row in rows[1:]] == [["1", "0"], ["3", "0"], ["1", "0.5"], ["3", "0.5"]]
    for row in rows[1:]:
        assert all(0 <= float(row[i]) <= 1 for i in (2, 3, 5, 6, 7)) and float(row[4]) >= 0
        assert row[8] == "–"  # no reconstructions of evaluate_vae: no check for copied latents

    # With evaluate_vae's reconstructions the sweep also looks for copied latents.
    rows_of = {split: read_manifest(tiny_manifest, split) for split in ("train", "val")}
    observation = Observation.from_config(tiny_config(decode={"colormap": "jet", "noise": False}))
    vae_model = load_vavae(vae, use_vf=None)
    arrays = {
        split: observation.observe(
            reconstruct(vae_model, (item["image"][None] for item in MicroDopplerDataset(tiny_manifest, split, 32, 3)))
        )
        for split in rows_of
    }
    save_reconstructions(
        results / "vae" / "reconstructions.pt", arrays, rows_of, config["evaluation"]["classifier"]["size"]
    )
    assert script("cfg_sweep").main([*sweep[:-5], "--scales", "2", "--per-user", "2", "--steps", "2"]) == 0
    row = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines() if line.startswith("| ")][1]
    assert float(row[1]) == config["sample"]["cfg_interval_start"]  # the run's, when not swept
    assert 0 <= float(row[8]) <= 1


def test_validation_scale_validates_what_it_writes(capsys):
    assert script("validation_scale").main(["--files", "150", "--workers", "1"]) == 0
    header, row = capsys.readouterr().out.strip().splitlines()
    assert header.split()[:5] == ["files", "write", "s", "validate", "s"]
    files, _, seconds, per_second, peak = row.split()
    assert int(files) == 150 and float(seconds) > 0 and int(per_second) > 0 and int(peak) > 10


def test_decoder_ceiling_evaluates_the_reconstructions_of_train_as_samples(tiny_manifest, tiny_latents, tmp_path):
    import yaml
    from conftest import tiny_config, write_vae_eval
    from PIL import Image

    from mdgen.data.dataset import MicroDopplerDataset
    from mdgen.data.observation import NoiseModel, Observation, save_noise
    from mdgen.data.validation import read_manifest
    from mdgen.evaluation.identity import reconstruct, save_reconstructions
    from mdgen.models.vavae import load_vavae

    _, vae = tiny_latents
    # colours moved onto jet, as the default does; no noise, so that a reconstruction written as a
    # sample is the very image evaluate_vae's reconstruction is (with the decoder's noise: below)
    config = tiny_config(decode={"colormap": "jet", "noise": False})
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "more.yaml").write_text(yaml.safe_dump({"evaluation": {"seeds": [5]}}))  # merged over run.yaml
    settings = {**config["evaluation"], "seeds": [5]}
    write_vae_eval(tmp_path / "eval.json", settings)
    out = tmp_path / "ceiling"
    argv = ["--manifest", str(tiny_manifest), "--vae", str(vae), "--vae-eval", str(tmp_path / "eval.json")]
    argv += ["--config", str(tmp_path / "run.yaml"), str(tmp_path / "more.yaml"), "--out-dir", str(out)]
    # evaluate_vae's reconstructions of both splits, for the check for copied latents
    rows = {split: read_manifest(tiny_manifest, split) for split in ("train", "val")}
    vae_model = load_vavae(vae, use_vf=None)
    observation = Observation.from_config(config)
    arrays = {
        split: observation.observe(
            reconstruct(vae_model, (item["image"][None] for item in MicroDopplerDataset(tiny_manifest, split, 32, 3)))
        )
        for split in rows
    }
    save_reconstructions(tmp_path / "reconstructions.pt", arrays, rows, config["evaluation"]["classifier"]["size"])
    assert script("decoder_ceiling").main([*argv, "--reconstructions", str(tmp_path / "reconstructions.pt")]) == 0

    train = [line.split(",") for line in tiny_manifest.read_text().splitlines()[1:] if ",train," in line]
    for user in {row[2] for row in train}:  # one reconstruction per train image, in the sample layout
        files = sorted((out / "samples" / user).glob("sample_*.png"))
        assert len(files) == sum(row[2] == user for row in train)
        assert Image.open(files[0]).size == (config["data"]["size"],) * 2
    report = json.loads((out / "eval" / "generation.json").read_text())
    assert report["seeds"] == [5]
    # each of them copies a train latent (by construction), and the second check sees every one
    assert report["memorisation_through_decoder"]["fraction_flagged"] == 1.0
    assert all(pair["distance"] < 1e-3 for pair in report["memorisation_through_decoder"]["closest_pairs"])
    with pytest.raises(SystemExit, match="ceiling/samples exists"):  # a second run never mixes its images in
        script("decoder_ceiling").main(argv)
    assert report["frechet_distance"]["overall"] >= 0 and 0 <= report["precision_recall"]["recall"] <= 1

    # With decode.noise the reconstructions get the run's noise as samples do, and need its model.
    noisy = yaml.safe_dump(tiny_config(decode={"colormap": "jet", "noise": True}))
    (tmp_path / "noisy.yaml").write_text(noisy)
    argv = [*argv[:-5], "--config", str(tmp_path / "noisy.yaml"), str(tmp_path / "more.yaml"), "--out-dir"]
    with pytest.raises(SystemExit, match="no fitted noise model"):
        script("decoder_ceiling").main([*argv, str(tmp_path / "without")])
    save_noise(tmp_path / "noise.json", NoiseModel((6.0,) * 16, (1000,) * 16, 12), True, "test")
    noise = ["--decoder-noise", str(tmp_path / "noise.json")]
    assert script("decoder_ceiling").main([*argv, str(tmp_path / "noisy"), *noise]) == 0
    clean, drawn = (
        np.asarray(Image.open(folder / "samples" / "user_00" / "sample_0000.png"), dtype=float)
        for folder in (out, tmp_path / "noisy")
    )
    assert 1 < np.abs(clean - drawn).mean() < 60  # one draw of the noise, on jet's colours


def test_judge_resolution_trains_the_recipe_at_each_size_and_judged_size(tiny_manifest, capsys):
    argv = ["--manifest", str(tiny_manifest), "--sizes", "32:32", "8:32", "--num-classes", "3", "--seeds", "0", "1"]
    results = script("judge_resolution").main(argv)
    assert list(results) == ["32:32", "8:32"]
    assert all(len(runs) == 2 and all(0 <= a <= 1 for a in runs) for runs in results.values())
    out = capsys.readouterr().out
    assert "images 8 px, judged at 32 px: real val accuracy" in out


def test_vae_step_times_the_official_and_the_cut_step(tmp_path, capsys):
    out = tmp_path / "vae_step.json"
    assert script("vae_step").main(["--tiny", "--out", str(out)]) == 0
    medians = json.loads(out.read_text())["ms_per_step"]
    assert set(medians) == {"official step", "cut at the encoder"} and all(v > 0 for v in medians.values())
    assert "ms per step" in capsys.readouterr().out


def generation_json(path, fidelity: float, recall: float, fd: float) -> str:
    """The part of an evaluate_generation report that sampler_frontier reads."""
    accuracy = {"mean": 0.9, "std": 0.01}
    report = {
        "fidelity": {"accuracy": {"mean": fidelity, "std": 0.02}},
        "synthetic_only": {"val_accuracy": {"mean": 0.6, "std": 0.03}},
        "real_only": {"val_accuracy": accuracy},
        "augmented": [{"ratio": 0.5, "val_accuracy": accuracy}, {"ratio": 1.0, "val_accuracy": accuracy}],
        "frechet_distance": {"overall": fd, "real_train_vs_val": 1.4},
        "precision_recall": {"precision": 0.8, "recall": recall},
    }
    path.write_text(json.dumps(report))
    return str(path)


def test_sampler_frontier_plots_and_tabulates_each_evaluation(tmp_path, capsys):
    guided = generation_json(tmp_path / "a.json", fidelity=0.9, recall=0.06, fd=7.7)
    unguided = generation_json(tmp_path / "b.json", fidelity=0.55, recall=0.26, fd=12.1)
    ceiling = generation_json(tmp_path / "c.json", fidelity=0.91, recall=0.29, fd=6.8)
    out = tmp_path / "frontier.png"
    argv = [f"cfg 4=a={guided}", f"no guidance={unguided}", "--ceiling", ceiling, "--out", str(out)]
    assert script("sampler_frontier").main(argv) == 0
    assert out.stat().st_size > 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("|  | fidelity | CAS | real + synthetic ×0.5 / real + synthetic ×1")
    # the label runs up to the last "="
    assert rows[1] == "| cfg 4=a | 0.900 ± 0.020 | 0.600 ± 0.030 | 0.900 / 0.900 | 7.7 | 0.80 / 0.060 |"
    assert rows[2].startswith("| no guidance | 0.550 ± 0.020") and rows[3].startswith("| decoder's ceiling | 0.910")
    with pytest.raises(SystemExit, match="does not exist"):
        script("sampler_frontier").main([f"x={tmp_path / 'missing.json'}", "--out", str(out)])
    with pytest.raises(SystemExit, match="LABEL=PATH"):
        script("sampler_frontier").main([guided, "--out", str(out)])
    with pytest.raises(SystemExit, match="each LABEL must be given once"):
        script("sampler_frontier").main([f"x={guided}", f"x={unguided}", "--out", str(out)])
