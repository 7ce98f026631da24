"""Demo set: scikit-image photographs, simulated NIR, seeded misalignment with landmarks."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage
import skimage.data

from rfnet_tf.data.demo import DEMO_IMAGES, demo_misaligned, demo_pairs, simulate_nir


def test_simulated_nir_of_known_colours():
    colours = np.array(
        [[0.5, 0.5, 0.5], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.2, 0.6, 0.1]]
    )
    nir = simulate_nir(colours[None], noise_std=0.0)[0, :, 0]
    # 0.6 R + 0.3 G + 0.1 B + 0.6 clip(2G - R - B) - 0.4 clip(B - max(R, G)), clipped, ** 0.8.
    expected = np.array([0.5, 0.9, 0.0, 0.6, min(1.0, 0.12 + 0.18 + 0.01 + 0.6 * 0.9)]) ** 0.8
    np.testing.assert_allclose(nir, expected, atol=1e-6)
    # Foliage green is brighter in the simulated NIR than an equally bright grey.
    assert (
        nir[4]
        > simulate_nir(np.full((1, 1, 3), 0.2 * 0.6 + 0.6 * 0.3 + 0.1 * 0.1), noise_std=0.0).item()
    )


def test_demo_pairs():
    pairs = demo_pairs(seed=0)
    assert [pair.name for pair in pairs] == list(DEMO_IMAGES)
    for pair in pairs:
        photo = getattr(skimage.data, pair.name)()
        assert pair.vis.shape == photo.shape and pair.vis.dtype == np.float32
        np.testing.assert_array_equal(pair.vis, photo.astype(np.float32) / np.float32(255))
        assert pair.nir.shape == (*photo.shape[:2], 1) and pair.nir.dtype == np.float32
        assert pair.nir.min() >= 0.0 and pair.nir.max() <= 1.0 and pair.nir.std() > 0.05
        assert not pair.has_landmarks and pair.vis_path is None
        noiseless = simulate_nir(pair.vis, noise_std=0.0)
        assert 0.005 < np.abs(pair.nir - noiseless).mean() < 0.02  # mild noise, std 0.01
    again, other = demo_pairs(seed=0, names=("coffee",)), demo_pairs(seed=1, names=("coffee",))
    np.testing.assert_array_equal(again[0].nir, pairs[1].nir)
    assert not np.array_equal(other[0].nir, pairs[1].nir)


def bilinear(image: np.ndarray, points: np.ndarray) -> np.ndarray:
    return np.stack(
        [
            scipy.ndimage.map_coordinates(image[..., c], points.T, order=1)
            for c in range(image.shape[-1])
        ],
        axis=-1,
    )


@pytest.mark.parametrize("kind, names", [("affine", DEMO_IMAGES), ("local", ("chelsea",))])
def test_demo_misaligned_landmarks_follow_the_ground_truth(kind, names):
    misaligned = demo_misaligned(seed=0, kind=kind, names=names)
    assert [m.pair.name for m in misaligned] == list(names)
    for item in misaligned:
        pair = item.pair
        assert pair.has_landmarks and pair.vis_points.shape == pair.nir_points.shape == (5, 2)
        assert pair.vis.shape == item.aligned_vis.shape and pair.nir.shape == (
            *pair.vis.shape[:2],
            1,
        )
        assert (item.affine is None) == (kind == "local") and (item.field is None) == (
            kind == "affine"
        )
        coords = item.registration_coordinates()
        fixed = pair.nir_points.astype(int)
        np.testing.assert_allclose(coords[fixed[:, 0], fixed[:, 1]], pair.vis_points, atol=1e-3)
        # The moving image shows at the moving landmarks what the aligned VIS shows at the
        # fixed ones.
        difference = bilinear(pair.vis, pair.vis_points) - bilinear(
            item.aligned_vis, pair.nir_points
        )
        assert np.abs(difference).mean() < 0.05
    again = demo_misaligned(seed=0, kind=kind, names=names[:1])
    np.testing.assert_array_equal(again[0].pair.vis, misaligned[0].pair.vis)
    np.testing.assert_array_equal(again[0].pair.vis_points, misaligned[0].pair.vis_points)
