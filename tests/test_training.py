"""Shared training helpers: resumable work folders and metrics joined across resumes."""

import csv
import json

import pytest
import pytorch_lightning as pl
import torch

from mdgen.training import collect_metrics, prepare_work_dir


def write_run(path, rows, columns):
    path.parent.mkdir(parents=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def test_metrics_of_a_resumed_run_replace_what_the_interrupted_run_logged_after_the_checkpoint(tmp_path):
    logs = tmp_path / "logs"
    write_run(
        logs / "version_0/metrics.csv",
        [{"epoch": 0, "step": s, "loss": 10 - s} for s in range(10)],
        ["epoch", "step", "loss"],
    )
    write_run(
        logs / "version_1/metrics.csv",
        [{"epoch": 0, "step": s, "val": s} for s in range(6, 13)],
        ["epoch", "step", "val"],
    )
    (logs / "version_2").mkdir()  # a run interrupted before it logged anything
    collect_metrics(tmp_path, tmp_path / "metrics.csv")
    with open(tmp_path / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == list(range(13))
    assert rows[5]["loss"] == "5" and rows[5]["val"] == ""
    assert rows[6]["loss"] == "" and rows[6]["val"] == "6"


def test_work_dir_is_kept_for_the_same_config_and_cleared_for_another(tmp_path):
    work = tmp_path / "training"
    assert prepare_work_dir(work, {"lr": 1}) is None
    (work / "checkpoints").mkdir()
    torch.save({"global_step": 1}, work / "checkpoints" / "last.ckpt")
    assert prepare_work_dir(work, {"lr": 1}) == work / "checkpoints" / "last.ckpt"
    assert prepare_work_dir(work, {"lr": 2}) is None
    assert not (work / "checkpoints").exists()


def test_adam_runs_fused_except_under_mixed_precision_where_lightning_clips_and_unscales():
    import pytorch_lightning as pl
    from conftest import tiny_config

    from mdgen.config import load_config
    from mdgen.models.lightningdit import dit_kwargs
    from mdgen.training import fused_adam
    from mdgen.training.dit import DiTTraining

    config = load_config(json.dumps(tiny_config()))  # with the schema's defaults, as a stage reads it
    module = DiTTraining(config, dit_kwargs(config, (4, 2, 2)))
    module.trainer = pl.Trainer(accelerator="cpu", precision="32-true", logger=False, enable_checkpointing=False)
    optimizer = module.configure_optimizers()
    assert optimizer.defaults["fused"] is True
    assert optimizer.defaults["betas"] == (0.9, config["dit"]["optimizer"]["beta2"])

    class Trainer:  # fp16 mixed precision needs a GPU; only the trainer's precision matters here
        precision = "16-mixed"

    assert fused_adam(Trainer()) is False  # Lightning's GradScaler unscales (and clips) before the step
    module.trainer = pl.Trainer(accelerator="cpu", precision="bf16-mixed", logger=False, enable_checkpointing=False)
    assert module.configure_optimizers().defaults["fused"] is False  # Lightning would refuse to clip


def tiny_dit_module(**dit):
    from conftest import tiny_config

    from mdgen.config import load_config
    from mdgen.models.lightningdit import dit_kwargs
    from mdgen.training.dit import DiTTraining

    config = tiny_config()
    config["dit"].update(dit)
    config = load_config(json.dumps(config))
    return DiTTraining(config, dit_kwargs(config, (4, 2, 2)), repa_feature_dim=8 if "repa" in dit else None)


class RecordLearningRate(pl.Callback):
    """The learning rate each optimizer step runs with."""

    def __init__(self):
        self.rates = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.rates.append(trainer.optimizers[0].param_groups[0]["lr"])


def fit_tiny_dit(module, max_steps, callbacks, ckpt_path=None, stop_at=None):
    from torch.utils.data import DataLoader, TensorDataset

    class Stop(pl.Callback):  # an interruption after `stop_at` optimizer steps
        def on_train_batch_end(self, trainer, *args):
            trainer.should_stop = trainer.global_step >= stop_at

    data = DataLoader(TensorDataset(torch.randn(8, 4, 2, 2), torch.arange(8) % 3), batch_size=4)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[*callbacks, *([Stop()] if stop_at else [])],
    )
    trainer.fit(module, data, ckpt_path=ckpt_path)
    return trainer


def test_the_dit_learning_rate_decays_linearly_over_its_last_steps_and_a_resumed_run_goes_on_decaying(tmp_path):
    record = RecordLearningRate()
    fit_tiny_dit(tiny_dit_module(optimizer={"lr": 1e-3, "decay_steps": 4}), 10, [record])
    assert record.rates == pytest.approx([1e-3] * 7 + [7.5e-4, 5e-4, 2.5e-4])

    interrupted = fit_tiny_dit(tiny_dit_module(optimizer={"lr": 1e-3, "decay_steps": 4}), 10, [], stop_at=8)
    assert interrupted.global_step == 8
    interrupted.save_checkpoint(tmp_path / "last.ckpt")
    resumed = RecordLearningRate()
    module = tiny_dit_module(optimizer={"lr": 1e-3, "decay_steps": 4})
    fit_tiny_dit(module, 10, [resumed], ckpt_path=tmp_path / "last.ckpt")
    assert resumed.rates == pytest.approx([5e-4, 2.5e-4])

    constant = RecordLearningRate()
    fit_tiny_dit(tiny_dit_module(optimizer={"lr": 1e-3}), 6, [constant])  # decay_steps 0: the official constant
    assert constant.rates == pytest.approx([1e-3] * 6)


def test_train_dit_refuses_a_decay_longer_than_its_training_before_reading_anything(tmp_path):
    from conftest import tiny_config

    from mdgen.stages import train_dit

    config = tiny_config(dit={"optimizer": {"decay_steps": 31}})  # max_steps 30
    args = ["--latents", str(tmp_path / "none"), "--vae", str(tmp_path / "none.pt"), "--out-dir", str(tmp_path)]
    with pytest.raises(SystemExit, match=r"decay_steps \(31\) must lie within dit.trainer.max_steps \(30\)"):
        train_dit.main([*args, "--config", json.dumps(config)])
    assert list(tmp_path.iterdir()) == []


def test_finetune_vae_refuses_a_decay_longer_than_its_training_before_reading_anything(tmp_path):
    from conftest import tiny_config

    from mdgen.stages import finetune_vae

    config = tiny_config(vae={"decay_epochs": 3, "trainer": {"max_epochs": 2}})
    args = ["--manifest", str(tmp_path / "none.csv"), "--out-dir", str(tmp_path), "--config", json.dumps(config)]
    with pytest.raises(SystemExit, match=r"vae.decay_epochs \(3\) must lie within vae.trainer.max_epochs \(2\)"):
        finetune_vae.main(args)
    assert list(tmp_path.iterdir()) == []


def test_dit_checkpoints_hold_the_model_once_and_older_ones_with_a_second_copy_still_load():
    module = tiny_dit_module()
    state = module.state_dict()
    assert {key.split(".")[0] for key in state} == {"model", "ema"}
    # Written before the training forward left the submodules: the same weights again as forward_model.*
    copy = {"forward_model." + key.removeprefix("model."): v for key, v in state.items() if key.startswith("model.")}
    checkpoint = {"state_dict": {**state, **copy}}
    module.on_load_checkpoint(checkpoint)
    module.load_state_dict(checkpoint["state_dict"], strict=True)


def test_compile_without_a_cpp_compiler_trains_uncompiled_and_says_so(capsys):
    from torch._inductor import config as inductor

    with inductor.patch({"cpp.cxx": (None, "no-such-c++-compiler")}):  # monkeypatch's undo would delete the key
        module = tiny_dit_module(compile=True)
    assert module.forward_model is module.model
    assert "no C++ compiler found" in capsys.readouterr().out


def test_compiled_training_step_gives_the_eager_loss_and_gradients_and_validation_stays_eager():
    import pytest

    from mdgen.training import cpp_compiler

    if cpp_compiler() is None:
        pytest.skip("torch.compile on the CPU needs a C++ compiler (g++)")
    torch.manual_seed(0)
    module = tiny_dit_module(compile=True, repa={"weight": 0.5, "depth": 1})
    assert module.forward_model is not module.model
    latents, labels, features = torch.randn(4, 4, 2, 2), torch.tensor([0, 1, 2, 0]), torch.randn(4, 4, 8)
    fixed = dict(t=torch.rand(4), noise=torch.randn(4, 4, 2, 2))

    def step():
        module.zero_grad()
        loss = module._losses(latents, labels, features, **fixed)["loss"]
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in module.model.parameters() if p.grad is not None]

    module.train()
    compiled_loss, compiled_grads = step()
    module.__dict__["forward_model"] = module.model
    eager_loss, eager_grads = step()
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-5, atol=1e-6)
    assert len(eager_grads) > 0
    for compiled_grad, eager_grad in zip(compiled_grads, eager_grads, strict=True):
        torch.testing.assert_close(compiled_grad, eager_grad, rtol=1e-4, atol=1e-6)

    module.__dict__["forward_model"] = None  # validation must not reach it
    module.eval()
    with torch.no_grad():
        assert torch.isfinite(module._losses(latents, labels, **fixed)["loss"])


@pytest.mark.parametrize("disc_start", [0, 10_000], ids=["with-the-GAN", "before-disc_start"])
def test_vae_step_cut_at_the_encoder_gives_the_official_gradients_and_log(disc_start):
    """_autoencoder_backward_once (the decoder back-propagated once) against the official step
    (autograd.grad for the adaptive weights, then one backward of the whole loss)."""
    from conftest import tiny_config

    from mdgen.models.teacher import SpectrogramTeacher
    from mdgen.training.vavae import VAVAETraining

    torch.manual_seed(0)
    teacher = SpectrogramTeacher(num_classes=3, in_chans=3, width=4, size=32).requires_grad_(False).eval()
    lossconfig = {"disc_start": disc_start, "perceptual_weight": 1.0, "adaptive_vf": True}
    config = tiny_config(
        vae={"use_vf": "domain", "perceptual": {"network": "domain"}, "lossconfig": lossconfig},
        teacher={"width": 4, "size": 32},
    )
    module = VAVAETraining(config, teacher)
    module.manual_backward = lambda loss, *args, **kwargs: loss.backward(*args, **kwargs)  # no trainer here
    images = torch.rand(4, 3, 32, 32) * 2 - 1

    def gradients(step):
        module.zero_grad(set_to_none=True)
        torch.manual_seed(1)  # the same posterior sample
        log = step()
        return log, {name: p.grad.clone() for name, p in module.vae.named_parameters() if p.grad is not None}

    official_log, official_grads = gradients(lambda: module._autoencoder_backward_official(images)[2])
    cut_log, cut_grads = gradients(lambda: module._autoencoder_backward_once(images)[2])
    assert official_log["train/vf_weight"] > 0 and ("train/g_loss" in official_log) == (disc_start == 0)
    assert (official_log["train/d_weight"] > 0) == (disc_start == 0)
    assert official_log.keys() == cut_log.keys()
    for key in official_log:
        torch.testing.assert_close(cut_log[key], official_log[key], rtol=1e-5, atol=0, msg=key)
    assert official_grads.keys() == cut_grads.keys() == dict(module.vae.named_parameters()).keys()
    # Float rounding, relative to the largest gradient (about 1e3 here): the biases before a GroupNorm
    # have a true gradient of 0, rounding is all they hold.
    atol = 1e-5 * max(grad.abs().max().item() for grad in official_grads.values())
    for name in official_grads:
        torch.testing.assert_close(cut_grads[name], official_grads[name], rtol=1e-5, atol=atol, msg=name)


def fit_tiny_vae(decay_epochs, callbacks, ckpt_path=None, stop_after=None, save_to=None):
    """The VA-VAE's training step on 4 batches of 2 random images for 2 epochs (8 batches); with
    stop_after, interrupted after that many batches, its checkpoint written then to save_to."""
    from conftest import tiny_config
    from torch.utils.data import DataLoader

    from mdgen.config import load_config
    from mdgen.models.teacher import SpectrogramTeacher
    from mdgen.training.vavae import VAVAETraining

    class Stop(pl.Callback):  # an interruption after `stop_after` batches, as a checkpoint callback saves it
        def on_train_batch_end(self, trainer, *args):
            if trainer.fit_loop.total_batch_idx + 1 == stop_after:
                trainer.save_checkpoint(save_to)
                trainer.should_stop = True

    torch.manual_seed(0)
    teacher = SpectrogramTeacher(num_classes=3, in_chans=3, width=4, size=32).requires_grad_(False).eval()
    config = load_config(json.dumps(tiny_config(vae={"decay_epochs": decay_epochs}, teacher={"width": 4, "size": 32})))
    images = [{"image": torch.rand(3, 32, 32) * 2 - 1} for _ in range(8)]
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[*callbacks, *([Stop()] if stop_after else [])],
    )
    trainer.fit(VAVAETraining(config, teacher), DataLoader(images, batch_size=2), ckpt_path=ckpt_path)
    return trainer


class RecordBothLearningRates(pl.Callback):
    """The learning rates (autoencoder, discriminator) each batch runs with."""

    def __init__(self):
        self.rates = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.rates.append(tuple(optimizer.param_groups[0]["lr"] for optimizer in trainer.optimizers))


def test_the_vae_learning_rates_decay_over_its_last_epochs_batch_by_batch_and_a_resumed_run_goes_on(tmp_path):
    lr = 1e-3  # tiny_config's vae.base_learning_rate
    record = RecordBothLearningRates()
    fit_tiny_vae(1, [record])  # 8 batches, the second epoch's 4 decay
    expected = [lr] * 5 + [0.75 * lr, 0.5 * lr, 0.25 * lr]
    assert [ae for ae, _ in record.rates] == pytest.approx(expected)
    assert [disc for _, disc in record.rates] == pytest.approx(expected)

    fit_tiny_vae(1, [], stop_after=6, save_to=tmp_path / "last.ckpt")
    resumed = RecordBothLearningRates()
    fit_tiny_vae(1, [resumed], ckpt_path=tmp_path / "last.ckpt")
    assert [ae for ae, _ in resumed.rates] == pytest.approx([0.5 * lr, 0.25 * lr])

    constant = RecordBothLearningRates()
    fit_tiny_vae(0, [constant])  # decay_epochs 0: the official constant
    assert constant.rates == [(lr, lr)] * 8
