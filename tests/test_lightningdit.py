"""LightningDiT: official key names and outputs, label dropout, guidance, checkpointing, checkpoint loading."""

import json
from pathlib import Path

import pytest
import torch

from mdgen.models.lightningdit import (
    CheckpointMismatchError,
    create_model,
    LABEL_TABLE,
    LightningDiT,
    LightningDiT_models,
    PretrainedReport,
    transfer_state,
)

FIXTURES = Path(__file__).parent / "fixtures"
OFFICIAL = json.loads((FIXTURES / "lightningdit_official_keys.json").read_text())
REFERENCE = torch.load(FIXTURES / "lightningdit_small_reference.pt", weights_only=True)
NUM_USERS = 31
MICRO = dict(input_size=4, in_channels=4, num_classes=NUM_USERS)


def shapes(model):
    return {key: list(value.shape) for key, value in model.state_dict().items()}


def randomised(model, seed=0):
    """A model whose zero-initialised layers (adaLN, output) are random, so labels and t change the output."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "adaLN_modulation" in name or "final_layer.linear" in name:
                parameter.copy_(0.05 * torch.randn(parameter.shape, generator=generator))
    return model


def micro(seed=0, **kwargs):
    torch.manual_seed(seed)
    return randomised(create_model("LightningDiT-Micro/1", **{**MICRO, **kwargs}), seed).eval()


def latents(batch, model, seed=1):
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, model.in_channels, model.input_size, model.input_size)
    return torch.randn(shape, generator=generator), torch.rand(batch, generator=generator)


def cfg_batch(model, t_value, batch=2):
    """[z, z], equal times, [labels, null] as the official sampler builds them."""
    z, _ = latents(batch, model)
    labels = torch.arange(batch) * 7 % NUM_USERS
    y = torch.cat([labels, torch.full((batch,), model.null_label)])
    t = torch.full((2 * batch,), t_value) if not torch.is_tensor(t_value) else torch.cat([t_value, t_value])
    return torch.cat([z, z]), t, y


# ---------------------------------------------------------------------------------------------
# Compatibility with the official code
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["XL/1_f16d32", "small", "plain"])
def test_key_names_shapes_and_order_equal_the_official_state_dict(name):
    with torch.device("meta"):
        model = LightningDiT(**OFFICIAL["_configs"][name])
    assert list(shapes(model).items()) == list(OFFICIAL[name].items())


def test_fixture_covers_the_released_layout_and_every_optional_branch():
    released, small, plain = OFFICIAL["XL/1_f16d32"], OFFICIAL["small"], OFFICIAL["plain"]
    assert released["y_embedder.embedding_table.weight"] == [1001, 1152]
    assert released["pos_embed"] == [1, 256, 1152] and released["feat_rope.freqs_cos"] == [256, 72]
    assert released["blocks.27.mlp.w12.weight"] == [6144, 1152]  # SwiGLU width 2/3 * 4 * 1152 = 3072
    assert small["blocks.1.attn.q_norm.weight"] == [32] and small["y_embedder.embedding_table.weight"] == [32, 64]
    assert plain["blocks.0.attn.q_norm.bias"] == [32] and plain["blocks.0.mlp.fc1.weight"] == [256, 64]
    assert plain["blocks.0.adaLN_modulation.1.weight"] == [256, 64]  # wo_shift: 4 modulations
    assert plain["final_layer.linear.weight"] == [32, 64]  # learn_sigma: 2 * 4 channels * patch 2 ** 2
    assert not any(key.startswith("feat_rope") for key in plain)


def test_xl1_has_the_official_parameter_count():
    with torch.device("meta"):
        model = create_model("LightningDiT-XL/1", input_size=16, in_channels=32, num_classes=1000)
    assert sum(p.numel() for p in model.parameters()) == 675_256_736  # counted on the official model
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 675_256_736 - 256 * 1152


@pytest.mark.parametrize("name", ["small", "plain"])
def test_official_weights_give_the_official_outputs(name):
    reference = REFERENCE[name]
    model = LightningDiT(**reference["config"]).eval()
    report = model.load_pretrained(reference["state_dict"])
    assert report.loaded == list(OFFICIAL[name]) and report.key is None and not report.adapted
    with torch.no_grad():
        out = model(reference["x"], reference["t"], reference["y"])
        x, y, s, start = reference["x_cfg"], reference["y_cfg"], reference["cfg_scale"], reference["cfg_interval_start"]
        cfg_early = model.forward_with_cfg(x, reference["t_early"], y, s, guidance_channels=3)
        cfg_early_interval = model.forward_with_cfg(x, reference["t_early"], y, s, start, guidance_channels=3)
        cfg_late_interval = model.forward_with_cfg(x, reference["t_late"], y, s, start, guidance_channels=3)
    assert out.shape == (4, 4, 8, 8)
    torch.testing.assert_close(out, reference["forward"], rtol=0, atol=1e-5)
    torch.testing.assert_close(cfg_early, reference["cfg_early"], rtol=0, atol=1e-5)
    torch.testing.assert_close(cfg_early_interval, reference["cfg_early_interval"], rtol=0, atol=1e-5)
    torch.testing.assert_close(cfg_late_interval, reference["cfg_late_interval"], rtol=0, atol=1e-5)
    assert reference["forward"].abs().max() > 0.5  # the reference is not trivially zero
    assert (reference["cfg_early_interval"] - reference["cfg_early"]).abs().max() > 0.01  # the interval acted


@pytest.mark.parametrize("name", ["small", "plain"])
def test_fixed_position_tables_equal_the_official_ones(name):
    reference = REFERENCE[name]
    model = LightningDiT(**reference["config"])
    for key, value in model.state_dict().items():
        if key == "pos_embed" or key.startswith("feat_rope."):
            torch.testing.assert_close(value, reference["state_dict"][key], rtol=0, atol=1e-6)
    assert isinstance(model.pos_embed, torch.nn.Parameter) and not model.pos_embed.requires_grad


def test_new_model_is_adaLN_zero_and_predicts_zero():
    model = LightningDiT(**OFFICIAL["_configs"]["small"])
    assert torch.count_nonzero(model.blocks[1].adaLN_modulation[-1].weight) == 0  # adaLN-Zero
    assert torch.count_nonzero(model.final_layer.linear.weight) == 0  # zero output layer
    out = model(*latents(2, model), torch.tensor([0, 30]))
    assert torch.equal(out, torch.zeros_like(out))


# ---------------------------------------------------------------------------------------------
# Sizes
# ---------------------------------------------------------------------------------------------


def test_official_sizes_are_the_official_table():
    for name, size in OFFICIAL["registry"].items():
        assert LightningDiT_models[name].keywords == size, name
    assert LightningDiT_models["LightningDiT-XL/1"].keywords == dict(
        depth=28, hidden_size=1152, patch_size=1, num_heads=16
    )


@pytest.mark.parametrize("name", sorted(LightningDiT_models))
def test_every_size_builds_and_runs_at_a_tiny_width(name):
    size = LightningDiT_models[name].keywords
    with torch.device("meta"):
        full = create_model(name, input_size=8, num_classes=NUM_USERS)  # the real width: valid rope and heads
    assert full.blocks[0].attn.head_dim % 4 == 0 and len(full.blocks) == size["depth"]
    model = LightningDiT(**{**size, "depth": 1, "hidden_size": 32, "num_heads": 2}, **MICRO).eval()
    x, t = latents(3, model)
    with torch.no_grad():
        out = model(x, t, torch.tensor([0, 5, NUM_USERS - 1]))
    assert out.shape == (3, 4, 4, 4) and model.x_embedder.num_patches == (4 // size["patch_size"]) ** 2


def test_create_model_alias_and_errors():
    assert LightningDiT_models["LightningDiT-XL/1"].keywords == dict(
        depth=28, hidden_size=1152, patch_size=1, num_heads=16
    )
    with torch.device("meta"):
        model = create_model("LightningDiT-XL", input_size=16)
    assert (len(model.blocks), model.hidden_size, model.patch_size) == (28, 1152, 1)
    with pytest.raises(
        ValueError,
        match=r"unknown LightningDiT model 'LightningDiT-XXL/1'.*LightningDiT-XL/2.*"
        r"LightningDiT-Tiny/1.*LightningDiT-XL \(= LightningDiT-XL/1\)",
    ):
        create_model("LightningDiT-XXL/1")
    with pytest.raises(ValueError, match="LightningDiT-Micro/1 fixes depth=2"):
        create_model("LightningDiT-Micro/1", depth=3)


def test_tiny_sizes():
    tiny = create_model("LightningDiT-Tiny/1", input_size=8, num_classes=NUM_USERS)
    assert (len(tiny.blocks), tiny.hidden_size, tiny.num_heads, tiny.patch_size) == (6, 192, 3, 1)
    assert sum(p.numel() for p in tiny.parameters() if p.requires_grad) == 4_181_792
    assert sum(p.numel() for p in micro().parameters() if p.requires_grad) == 181_164


def test_wrong_latent_size_is_named():
    model = micro()
    with pytest.raises(ValueError, match=r"expects latents \(N, 4, 4, 4\).*got \(2, 4, 8, 8\)"):
        model(torch.zeros(2, 4, 8, 8), torch.zeros(2), torch.zeros(2, dtype=torch.long))


# ---------------------------------------------------------------------------------------------
# Labels: null label and dropout
# ---------------------------------------------------------------------------------------------


def test_null_label_is_num_classes():
    model = micro()
    assert model.null_label == NUM_USERS == model.num_classes
    assert model.y_embedder.embedding_table.num_embeddings == NUM_USERS + 1
    without_dropout = micro(class_dropout_prob=0.0)
    assert without_dropout.null_label is None and without_dropout.y_embedder.embedding_table.num_embeddings == 31
    with pytest.raises(ValueError, match="class_dropout_prob=0.*cannot do classifier-free guidance"):
        without_dropout.forward_with_cfg(*cfg_batch(model, 0.5), 4.0)


def test_label_dropout_in_training_only():
    model = micro(class_dropout_prob=1.0)
    x, t = latents(4, model)
    labels = torch.tensor([0, 3, 17, 30])
    null = torch.full_like(labels, NUM_USERS)
    with torch.no_grad():
        conditional, unconditional = model(x, t, labels), model(x, t, null)
        model.train()
        dropped = model(x, t, labels)
        not_forced = model(x, t, labels, force_drop_ids=torch.zeros(4))
        model.eval()
        forced = model(x, t, labels, force_drop_ids=torch.tensor([1, 0, 1, 0]))
    assert (conditional - unconditional).abs().amax(dim=(1, 2, 3)).min() > 1e-3  # labels matter
    assert torch.equal(dropped, unconditional)  # training: every label became the null label 31
    assert torch.equal(not_forced, conditional)  # force_drop_ids overrides the random drop
    assert torch.equal(forced[[0, 2]], unconditional[[0, 2]]) and torch.equal(forced[[1, 3]], conditional[[1, 3]])


def test_label_dropout_rate():
    model = micro(class_dropout_prob=0.25)
    torch.manual_seed(0)
    dropped = model.y_embedder.token_drop(torch.zeros(20_000, dtype=torch.long))
    assert set(dropped.unique().tolist()) == {0, NUM_USERS}
    assert abs((dropped == NUM_USERS).float().mean().item() - 0.25) < 0.01


# ---------------------------------------------------------------------------------------------
# Classifier-free guidance
# ---------------------------------------------------------------------------------------------


def raw_halves(model, x, t, y):
    """The conditional and unconditional predictions of the batched forward, (B, C, H, W) each."""
    half = x[: len(x) // 2]
    with torch.no_grad():
        return model(torch.cat([half, half]), t, y).chunk(2)


def test_guidance_scale_one_is_the_conditional_prediction():
    model = micro()
    x, t, y = cfg_batch(model, 0.5)
    cond, _ = raw_halves(model, x, t, y)
    with torch.no_grad():
        out = model.forward_with_cfg(x, t, y, cfg_scale=1.0)
        alone = model(x[:2], t[:2], y[:2])
    assert out.shape == x.shape
    assert torch.equal(out[:2], cond) and torch.equal(out[2:], cond)
    torch.testing.assert_close(out[:2], alone, rtol=0, atol=1e-6)


def test_guidance_formula_on_all_channels():
    model = micro()
    x, t, y = cfg_batch(model, 0.5)
    cond, uncond = raw_halves(model, x, t, y)
    with torch.no_grad():
        out = model.forward_with_cfg(x, t, y, cfg_scale=4.0)
    torch.testing.assert_close(out[:2], uncond + 4.0 * (cond - uncond), rtol=0, atol=1e-6)
    assert torch.equal(out[:2], out[2:])


def test_official_three_channel_guidance_differs_only_on_channels_from_3():
    model = micro()
    x, t, y = cfg_batch(model, 0.5)
    cond, uncond = raw_halves(model, x, t, y)
    with torch.no_grad():
        everywhere = model.forward_with_cfg(x, t, y, 4.0)
        official = model.forward_with_cfg(x, t, y, 4.0, guidance_channels=3)
    assert torch.equal(everywhere[:, :3], official[:, :3])
    assert (everywhere[:, 3:] - official[:, 3:]).abs().min() > 0  # channel 3 differs everywhere
    # the unguided channel keeps the raw predictions: conditional first half, unconditional second
    assert torch.equal(official[:2, 3:], cond[:, 3:]) and torch.equal(official[2:, 3:], uncond[:, 3:])
    with pytest.raises(ValueError, match="guidance_channels must be in 1..4"):
        model.forward_with_cfg(x, t, y, 4.0, guidance_channels=5)


def test_cfg_interval_leaves_the_high_noise_part_unguided():
    model = micro()
    start = 0.11
    for t_value, guided in [(0.05, False), (start, True), (0.6, True)]:  # t = 0 is noise
        x, t, y = cfg_batch(model, t_value)
        cond, uncond = raw_halves(model, x, t, y)
        with torch.no_grad():
            out = model.forward_with_cfg(x, t, y, 4.0, cfg_interval_start=start)
        expected = cond + 3.0 * (cond - uncond) if guided else cond
        assert torch.equal(out[:2], expected), t_value
    # per sample: a batch straddling the start guides only the sample past it
    x, t, y = cfg_batch(model, torch.tensor([0.05, 0.6]))
    cond, uncond = raw_halves(model, x, t, y)
    with torch.no_grad():
        out = model.forward_with_cfg(x, t, y, 4.0, cfg_interval_start=start)
    assert torch.equal(out[0], cond[0]) and torch.equal(out[1], (cond + 3.0 * (cond - uncond))[1])


def test_cfg_rejects_an_odd_batch():
    model = micro()
    x, t, y = cfg_batch(model, 0.5)
    with pytest.raises(ValueError, match="same even batch size"):
        model.forward_with_cfg(x[:3], t[:3], y[:3], 4.0)


# ---------------------------------------------------------------------------------------------
# Gradient checkpointing
# ---------------------------------------------------------------------------------------------


def test_gradient_checkpointing_gives_the_same_output_and_gradients():
    plain, checkpointed = micro(), micro(use_checkpoint=True)
    checkpointed.load_state_dict(plain.state_dict())
    x, t = latents(3, plain)
    y = torch.tensor([1, 2, NUM_USERS])
    calls, block_forward = [], checkpointed.blocks[0].forward
    checkpointed.blocks[0].forward = lambda *args: calls.append(1) or block_forward(*args)
    results = []
    for model in (plain, checkpointed):
        out = model(x, t, y)
        out.pow(2).mean().backward()
        results.append((out.detach(), {name: p.grad for name, p in model.named_parameters() if p.requires_grad}))
    assert len(calls) == 2  # the block ran again in the backward pass: checkpointing is on
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=1e-6)
    assert results[0][1].keys() == results[1][1].keys()
    for name, grad in results[0][1].items():
        torch.testing.assert_close(grad, results[1][1][name], rtol=1e-5, atol=1e-7, msg=name)
    assert checkpointed.pos_embed.grad is None  # the fixed embedding is not trained


# ---------------------------------------------------------------------------------------------
# Checkpoint loading
# ---------------------------------------------------------------------------------------------


def official_checkpoint(model):
    """The layout of the official train.py: raw weights, EMA weights, optimizer state, config."""
    ema = {key: value.clone() for key, value in model.state_dict().items()}
    raw = {key: value + 0.5 for key, value in ema.items()}
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(3))]).state_dict()
    config = {"model": {"model_type": "LightningDiT-Micro/1", "use_qknorm": False}, "data": {"num_classes": 31}}
    return {"model": raw, "ema": ema, "opt": optimizer, "config": config}


def test_loads_ema_or_model_from_an_official_training_checkpoint(tmp_path):
    source = micro(seed=3)
    path = tmp_path / "0080000.pt"
    torch.save(official_checkpoint(source), path)
    ema, raw = micro(seed=4), micro(seed=4)
    report = ema.load_pretrained(path)
    raw.load_pretrained(path, key="model")
    assert report.key == "ema" and len(report.loaded) == len(source.state_dict())
    assert str(path) in str(report) and "['ema']" in str(report)
    for key, value in source.state_dict().items():
        assert torch.equal(ema.state_dict()[key], value)
        assert torch.equal(raw.state_dict()[key], value + 0.5)
    with pytest.raises(ValueError, match=r"no 'ema_weights' entry.*\['config', 'ema', 'model', 'opt'\]"):
        ema.load_pretrained(path, key="ema_weights")


def test_ddp_prefix_is_stripped_and_reported():
    source = micro(seed=3)
    wrapped = {"module." + key: value for key, value in source.state_dict().items()}
    model = micro(seed=4)
    report = model.load_pretrained({"ema": wrapped})
    assert any("'module.'" in sentence and "DistributedDataParallel" in sentence for sentence in report.adapted)
    assert torch.equal(model.final_layer.linear.weight, source.final_layer.linear.weight)


def test_strict_loading_names_missing_unexpected_and_mismatched_keys():
    checkpoint = official_checkpoint(micro(use_qknorm=True))
    checkpoint["ema"]["y_embedder.embedding_table.weight"] = torch.zeros(1001, 64)
    model = micro(seed=4)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    with pytest.raises(CheckpointMismatchError) as caught:
        model.load_pretrained(checkpoint)
    message = str(caught.value)
    assert "unexpected in the checkpoint (4)" in message and "blocks.1.attn.k_norm.weight" in message
    assert "y_embedder.embedding_table.weight: checkpoint (1001, 64) vs model (32, 64)" in message
    assert "The checkpoint's own config: model {'model_type': 'LightningDiT-Micro/1'" in message
    assert caught.value.unexpected == [f"blocks.{i}.attn.{n}_norm.weight" for i in range(2) for n in "qk"]
    assert all(torch.equal(value, before[key]) for key, value in model.state_dict().items())  # nothing changed

    bare = {k: v for k, v in micro().state_dict().items() if not k.startswith("feat_rope")}
    with pytest.raises(CheckpointMismatchError, match=r"missing from the checkpoint \(2\):\n +feat_rope.freqs_cos"):
        model.load_pretrained(bare)


def imagenet_checkpoint(path, **size):
    """An official-layout training checkpoint of a 1000-class model (random weights) at a small size."""
    torch.manual_seed(1)
    model = create_model("LightningDiT-Micro/1", num_classes=1000, **size)
    torch.save({"model": model.state_dict(), "ema": model.state_dict(), "opt": {}, "config": {}}, path)
    return model.state_dict()


def test_transfer_from_imagenet_resizes_only_the_label_table(tmp_path):
    source = imagenet_checkpoint(tmp_path / "imagenet.pt", input_size=8, in_channels=4)
    torch.manual_seed(0)
    model = create_model("LightningDiT-Micro/1", num_classes=31, input_size=8, in_channels=4)
    report = model.load_pretrained(tmp_path / "imagenet.pt", transfer=True)
    table, old = model.y_embedder.embedding_table.weight.detach(), source["y_embedder.embedding_table.weight"]
    assert table.shape == (32, 64) and torch.equal(table[31], old[1000])  # the null row carried over
    deviation = (table[:31] - old[:1000].mean(dim=0)).std() / old[:1000].std()
    assert 0.05 < deviation < 0.2  # users start at the mean class row, told apart by a little noise
    assert all(torch.equal(v, source[k]) for k, v in model.state_dict().items() if k != LABEL_TABLE)
    assert len(report.adapted) == 1 and "(1001, 64) -> (32, 64)" in str(report)


def test_transfer_recomputes_position_tables_for_another_grid(tmp_path):
    source = imagenet_checkpoint(tmp_path / "imagenet.pt", input_size=16, in_channels=4)
    model = create_model("LightningDiT-Micro/1", num_classes=31, input_size=8, in_channels=4)
    own = {k: v.clone() for k, v in model.state_dict().items()}
    report = model.load_pretrained(tmp_path / "imagenet.pt", transfer=True)
    for name in ("pos_embed", "feat_rope.freqs_cos", "feat_rope.freqs_sin"):
        assert torch.equal(model.state_dict()[name], own[name]) and not torch.equal(own[name], source[name][..., :1, :])
    assert torch.equal(model.state_dict()["blocks.0.attn.qkv.weight"], source["blocks.0.attn.qkv.weight"])
    assert len(report.adapted) == 4


def test_transfer_still_refuses_other_channels_and_depth_by_key(tmp_path):
    imagenet_checkpoint(tmp_path / "imagenet.pt", input_size=8, in_channels=4)
    model = create_model("LightningDiT-Micro/1", num_classes=31, input_size=8, in_channels=8)
    with pytest.raises(CheckpointMismatchError, match=r"x_embedder\.proj\.weight: checkpoint \(64, 4, 1, 1\)"):
        model.load_pretrained(tmp_path / "imagenet.pt", transfer=True)
    deeper = LightningDiT(
        input_size=8, patch_size=1, in_channels=4, hidden_size=64, depth=3, num_heads=2, num_classes=31
    )
    with pytest.raises(CheckpointMismatchError, match=r"missing from the checkpoint[\s\S]*blocks\.2\."):
        deeper.load_pretrained(tmp_path / "imagenet.pt", transfer=True)


def test_transfer_at_the_released_xl_size_fits_shapes_only():
    """The released LightningDiT-XL/1 (1000 classes, 16 × 16 × 32 latents) onto 31 users, on the
    meta device: every shape is checked, no memory is spent."""
    with torch.device("meta"):
        released = create_model("LightningDiT-XL/1", num_classes=1000, input_size=16, in_channels=32)
        model = create_model("LightningDiT-XL/1", num_classes=31, input_size=16, in_channels=32)
    state = transfer_state(model, released.state_dict(), PretrainedReport(path=None))
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in model.state_dict().items()}
    assert state[LABEL_TABLE].shape == (32, 1152)
