"""Command: evaluate.py's flag combinations and default weights."""

from __future__ import annotations

from pathlib import Path

import pytest

from rfnet_tf.data.demo import DEMO_IMAGES
from rfnet_tf.data.synthetic import AffineRanges
from rfnet_tf.evaluation import command
from rfnet_tf.evaluation.methods import DEFAULT_METHODS
from rfnet_tf.evaluation.pipeline import EvaluationError

DEFAULTS = {
    "vis": None, "nir": None, "data_dir": None, "layout": "auto", "vis_dir": "vis",
    "nir_dir": "nir", "skip_bad": False, "exclude": "", "pairs": "", "landmarks_dir": None, "misalign": "both", "seed": 0,
    "num_landmarks": 5, "demo_images": ",".join(DEMO_IMAGES), "weights": None,
    "methods": ",".join(DEFAULT_METHODS), "out_dir": "results", "paper_conventions": False,
    "checkerboard_tiles": 8, "ecc_levels": 3, "max_rotation": 15.0, "scale_range": ["0.8", "1.25"],
    "max_shear": 0.15, "max_translation": 0.15, "local_displacement": ["2.0", "10.0"],
    "local_control_spacing": 64.0,
}
DEFAULT_WEIGHTS = Path("/nowhere/weights")


def settings(**given):
    return command.settings_from_flags({**DEFAULTS, **given}, set(given), DEFAULT_WEIGHTS)


def test_exclude_and_pairs_are_data_dir_flags():
    assert settings(data_dir="d", exclude="a, b").exclude == ("a", "b")
    assert settings(data_dir="d", pairs="c,country_validation").pairs == ("c", "country_validation")
    for flag in ("exclude", "pairs"):
        with pytest.raises(EvaluationError, match=f"--{flag} applies only to --data_dir"):
            settings(**{flag: "a"})


def test_no_input_flag_is_the_whole_demo_set_with_default_weights():
    result = settings()
    assert result.source == "demo" and result.demo_images == DEMO_IMAGES
    assert result.weights == DEFAULT_WEIGHTS and not result.weights_given
    assert result.methods == DEFAULT_METHODS and not result.methods_given
    assert result.num_landmarks == 5 and result.seed == 0


def test_each_source_is_recognised():
    assert settings(vis="a.png", nir="b.png").source == "pair"
    assert settings(data_dir="d", misalign="affine").source == "data_dir"
    assert settings(landmarks_dir="m", skip_bad=True).source == "landmarks"
    assert settings(weights="w", methods="ecc").methods_given


@pytest.mark.parametrize(
    "given,message",
    [
        ({"vis": "a.png", "data_dir": "d"}, "give one input"),
        ({"data_dir": "d", "landmarks_dir": "m"}, "give one input"),
        ({"vis": "a.png"}, "--vis and --nir go together"),
        ({"nir": "b.png"}, "--vis and --nir go together"),
        ({"vis": "a", "nir": "b", "misalign": "affine"}, "--misalign applies only to"),
        ({"landmarks_dir": "m", "seed": 3}, "--seed applies only to"),
        ({"layout": "pairs"}, "--layout applies only to --data_dir"),
        ({"data_dir": "d", "demo_images": "chelsea"}, "--demo_images applies only to"),
        ({"demo_images": "chelsea,lena"}, "--demo_images must name"),
        ({"num_landmarks": 0}, "--num_landmarks must be at least 1"),
        ({"checkerboard_tiles": 0}, "--checkerboard_tiles must be at least 1"),
        ({"methods": "rfnet,surf"}, "unknown method"),
        ({"misalign": "none"}, "--misalign=none applies only to --data_dir"),
        ({"data_dir": "d", "misalign": "none", "seed": 2}, "adds no misalignment, so --seed cannot"),
        ({"out_dir": ""}, "--out_dir is empty"),
    ],
)
def test_bad_flag_combinations(given, message):
    with pytest.raises(EvaluationError, match=message):
        settings(**given)


def test_a_known_affine_folder_is_scored_as_it_is_and_refuses_synthetic_flags(known_affine_dir):
    dataset = command.load_dataset(settings(data_dir=str(known_affine_dir)))
    assert dataset.source == "known_affine" and dataset.has_ground_truth
    with pytest.raises(EvaluationError, match="--misalign and --seed cannot apply .* own misalignment"):
        command.load_dataset(settings(data_dir=str(known_affine_dir), misalign="both", seed=1))
    unscored = command.load_dataset(
        settings(data_dir=str(known_affine_dir), layout="nirscene", misalign="none")
    )
    assert unscored.source == "data_dir" and not unscored.has_ground_truth
    assert len(unscored.samples) == len(dataset.samples)


def test_missing_default_weights_say_how_to_get_some(tmp_path):
    missing = command.settings_from_flags(DEFAULTS, set(), tmp_path / "weights")
    with pytest.raises(EvaluationError, match="train RFNet first .* or pass --weights"):
        command.weights_info(missing)
    given = command.settings_from_flags({**DEFAULTS, "weights": str(tmp_path / "w")}, {"weights"}, DEFAULT_WEIGHTS)
    with pytest.raises(command.WeightsError, match="no such directory"):
        command.weights_info(given)


def test_default_weights_are_next_to_the_script_not_the_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert command.default_weights_dir("/repo/evaluate.py") == Path("/repo/weights")



def test_misalignment_ranges_come_from_their_flags_and_apply_to_synthetic_sources():
    result = settings(data_dir="d", max_rotation=5.0, local_displacement="1,3")
    assert result.affine_ranges.max_rotation_deg == 5.0
    assert result.field_ranges.max_displacement_range == (1.0, 3.0)
    assert settings().affine_ranges == AffineRanges()
    with pytest.raises(EvaluationError, match="--max_rotation applies only to --data_dir or the demo"):
        settings(vis="a.png", nir="b.png", max_rotation=5.0)
    with pytest.raises(EvaluationError, match="--scale_range=1.3,0.9"):
        settings(scale_range="1.3,0.9")
