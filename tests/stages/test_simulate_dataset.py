"""The simulate_dataset stage, run for real: a seeded data set, the same with any number of
workers, users that look different and that a simple classifier tells apart, and a folder it did
not write left alone."""

import json

import numpy as np
import pytest
import torch
from conftest import simulation
from PIL import Image

from mdgen.stages.simulate_dataset import main as simulate_stage


def simulate(tmp_path, name, workers=1, **simulator):
    out = tmp_path / name
    config = simulation(3, 32, **({"train_per_user": 2, "val_per_user": 1} | simulator))
    assert simulate_stage(["--out", str(out), "--config", config, "--workers", str(workers)]) == 0
    return out


def test_dataset_is_deterministic_for_a_seed_and_independent_of_workers(tmp_path):
    one = simulate(tmp_path, "a", workers=1)
    two = simulate(tmp_path, "b", workers=2)
    other = simulate(tmp_path, "c", seed=1)
    files = sorted(p.relative_to(one) for p in one.rglob("*.png"))
    assert len(files) == 3 * 3
    assert all((one / f).read_bytes() == (two / f).read_bytes() for f in files)
    assert not any((one / f).read_bytes() == (other / f).read_bytes() for f in files)
    users = json.loads((one / "users.json").read_text())
    assert [u["user_id"] for u in users["users"]] == ["user_00", "user_01", "user_02"]
    assert "train/user_01/rec_001.png" in users["users"][1]["recordings"]
    assert users["radar"]["prf_hz"] == 3000.0


def test_different_users_look_different(tmp_path):
    out = simulate(tmp_path, "a")
    images = {u: np.asarray(Image.open(out / "train" / u / "rec_000.png"), dtype=float) for u in ("user_00", "user_01")}
    assert np.abs(images["user_00"] - images["user_01"]).mean() > 5


@pytest.mark.fault
def test_simulator_refuses_to_overwrite_a_folder_it_did_not_write(tmp_path):
    foreign = tmp_path / "data"
    (foreign / "train").mkdir(parents=True)
    (foreign / "train" / "precious.png").write_bytes(b"real data")
    with pytest.raises(SystemExit, match="refusing to overwrite"):
        simulate_stage(["--out", str(foreign), "--config", simulation(2, 32)])
    assert (foreign / "train" / "precious.png").read_bytes() == b"real data"


def test_rerun_replaces_the_previous_simulation(tmp_path):
    out = simulate(tmp_path, "a")
    simulate(tmp_path, "a", train_per_user=1)
    assert len(list((out / "train" / "user_00").glob("*.png"))) == 1
    assert not (tmp_path / ".a.incomplete").exists()


def load_split(root, split, size=32):
    paths = sorted(root.glob(f"{split}/user_*/*.png"))
    x = np.stack(
        [
            np.asarray(Image.open(p).convert("L").resize((size, size), Image.BILINEAR), dtype=np.float32) / 255
            for p in paths
        ]
    )
    y = [int(p.parent.name.removeprefix("user_")) for p in paths]
    return torch.from_numpy(x).flatten(1), torch.tensor(y)


def test_logistic_regression_identifies_simulated_users_far_above_chance(tmp_path):
    """Users are learnable: 10 users, 12 training walks each, pixels of 32×32 grey spectrograms.

    Measured: 0.65 validation accuracy (chance 0.10). On the full default set (31 users,
    24 train / 8 val) the same classifier reaches 0.68 (chance 0.03) and a small CNN about 0.88.
    """
    out = tmp_path / "sim"
    config = simulation(10, 64, train_per_user=12, val_per_user=4)
    simulate_stage(["--out", str(out), "--config", config, "--workers", "2"])
    x_train, y_train = load_split(out, "train")
    x_val, y_val = load_split(out, "val")
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    x_train, x_val = (x_train - mean) / std, (x_val - mean) / std

    torch.manual_seed(0)
    model = torch.nn.Linear(x_train.shape[1], 10)
    optimizer = torch.optim.LBFGS(model.parameters(), max_iter=200)

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x_train), y_train) + 1e-3 * model.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    accuracy = (model(x_val).argmax(1) == y_val).float().mean().item()
    assert accuracy > 0.5, f"validation accuracy {accuracy:.2f} (chance 0.10)"
