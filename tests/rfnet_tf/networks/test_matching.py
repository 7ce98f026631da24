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
    mutual_matches,
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


def _index(dy: int, dx: int, radius: int) -> int:
    side = 2 * radius + 1
    return (dy + radius) * side + dx + radius


def test_the_mean_is_taken_around_the_peak_only():
    """Two equal neighbouring peaks at (0, 1) and (0, 2) give 1.5, whatever a weaker mode
    far away at (-2, -2) holds; the whole distribution's mean would be pulled to it."""
    radius = 2
    correlation = np.zeros((1, 5, 5, 25), np.float32)
    correlation[..., _index(0, 1, radius)] = 1.0
    correlation[..., _index(0, 2, radius)] = 1.0
    correlation[..., _index(-2, -2, radius)] = 0.9
    displacement, confidence = expected_displacement(tf.constant(correlation), 50.0, radius)
    # The centre cell sees every displacement on the grid.
    np.testing.assert_allclose(displacement.numpy()[0, 2, 2], [0.0, 1.5], atol=1e-5)
    weights = np.exp(50.0 * np.array([1.0, 1.0, 0.9] + [0.0] * 22))
    np.testing.assert_allclose(confidence.numpy()[0, 2, 2], 2 * weights[0] / weights.sum(), rtol=1e-5)


def test_a_border_cell_is_not_pulled_inwards():
    """At the top-left cell of a 4x4 grid the window is cut off above and to the left.
    With a peak at displacement 0 over a flat background, the displacement is the mean
    of the peak's on-grid 3x3 neighbourhood, under 40 % of the whole on-grid
    distribution's mean, which points inwards, (+, +)."""
    radius = 2
    correlation = np.full((1, 4, 4, 25), 0.5, np.float32)
    correlation[..., _index(0, 0, radius)] = 1.0
    sharpness = 3.0
    displacement, _ = expected_displacement(tf.constant(correlation), sharpness, radius)
    corner = displacement.numpy()[0, 0, 0]
    # The on-grid window of the corner: displacements 0..2 on each axis.
    offsets = np.array([(dy, dx) for dy in range(3) for dx in range(3)], np.float64)
    weights = np.exp(sharpness * np.where((offsets == 0).all(axis=1), 1.0, 0.5))
    whole_mean = (weights[:, None] * offsets).sum(axis=0) / weights.sum()
    near = (offsets <= 1).all(axis=1)
    local_mean = (weights[near, None] * offsets[near]).sum(axis=0) / weights[near].sum()
    np.testing.assert_allclose(corner, local_mean, atol=1e-5)
    assert np.all(whole_mean > 2.5 * local_mean), (whole_mean, local_mean)


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


@pytest.mark.parametrize(
    "robust_iterations,mutual_check,tolerance", [(10, True, 0.01), (10, False, 0.01), (0, True, 0.01), (0, False, None)]
)
def test_a_shift_of_whole_cells_is_found_as_a_translation_despite_the_unmatched_border(
    robust_iterations, mutual_check, tolerance
):
    """A (1, 2)-cell shift of 8-px cells in a 192x192 input is the backward translation
    (16, 8) px, (2 * 16 / 191, 2 * 8 / 191) normalised, to within 1 px at the corners.
    The 70 border cells (12 %) without a counterpart make confident random matches:
    the plain weighted fit is pulled into a contraction by 6 % (0.94) and misses; the
    Cauchy refits shed them, and so does the mutual check."""
    fixed, moving = _shifted_features((1, 2))
    affine = affine_from_matches(fixed, moving, tf.constant(2000.0), 3, 8, (192, 192), 1e-6,
                                 robust_iterations, mutual_check).numpy()[0]
    expected = np.array([[1.0, 0.0, 2 * 16 / 191], [0.0, 1.0, 2 * 8 / 191]])
    error = np.abs(affine - expected).max()
    if tolerance is None:
        assert error > 0.03
    else:
        assert error < tolerance


def test_mutual_matches_against_a_brute_force_loop():
    rng = np.random.default_rng(5)
    fixed = rng.normal(size=(2, 6, 7, 4)).astype(np.float32)
    moving = rng.normal(size=(2, 6, 7, 4)).astype(np.float32)
    radius = 2
    forward = local_correlation(tf.constant(fixed), tf.constant(moving), radius).numpy()
    backward = local_correlation(tf.constant(moving), tf.constant(fixed), radius).numpy()
    result = mutual_matches(tf.constant(forward), tf.constant(backward), radius).numpy()

    def best(a, b, batch, i, j):
        """The on-grid (dy, dx) maximising a[i, j] . b[i + dy, j + dx]."""
        candidates = [(float(a[batch, i, j] @ b[batch, i + dy, j + dx]), dy, dx)
                      for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)
                      if 0 <= i + dy < 6 and 0 <= j + dx < 7]
        _, dy, dx = max(candidates)
        return dy, dx

    expected = np.zeros((2, 6, 7), np.float32)
    for batch in range(2):
        for i in range(6):
            for j in range(7):
                dy, dx = best(fixed, moving, batch, i, j)
                back_y, back_x = best(moving, fixed, batch, i + dy, j + dx)
                expected[batch, i, j] = abs(back_y + dy) <= 1 and abs(back_x + dx) <= 1
    np.testing.assert_array_equal(result, expected)
    assert 0 < expected.mean() < 1


def test_the_robust_fit_equals_the_plain_fit_without_outliers():
    rng = np.random.default_rng(4)
    affine = _affine(-0.1, 0.9, (0.1, 0.0))
    source = rng.uniform(-1, 1, size=(2, 50, 2)).astype(np.float32)
    target = source @ affine[:, :2].T + affine[:, 2]
    weights = tf.constant(rng.uniform(0.1, 1, size=(2, 50)).astype(np.float32))
    robust = fit_affine_robust(tf.constant(source), tf.constant(target), weights, 0.0, 0.05, 3)
    np.testing.assert_allclose(robust.numpy(), np.broadcast_to(affine, (2, 2, 3)), atol=1e-4)
