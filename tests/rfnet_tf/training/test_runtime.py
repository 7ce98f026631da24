"""Runtime helpers: the saved flags parse back to the same values."""

from __future__ import annotations

import json

from absl import flags

from rfnet_tf.training.runtime import save_flags


def test_flags_txt_parses_back_to_the_saved_values_lists_and_none_included(tmp_path):
    values = {"exclude": ["country/0003", "scene_1"], "crop_size": 32, "attention_window": None,
              "native_resolution": False, "learning_rate": 0.0004, "layout": "auto"}
    save_flags(tmp_path, values)
    parsed = flags.FlagValues()
    flags.DEFINE_list("exclude", [], "", flag_values=parsed)
    flags.DEFINE_integer("crop_size", 384, "", flag_values=parsed)
    flags.DEFINE_integer("attention_window", None, "", flag_values=parsed)
    flags.DEFINE_bool("native_resolution", True, "", flag_values=parsed)
    flags.DEFINE_float("learning_rate", 1.0, "", flag_values=parsed)
    flags.DEFINE_string("layout", "pairs", "", flag_values=parsed)
    parsed(["test", f"--flagfile={tmp_path / 'flags.txt'}"])
    assert {name: parsed[name].value for name in values} == values
    assert json.loads((tmp_path / "flags.json").read_text()) == values
