"""The benchmark scripts that measure what the tests cannot time run at tiny sizes, so they never rot."""

import importlib.util
import json
import shutil

import pytest
from conftest import REPO


def script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_runs_every_measurement_at_tiny_size(tmp_path, capsys):
    compile_row = shutil.which("cc") is not None  # torch.compile on a CPU needs a C compiler
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
