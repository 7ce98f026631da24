"""The weights format: rfnet.json is checked key by key before anything is built."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from rfnet_tf.weights import CONFIG_FILE, WeightsError, read_config

SHIPPED = Path(__file__).resolve().parents[2] / "weights"


def write_config(directory: Path, config: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_FILE).write_text(json.dumps(config))
    return directory


def shipped_config() -> dict:
    return json.loads((SHIPPED / CONFIG_FILE).read_text())


def test_the_shipped_config_and_an_older_one_without_the_newer_keys_are_valid(tmp_path):
    assert read_config(SHIPPED) == shipped_config()
    older = {"model": {"deformable": True, "max_displacement": 16.0, "affine_input_size": 384},
             "parts": ["transnet"]}
    assert read_config(write_config(tmp_path, older)) == older


@pytest.mark.parametrize(
    "model,message",
    [
        ({"affine_input_size": "abc"}, '"model.affine_input_size" must be an integer >= 8, got \'abc\''),
        ({"affine_input_size": 4}, '"model.affine_input_size" must be an integer >= 8, got 4'),
        ({"affine_input_size": True}, '"model.affine_input_size" must be an integer >= 8, got True'),
        ({"coarse_refinement_steps": -1}, '"model.coarse_refinement_steps" must be an integer >= 0'),
        ({"coarse_refinement_levels": 2.0}, '"model.coarse_refinement_levels" must be an integer >= 1'),
        (
            {"coarse_refinement_similarity": "mutual_information"},
            '"model.coarse_refinement_similarity" must be one of "ncc", "gradient_ncc"',
        ),
        ({"max_displacement": 0}, '"model.max_displacement" must be a number > 0'),
        ({"deformable": "yes"}, '"model.deformable" must be true or false'),
        ({"attention_window": 0}, '"model.attention_window" must be null or an integer >= 1'),
        ({"affine_head": "dense"}, '"model.affine_head" must be one of "pooled", "matching"'),
        ({"correlation_radius": 0}, '"model.correlation_radius" must be an integer >= 1'),
        ({"affinenet_input_size": 4}, '"model.affinenet_input_size" must be null or an integer >= 8'),
        ({"fine_min_gain": 2.5}, '"model.fine_min_gain" must be null or a number in [-2, 2]'),
        ({"fine_min_gain": True}, '"model.fine_min_gain" must be null or a number in [-2, 2]'),
        (
            {"deformation_block_type": "mlp"},
            '"model.deformation_block_type" must be one of "unet", "correlation"',
        ),
        ({"dropout": 0.5}, 'unknown key "model.dropout"'),
    ],
)
def test_a_bad_model_value_is_one_line_naming_the_file_and_the_key(tmp_path, model, message):
    config = shipped_config()
    config["model"].update(model)
    directory = write_config(tmp_path / "w", config)
    with pytest.raises(WeightsError) as error:
        read_config(directory)
    text = str(error.value)
    assert "\n" not in text and text.startswith(f"{directory / CONFIG_FILE}: ") and message in text


@pytest.mark.parametrize(
    "config,message",
    [
        ([1, 2], 'expected a JSON object with a "model" object'),
        ({"parts": ["transnet"]}, 'expected a JSON object with a "model" object'),
        ({"model": {}, "parts": ["transnet", "fusion"]}, '"parts" must be a list of transnet'),
        ({"model": {}, "provenance": "me"}, '"provenance" must be an object'),
    ],
)
def test_a_bad_file_structure_is_named(tmp_path, config, message):
    with pytest.raises(WeightsError, match=message):
        read_config(write_config(tmp_path, config))


def test_an_unknown_top_level_key_is_ignored_with_a_warning(tmp_path, caplog):
    directory = write_config(tmp_path, dict(shipped_config(), comment="trained on Tuesday"))
    with caplog.at_level(logging.WARNING):
        assert read_config(directory)["model"] == shipped_config()["model"]
        read_config(directory)  # evaluate.py reads it three times: one warning
    assert CONFIG_FILE in caplog.text and caplog.text.count("ignoring unknown key(s) comment") == 1
