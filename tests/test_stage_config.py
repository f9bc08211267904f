"""Error paths of the stage scripts, fed the bad input they guard against."""

import json

import pytest
import torch

from mdgen.config import load_config
from mdgen.models.lightningdit import create_model
from mdgen.sampling import guided_velocity
from mdgen.stages.evaluate_generation import parse_low_data


def test_config_without_a_needed_section_names_it():
    with pytest.raises(SystemExit, match="lacks the section"):
        load_config(json.dumps({"data": {}}), "data", "vae_typo")


def test_config_that_is_not_a_mapping_is_refused():
    with pytest.raises(SystemExit, match="must be a mapping of sections"):
        load_config("[1, 2]", "data")


@pytest.mark.parametrize("item", ["4", "x=folder", "4="])
def test_low_data_argument_must_be_k_equals_folder(item):
    with pytest.raises(SystemExit, match="expects K=DIR"):
        parse_low_data(item)


def test_guidance_without_label_dropout_explains_what_to_set():
    model = create_model("LightningDiT-Micro/1", input_size=4, in_channels=4, num_classes=3, class_dropout_prob=0.0)
    labels = torch.tensor([0, 1])
    with pytest.raises(SystemExit, match="set sample.cfg_scale: 1"):
        guided_velocity(model, labels, {"cfg_scale": 4.0, "cfg_interval_start": 0.0, "guidance_channels": None})
    velocity = guided_velocity(model, labels, {"cfg_scale": 1.0})  # no guidance needs no null label
    assert velocity(torch.zeros(2, 4, 4, 4), torch.full((2,), 0.5)).shape == (2, 4, 4, 4)
