"""laplacian against scipy.ndimage.convolve with replicate ("nearest") borders."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

from layers import laplacian

STENCIL = np.array([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


def _scipy_laplacian(image: np.ndarray) -> np.ndarray:
    out = np.empty(image.shape, np.float64)
    for b in range(image.shape[0]):
        for c in range(image.shape[-1]):
            out[b, ..., c] = ndimage.convolve(image[b, ..., c].astype(np.float64), STENCIL, mode="nearest")
    return out


@pytest.mark.parametrize("shape", [(2, 7, 9, 3), (1, 2, 5, 1), (1, 1, 1, 2)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_scipy_convolve_nearest(rng, shape, dtype):
    image = rng.uniform(0.0, 1.0, size=shape).astype(dtype)
    out = laplacian(tf.constant(image))
    assert out.dtype == tf.as_dtype(dtype)
    np.testing.assert_allclose(out.numpy(), _scipy_laplacian(image), atol=1e-5, rtol=0)


def test_constant_and_linear_images_have_no_border_edges():
    """Replicate padding: a constant image gives 0 everywhere (zero padding would
    put edges along the border); a linear ramp gives 0 inside."""
    constant = np.full((1, 5, 6, 1), 0.7, np.float32)
    np.testing.assert_allclose(laplacian(constant).numpy(), 0.0, atol=1e-6)
    ys, xs = np.meshgrid(np.arange(5), np.arange(6), indexing="ij")
    ramp = (0.1 * ys + 0.05 * xs).astype(np.float32)[None, :, :, None]
    np.testing.assert_allclose(laplacian(ramp).numpy()[:, 1:-1, 1:-1], 0.0, atol=1e-6)


def test_dynamic_shapes_in_tf_function(rng):
    run = tf.function(laplacian, input_signature=[tf.TensorSpec([None, None, None, None], tf.float32)])
    for shape in [(1, 4, 6, 2), (3, 7, 3, 1)]:
        image = rng.uniform(0.0, 1.0, size=shape).astype(np.float32)
        np.testing.assert_allclose(run(image).numpy(), _scipy_laplacian(image), atol=1e-5, rtol=0)
    assert run.experimental_get_tracing_count() == 1
