"""Sources: reading, seeded synthetic misalignment, pairs with known affines (against
OpenCV's own warp), pairs as they are, labelling of real and simulated data."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest
import scipy.io
from PIL import Image

from rfnet_tf.data import DataError
from rfnet_tf.evaluation import sources
from rfnet_tf.metrics.registration import warp_image

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
    both = sources.synthetic_folder(sources.Folder(tmp_path / "all"), "affine", seed=3, num_landmarks=4)
    alone = sources.synthetic_folder(sources.Folder(tmp_path / "one"), "affine", seed=3, num_landmarks=4)
    assert [s.name for s in both.samples] == ["a", "b"]
    assert both.misalignment == "affine" and not both.simulated and both.source == "data_dir"
    assert both.has_landmarks and both.has_ground_truth
    np.testing.assert_array_equal(
        both.samples[0].truth.affine.misalignment, alone.samples[0].truth.affine.misalignment
    )
    assert both.samples[0].pair.nir_points.shape == (4, 2)
    other_seed = sources.synthetic_folder(sources.Folder(tmp_path / "one"), "affine", seed=4, num_landmarks=4)
    assert not np.allclose(
        other_seed.samples[0].truth.affine.misalignment, alone.samples[0].truth.affine.misalignment
    )
    # The fixed image is the aligned NIR; the moving image is the misaligned VIS.
    aligned_nir = np.asarray(Image.open(tmp_path / "one" / "nir" / "a.png"), np.float32) / 255
    np.testing.assert_array_equal(alone.samples[0].pair.nir[..., 0], aligned_nir)
    assert alone.samples[0].moving_mask.dtype == bool


def test_synthetic_folder_leaves_out_excluded_pairs(tmp_path, rng):
    write_pairs(tmp_path, rng, ["a", "b", "c"])
    kept = sources.synthetic_folder(sources.Folder(tmp_path, exclude=("b",)), "affine")
    assert [sample.name for sample in kept.samples] == ["a", "c"]
    assert kept.details["exclude"] == ["b"]
    with pytest.raises(DataError, match="holds no pair named d"):
        sources.synthetic_folder(sources.Folder(tmp_path, exclude=("d",)), "affine")
    with pytest.raises(DataError, match="no pair left"):
        sources.synthetic_folder(sources.Folder(tmp_path, exclude=("a", "b", "c")), "affine")


def test_synthetic_folder_evaluates_only_the_named_pairs(tmp_path, rng):
    write_pairs(tmp_path, rng, ["a", "b", "c"])
    kept = sources.synthetic_folder(sources.Folder(tmp_path, exclude=("c",), only=("c", "a")), "affine")
    assert [sample.name for sample in kept.samples] == ["a"]
    assert kept.details["pairs"] == ["c", "a"]
    with pytest.raises(DataError, match=r"holds no pair named d \(--pairs\)"):
        sources.synthetic_folder(sources.Folder(tmp_path, only=("d",)), "affine")


def test_synthetic_folder_refuses_landmark_files(tmp_path, rng):
    pair = make_pair(rng)
    scipy.io.savemat(
        tmp_path / "x.mat",
        {"I_move": pair.vis, "I_fix": pair.nir[..., 0], "LMmove": [[1.0, 2.0]], "LMfix": [[1.0, 2.0]]},
    )
    with pytest.raises(DataError, match="--landmarks_dir"):
        sources.synthetic_folder(sources.Folder(tmp_path))


def test_an_image_too_small_for_landmarks_is_bad_input_naming_the_file(tmp_path, rng):
    write_pairs(tmp_path, rng, ["tiny"], shape=(8, 9))
    with pytest.raises(DataError, match="tiny.png"):
        sources.synthetic_folder(sources.Folder(tmp_path))


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


def test_known_affine_truth_is_opencvs_warp_of_the_vis_onto_the_nir(known_affine_dir):
    """The stored M is OpenCV's forward map: our true registration of the VIS must equal
    ``cv2.warpAffine(vis, M, (W, H))`` (up to OpenCV's 1/32-px interpolation table)."""
    dataset = sources.known_affine_folder(sources.Folder(known_affine_dir))
    assert dataset.source == "known_affine" and dataset.misalignment is None
    assert not dataset.simulated and dataset.has_landmarks and dataset.has_ground_truth
    assert [sample.name for sample in dataset.samples] == ["field/0009", "field/0027", "forest/0034"]
    assert dataset.categories == ["field", "forest"]
    for sample in dataset.samples:
        matrix = np.load(known_affine_dir / f"{sample.name}_nir.npy")
        np.testing.assert_array_equal(sample.truth.forward, matrix)
        vis = sample.pair.vis.astype(np.float64)
        registered, inside = warp_image(vis, sample.truth.registration_coordinates())
        expected = cv2.warpAffine(vis, matrix, (sample.pair.width, sample.pair.height))
        interior = cv2.erode(inside.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        difference = np.abs(registered - expected)[interior]
        assert difference.mean() < 2e-3 and difference.max() < 0.02, sample.name
        assert sample.moving_mask.all()


def test_known_affine_landmarks_are_the_grid_points_whose_true_source_is_on_the_vis(
    known_affine_dir,
):
    for sample in sources.known_affine_folder(sources.Folder(known_affine_dir)).samples:
        height, width = sample.pair.height, sample.pair.width
        rows, cols = np.meshgrid(np.linspace(0, height - 1, 9), np.linspace(0, width - 1, 9), indexing="ij")
        grid_xy = np.stack([cols.ravel(), rows.ravel()], axis=-1)
        backward = cv2.invertAffineTransform(np.load(known_affine_dir / f"{sample.name}_nir.npy"))
        source_xy = grid_xy @ backward[:, :2].T + backward[:, 2]
        kept = (
            (source_xy[:, 0] >= 0) & (source_xy[:, 0] <= width - 1)
            & (source_xy[:, 1] >= 0) & (source_xy[:, 1] <= height - 1)
        )
        assert 0 < kept.sum() < 81  # the warps move some corners off the image
        assert sample.landmark_frame == "moving"
        np.testing.assert_allclose(sample.pair.nir_points, grid_xy[kept][:, ::-1], atol=1e-9)
        np.testing.assert_allclose(sample.pair.vis_points, source_xy[kept][:, ::-1], atol=1e-9)


def test_known_affine_nir_stored_as_three_channels_reads_as_its_grey_image(known_affine_dir):
    stored = cv2.imread(str(known_affine_dir / "field" / "0027_nir.jpg"), cv2.IMREAD_UNCHANGED)
    assert stored.ndim == 3
    pair = sources.known_affine_folder(sources.Folder(known_affine_dir)).samples[1].pair
    np.testing.assert_array_equal(np.round(pair.nir[..., 0] * 255), stored[..., 0])


def test_a_matrix_that_takes_nothing_from_the_vis_is_bad_input(known_affine_dir, tmp_path):
    folder = tmp_path / "field"
    folder.mkdir()
    for name in ("0009_rgb.jpg", "0009_nir.jpg"):
        shutil.copy(known_affine_dir / "field" / name, folder / name)
    np.save(folder / "0009_nir.npy", np.array([[1.0, 0.0, 5000.0], [0.0, 1.0, 0.0]]))
    with pytest.raises(DataError, match="0009_nir.npy: the matrix takes none"):
        sources.known_affine_folder(sources.Folder(tmp_path))


def test_known_affine_pairs_are_not_misaligned_again_but_can_be_taken_as_they_are(known_affine_dir):
    assert sources.Folder(known_affine_dir).resolved_layout() == "known_affine"
    with pytest.raises(DataError, match="already misaligned"):
        sources.synthetic_folder(sources.Folder(known_affine_dir))
    as_they_are = sources.unaligned_folder(
        sources.Folder(known_affine_dir, layout="nirscene", exclude=("field/0027",))
    )
    assert [sample.name for sample in as_they_are.samples] == ["field/0009", "forest/0034"]
    assert not as_they_are.has_landmarks and not as_they_are.has_ground_truth


def test_unaligned_folder_takes_the_pairs_as_they_are(tmp_path, rng):
    write_pairs(tmp_path, rng, ["a", "b"])
    dataset = sources.unaligned_folder(sources.Folder(tmp_path))
    assert dataset.source == "data_dir" and dataset.misalignment is None and not dataset.simulated
    assert not dataset.has_landmarks and not dataset.has_ground_truth and dataset.categories == []
    stored = np.asarray(Image.open(tmp_path / "vis" / "b.png"), np.float32) / 255
    np.testing.assert_array_equal(dataset.samples[1].pair.vis, stored)
    assert "as they are" in dataset.title and dataset.details["layout"] == "pairs"
