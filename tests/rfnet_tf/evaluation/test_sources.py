"""Sources: reading, seeded synthetic misalignment, labelling of real and simulated data."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io
from PIL import Image

from rfnet_tf.data import DataError
from rfnet_tf.evaluation import sources

from .conftest import make_pair


def write_pairs(root, rng, names, shape=(64, 80)):
    for folder in ("vis", "nir"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for name in names:
        pair = make_pair(rng, shape, name)
        Image.fromarray(np.round(pair.vis * 255).astype(np.uint8)).save(root / "vis" / f"{name}.png")
        Image.fromarray(np.round(pair.nir[..., 0] * 255).astype(np.uint8)).save(root / "nir" / f"{name}.png")
    return root


def test_synthetic_folder_misaligns_each_pair_by_seed_and_name_only(tmp_path, rng):
    write_pairs(tmp_path / "all", rng, ["a", "b"])
    write_pairs(tmp_path / "one", np.random.default_rng(1234), ["a"])
    both = sources.synthetic_folder(tmp_path / "all", "affine", seed=3, num_landmarks=4)
    alone = sources.synthetic_folder(tmp_path / "one", "affine", seed=3, num_landmarks=4)
    assert [s.name for s in both.samples] == ["a", "b"]
    assert both.misalignment == "affine" and not both.simulated and both.source == "data_dir"
    assert both.has_landmarks and both.has_ground_truth
    np.testing.assert_array_equal(
        both.samples[0].truth.affine.misalignment, alone.samples[0].truth.affine.misalignment
    )
    assert both.samples[0].pair.nir_points.shape == (4, 2)
    other_seed = sources.synthetic_folder(tmp_path / "one", "affine", seed=4, num_landmarks=4)
    assert not np.allclose(
        other_seed.samples[0].truth.affine.misalignment, alone.samples[0].truth.affine.misalignment
    )
    # The fixed image is the aligned NIR; the moving image is the misaligned VIS.
    aligned_nir = np.asarray(Image.open(tmp_path / "one" / "nir" / "a.png"), np.float32) / 255
    np.testing.assert_array_equal(alone.samples[0].pair.nir[..., 0], aligned_nir)
    assert alone.samples[0].moving_mask.dtype == bool


def test_synthetic_folder_leaves_out_excluded_pairs(tmp_path, rng):
    write_pairs(tmp_path, rng, ["a", "b", "c"])
    kept = sources.synthetic_folder(tmp_path, "affine", exclude=("b",))
    assert [sample.name for sample in kept.samples] == ["a", "c"]
    assert kept.details["exclude"] == ["b"]
    with pytest.raises(DataError, match="holds no pair named d"):
        sources.synthetic_folder(tmp_path, "affine", exclude=("d",))
    with pytest.raises(DataError, match="no pair left"):
        sources.synthetic_folder(tmp_path, "affine", exclude=("a", "b", "c"))


def test_synthetic_folder_evaluates_only_the_named_pairs(tmp_path, rng):
    write_pairs(tmp_path, rng, ["a", "b", "c"])
    kept = sources.synthetic_folder(tmp_path, "affine", only=("c", "a"), exclude=("c",))
    assert [sample.name for sample in kept.samples] == ["a"]
    assert kept.details["pairs"] == ["c", "a"]
    with pytest.raises(DataError, match=r"holds no pair named d \(--pairs\)"):
        sources.synthetic_folder(tmp_path, "affine", only=("d",))


def test_synthetic_folder_refuses_landmark_files(tmp_path, rng):
    pair = make_pair(rng)
    scipy.io.savemat(
        tmp_path / "x.mat",
        {"I_move": pair.vis, "I_fix": pair.nir[..., 0], "LMmove": [[1.0, 2.0]], "LMfix": [[1.0, 2.0]]},
    )
    with pytest.raises(DataError, match="--landmarks_dir"):
        sources.synthetic_folder(tmp_path)


def test_an_image_too_small_for_landmarks_is_bad_input_naming_the_file(tmp_path, rng):
    write_pairs(tmp_path, rng, ["tiny"], shape=(8, 9))
    with pytest.raises(DataError, match="tiny.png"):
        sources.synthetic_folder(tmp_path)


def test_a_pair_smaller_than_rfnet_accepts_is_refused_naming_the_file(tmp_path, rng):
    write_pairs(tmp_path, rng, ["small", "least"], shape=(4, 30))
    write_pairs(tmp_path, rng, ["least"], shape=(5, 5))
    with pytest.raises(DataError, match=r"small.png: 4x30 px \(height x width\); RFNet needs at least 5 px"):
        sources.single_pair(tmp_path / "vis" / "small.png", tmp_path / "nir" / "small.png")
    assert sources.single_pair(tmp_path / "vis" / "least.png", tmp_path / "nir" / "least.png")


def test_single_pair_is_real_and_has_no_ground_truth(tmp_path, rng):
    write_pairs(tmp_path, rng, ["p"])
    dataset = sources.single_pair(tmp_path / "vis" / "p.png", tmp_path / "nir" / "p.png")
    assert dataset.source == "pair" and dataset.misalignment is None and not dataset.simulated
    assert not dataset.has_landmarks and not dataset.has_ground_truth
    assert dataset.samples[0].moving_mask is None


def test_landmark_folder_keeps_the_file_landmarks(tmp_path, rng):
    pair = make_pair(rng)
    scipy.io.savemat(
        tmp_path / "m.mat",
        {
            "I_move": np.round(pair.vis * 255).astype(np.uint8),
            "I_fix": np.round(pair.nir[..., 0] * 255).astype(np.uint8),
            "LMmove": np.array([[11.0, 21.0], [31.0, 5.0]]),
            "LMfix": np.array([[12.0, 20.0], [30.0, 6.0]]),
        },
    )
    dataset = sources.landmark_folder(tmp_path)
    assert dataset.source == "landmarks" and dataset.misalignment is None
    assert dataset.has_landmarks and not dataset.has_ground_truth
    # 1-based [x, y] -> zero-based (y, x).
    np.testing.assert_array_equal(dataset.samples[0].pair.vis_points, [[20.0, 10.0], [4.0, 30.0]])


def test_demo_set_is_labelled_simulated():
    dataset = sources.demo_set("affine", seed=0, num_landmarks=3, names=("chelsea",))
    assert dataset.simulated and dataset.source == "demo"
    assert "SIMULATED" in dataset.title and "simulated" in dataset.details["note"]
    assert dataset.details["images"] == ["chelsea"]
    assert dataset.has_landmarks and dataset.has_ground_truth
    assert dataset.samples[0].pair.vis.shape == (300, 451, 3)
