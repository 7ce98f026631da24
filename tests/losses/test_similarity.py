"""losses.similarity: the NCC of gradient magnitudes and its mask, against numpy."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from losses.similarity import fully_valid, gradient_magnitude, gradient_ncc


def _gradient_magnitude_reference(image):
    padded = np.pad(image.astype(np.float64), 1, mode="symmetric")
    d_y = 0.5 * (padded[2:, 1:-1] - padded[:-2, 1:-1])
    d_x = 0.5 * (padded[1:-1, 2:] - padded[1:-1, :-2])
    return np.sqrt(d_y**2 + d_x**2 + 1e-8)


def _images(seed, shape=(2, 14, 17, 1)):
    rng = np.random.default_rng(seed)
    s = rng.random(shape).astype(np.float32)
    g = (0.6 * s + 0.4 * rng.random(shape)).astype(np.float32)
    mask = np.ones(shape, np.float32)
    mask[0, :, :4] = 0.0
    mask[-1, 9:, 11:] = 0.0
    return s, g, mask


@pytest.mark.parametrize("window", [1, 3, 5])
def test_fully_valid_against_brute_force(window):
    _, _, mask = _images(0)
    half = window // 2
    padded = np.pad(mask[..., 0], [(0, 0), (half, half), (half, half)])
    expected = np.ones(mask.shape[:3], np.float32)
    for dy in range(window):
        for dx in range(window):
            expected = np.minimum(expected, padded[:, dy : dy + mask.shape[1], dx : dx + mask.shape[2]])
    np.testing.assert_array_equal(fully_valid(tf.constant(mask), window).numpy()[..., 0], expected)


def test_gradient_magnitude_against_numpy():
    s, _, _ = _images(3)
    np.testing.assert_allclose(
        gradient_magnitude(s).numpy()[..., 0],
        np.stack([_gradient_magnitude_reference(image[..., 0]) for image in s]),
        atol=1e-6,
    )


def test_gradient_ncc_is_ncc_of_magnitudes_over_the_eroded_mask():
    s, g, mask = _images(4)
    values = []
    for b in range(s.shape[0]):
        eroded = np.ones(mask.shape[1:3], bool)
        padded = np.pad(mask[b, ..., 0], 1)
        for dy in range(3):
            for dx in range(3):
                eroded &= padded[dy : dy + mask.shape[1], dx : dx + mask.shape[2]] > 0
        a = _gradient_magnitude_reference(s[b, ..., 0])[eroded]
        c = _gradient_magnitude_reference(g[b, ..., 0])[eroded]
        a, c = a - a.mean(), c - c.mean()
        values.append(np.mean(a * c) / (np.sqrt(np.mean(a * a) + 1e-5) * np.sqrt(np.mean(c * c) + 1e-5)))
    np.testing.assert_allclose(gradient_ncc(s, g, mask).numpy(), values, atol=1e-5)


def test_gradient_ncc_does_not_see_the_sign_of_the_contrast():
    s, g, mask = _images(5)
    np.testing.assert_allclose(
        gradient_ncc(1.0 - s, g, mask).numpy(), gradient_ncc(s, g, mask).numpy(), atol=1e-6
    )


def test_gradient_ncc_peaks_at_the_true_shift_of_a_textured_image():
    rng = np.random.default_rng(6)
    scene = tf.image.resize(rng.random((1, 12, 12, 1)).astype(np.float32), (48, 48)).numpy()
    fixed = scene[:, 8:40, 8:40]
    scores = {}
    for shift in range(-3, 4):
        moving = scene[:, 8 + shift : 40 + shift, 8:40]
        scores[shift] = float(gradient_ncc(moving, fixed)[0])
    assert max(scores, key=scores.get) == 0
