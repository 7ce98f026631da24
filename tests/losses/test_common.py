"""losses.common: masked means, the valid-Laplacian mask, shape checks."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

from layers import laplacian
from losses.common import laplacian_valid_mask, masked_mean, matching_tensors


def _random_mask(rng, shape, p_valid=0.7):
    return (rng.random(shape) < p_valid).astype(np.float32)


def test_masked_mean_without_mask_is_the_plain_mean(rng):
    x = rng.random((2, 5, 6, 3)).astype(np.float32)
    np.testing.assert_allclose(masked_mean(x), x.mean(), rtol=1e-6)
    np.testing.assert_allclose(masked_mean(x, axis=[1, 2, 3]), x.mean(axis=(1, 2, 3)), rtol=1e-6)


def test_masked_mean_counts_each_valid_pixel_once_per_channel(rng):
    x = rng.random((2, 5, 6, 3)).astype(np.float32)
    mask = _random_mask(rng, (2, 5, 6, 1))
    valid = mask[..., 0].astype(bool)
    per_image = [x[b][valid[b]].mean() for b in range(2)]
    np.testing.assert_allclose(masked_mean(x, mask, axis=[1, 2, 3]), per_image, rtol=1e-6)
    # The loss convention: each image's masked mean, then the batch mean.
    np.testing.assert_allclose(masked_mean(x, mask), np.mean(per_image), rtol=1e-6)


def test_masked_mean_of_a_split_batch_averages_to_the_whole(rng):
    """Two replicas holding half a batch each average to the loss of the whole batch."""
    x = rng.random((4, 5, 6, 1)).astype(np.float32)
    mask = _random_mask(rng, (4, 5, 6, 1))
    halves = [masked_mean(x[:2], mask[:2]), masked_mean(x[2:], mask[2:])]
    np.testing.assert_allclose(np.mean(halves), masked_mean(x, mask), rtol=1e-6)


def test_masked_mean_of_an_empty_mask_is_zero(rng):
    x = rng.random((1, 4, 4, 1)).astype(np.float32)
    assert float(masked_mean(x, np.zeros_like(x))) == 0.0


def test_laplacian_valid_mask_is_the_cross_erosion(rng):
    mask = _random_mask(rng, (3, 7, 8, 1), p_valid=0.8)
    cross = ndimage.generate_binary_structure(2, 1)
    # Outside the image counts as valid: replicate padding repeats the pixel itself.
    expected = np.stack(
        [ndimage.binary_erosion(m[..., 0], structure=cross, border_value=1) for m in mask]
    )[..., None].astype(np.float32)
    np.testing.assert_array_equal(laplacian_valid_mask(mask).numpy(), expected)


def test_laplacian_on_the_valid_mask_ignores_invalid_pixels(rng):
    image = rng.random((2, 6, 7, 1)).astype(np.float32)
    mask = _random_mask(rng, (2, 6, 7, 1), p_valid=0.85)
    changed = np.where(mask > 0, image, rng.random(image.shape).astype(np.float32) * 10.0)
    valid = laplacian_valid_mask(mask).numpy() > 0
    assert valid.any()
    np.testing.assert_allclose(
        laplacian(image).numpy()[valid], laplacian(changed).numpy()[valid], rtol=1e-6, atol=1e-6
    )


def test_matching_tensors_rejects_shapes_that_would_broadcast():
    with pytest.raises(ValueError):
        matching_tensors(tf.zeros((1, 4, 4, 1)), tf.zeros((1, 4, 4, 3)))


def test_matching_tensors_casts_to_the_reference_dtype_and_accepts_unknown_dims():
    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 1], tf.float64)])
    def cast(x):
        reference, other = matching_tensors(x, tf.ones((2, 3, 3, 1), tf.float32))
        return other

    assert cast(tf.zeros((2, 3, 3, 1), tf.float64)).dtype == tf.float64
