"""The matching head's maths against numpy brute force and analytic cases."""

import numpy as np
import pytest
import tensorflow as tf

from rfnet_tf.networks.matching import (
    affine_from_matches,
    cell_centres,
    displacement_offsets,
    expected_displacement,
    fit_affine,
    fit_affine_robust,
    local_correlation,
)


def test_offsets_are_row_major_over_the_window():
    offsets = displacement_offsets(1)
    expected = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    np.testing.assert_array_equal(offsets, np.array(expected, np.float32))


@pytest.mark.parametrize("radius", [1, 2])
def test_local_correlation_matches_a_brute_force_loop(radius):
    rng = np.random.default_rng(0)
    fixed = rng.normal(size=(2, 5, 7, 3)).astype(np.float32)
    moving = rng.normal(size=(2, 5, 7, 3)).astype(np.float32)
    result = local_correlation(tf.constant(fixed), tf.constant(moving), radius).numpy()
    expected = np.zeros((2, 5, 7, (2 * radius + 1) ** 2), np.float32)
    for k, (dy, dx) in enumerate(displacement_offsets(radius).astype(int)):
        for i in range(5):
            for j in range(7):
                if 0 <= i + dy < 5 and 0 <= j + dx < 7:
                    expected[:, i, j, k] = (fixed[:, i, j] * moving[:, i + dy, j + dx]).mean(-1)
    np.testing.assert_allclose(result, expected, atol=1e-6)


def test_a_sharp_distribution_gives_its_peak_and_full_confidence():
    radius = 2
    correlation = np.zeros((1, 5, 5, 25), np.float32)
    peak = 25 // 2 + 1 * 5 - 2  # (dy, dx) = (1, -2), row-major
    correlation[..., peak] = 1.0
    displacement, confidence = expected_displacement(tf.constant(correlation), 1e4, radius)
    # Cells whose peak leaves the grid have no valid peak: check the inner ones.
    np.testing.assert_allclose(displacement.numpy()[0, 1:4, 2:5], np.broadcast_to([1.0, -2.0], (3, 3, 2)),
                               atol=1e-5)
    np.testing.assert_allclose(confidence.numpy()[0, 1:4, 2:5], 1.0, atol=1e-5)


def test_a_flat_distribution_averages_only_the_displacements_that_stay_on_the_grid():
    """At the top-left cell of a 4x4 grid with radius 2, the on-grid displacements are
    0..2 on each axis: their mean is (1, 1), and the confidence 1/9."""
    correlation = tf.zeros((1, 4, 4, 25))
    displacement, confidence = expected_displacement(correlation, 10.0, 2)
    np.testing.assert_allclose(displacement.numpy()[0, 0, 0], [1.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(confidence.numpy()[0, 0, 0], 1 / 9, atol=1e-6)
    # The centre-most cells see a symmetric window (-1..2 on a 4-grid is not; 5-grid is).
    displacement, _ = expected_displacement(tf.zeros((1, 5, 5, 25)), 10.0, 2)
    np.testing.assert_allclose(displacement.numpy()[0, 2, 2], [0.0, 0.0], atol=1e-6)


def test_cell_centres_in_normalised_units():
    centres = cell_centres(3, 4, 8, 24, 32).numpy()
    y = 8 * np.arange(3) + 3.5
    x = 8 * np.arange(4) + 3.5
    np.testing.assert_allclose(centres[..., 0], np.broadcast_to((2 * y / 23 - 1)[:, None], (3, 4)), atol=1e-6)
    np.testing.assert_allclose(centres[..., 1], np.broadcast_to(2 * x / 31 - 1, (3, 4)), atol=1e-6)


def _affine(rotation: float, scale: float, shift) -> np.ndarray:
    c, s = scale * np.cos(rotation), scale * np.sin(rotation)
    return np.array([[c, -s, shift[0]], [s, c, shift[1]]], np.float32)


def test_fit_recovers_an_exact_affine_and_ignores_zero_weight_outliers():
    rng = np.random.default_rng(1)
    affine = _affine(0.2, 1.1, (0.05, -0.1))
    source = rng.uniform(-1, 1, size=(1, 40, 2)).astype(np.float32)
    target = source @ affine[:, :2].T + affine[:, 2]
    weights = np.ones((1, 40), np.float32)
    target[0, :5] += 3.0  # outliers
    weights[0, :5] = 0.0
    fitted = fit_affine(tf.constant(source), tf.constant(target), tf.constant(weights), 0.0)
    np.testing.assert_allclose(fitted.numpy()[0], affine, atol=1e-4)


def test_the_ridge_pulls_towards_the_identity():
    rng = np.random.default_rng(2)
    source = rng.uniform(-1, 1, size=(1, 30, 2)).astype(np.float32)
    target = source + 0.3
    weights = tf.ones((1, 30))
    loose = fit_affine(tf.constant(source), tf.constant(target), weights, 0.0).numpy()[0]
    tight = fit_affine(tf.constant(source), tf.constant(target), weights, 1e6).numpy()[0]
    np.testing.assert_allclose(loose[:, 2], [0.3, 0.3], atol=1e-4)
    np.testing.assert_allclose(tight, [[1, 0, 0], [0, 1, 0]], atol=1e-4)


def _shifted_features(shift, size: int = 24, channels: int = 32):
    """Random features (every cell distinct) and a copy shifted by ``shift`` whole
    cells: fixed cell ``p`` is moving cell ``p + shift``; the fixed cells whose
    counterpart would leave the grid get features of their own, which match nothing."""
    rng = np.random.default_rng(3)
    dy, dx = shift
    moving = rng.normal(size=(1, size, size, channels)).astype(np.float32)
    fixed = rng.normal(size=moving.shape).astype(np.float32)
    fixed[:, :size - dy, :size - dx] = moving[:, dy:, dx:]
    return tf.constant(fixed), tf.constant(moving)


@pytest.mark.parametrize("robust_iterations,tolerance", [(3, 0.01), (0, None)])
def test_a_shift_of_whole_cells_is_found_as_a_translation_despite_the_unmatched_border(
    robust_iterations, tolerance
):
    """A (1, 2)-cell shift of 8-px cells in a 192x192 input is the backward translation
    (16, 8) px, (2 * 16 / 191, 2 * 8 / 191) normalised, to within 1 px at the corners.
    The 70 border cells (12 %) without a counterpart make confident random matches:
    the plain weighted fit is pulled into a contraction by 6 % (0.94) and misses; the
    Cauchy refits shed them."""
    fixed, moving = _shifted_features((1, 2))
    affine = affine_from_matches(fixed, moving, tf.constant(2000.0), 3, 8, (192, 192), 1e-6,
                                 robust_iterations).numpy()[0]
    expected = np.array([[1.0, 0.0, 2 * 16 / 191], [0.0, 1.0, 2 * 8 / 191]])
    error = np.abs(affine - expected).max()
    if tolerance is None:
        assert error > 0.03
    else:
        assert error < tolerance


def test_the_robust_fit_equals_the_plain_fit_without_outliers():
    rng = np.random.default_rng(4)
    affine = _affine(-0.1, 0.9, (0.1, 0.0))
    source = rng.uniform(-1, 1, size=(2, 50, 2)).astype(np.float32)
    target = source @ affine[:, :2].T + affine[:, 2]
    weights = tf.constant(rng.uniform(0.1, 1, size=(2, 50)).astype(np.float32))
    robust = fit_affine_robust(tf.constant(source), tf.constant(target), weights, 0.0, 0.05, 3)
    np.testing.assert_allclose(robust.numpy(), np.broadcast_to(affine, (2, 2, 3)), atol=1e-4)
