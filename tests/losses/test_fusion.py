"""losses.fusion: image gradient, L_content (Eq. 7), Eq. 8 target and L_gradient, L_fus (Eq. 6)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

from losses.fusion import content_loss, fusion_loss, gradient_loss, gradient_target, image_gradient
from losses.weights import LossWeights

SPEC_1 = tf.TensorSpec([None, None, None, 1], tf.float32)
LAPLACIAN_KERNEL = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], np.float64)


def _random_mask(rng, shape, p_valid=0.8):
    return (rng.random(shape) < p_valid).astype(np.float32)


def _laplacian_reference(image):
    out = np.empty(image.shape, np.float64)
    for b in range(image.shape[0]):
        for c in range(image.shape[3]):
            out[b, ..., c] = ndimage.convolve(image[b, ..., c].astype(np.float64), LAPLACIAN_KERNEL, mode="nearest")
    return out


def _gradient_valid_reference(mask):
    """Pixels whose 4 neighbours and itself are valid (outside the image counts as valid)."""
    cross = ndimage.generate_binary_structure(2, 1)
    return np.stack([ndimage.binary_erosion(m[..., 0] > 0, structure=cross, border_value=1) for m in mask])


def _per_image_mean(values, valid):
    """Mean over each image's valid pixels, then over the batch (the losses' convention)."""
    return np.mean([values[b][valid[b]].mean() for b in range(values.shape[0])])


def _content_reference(fused, vis, nir, gamma, mask=None):
    valid = np.ones(fused.shape[:3], bool) if mask is None else mask[..., 0] > 0
    f, v, n = (x.astype(np.float64) for x in (fused, vis, nir))
    return (1 - gamma) * _per_image_mean(np.abs(f - v), valid) + gamma * _per_image_mean(np.abs(f - n), valid)


def _gradient_reference(fused, vis, nir, mask=None):
    ga, gb = _laplacian_reference(vis), _laplacian_reference(nir)
    target = np.sign(ga + gb) * np.maximum(np.abs(ga), np.abs(gb))  # the paper's formula
    valid = np.ones(fused.shape[:3], bool) if mask is None else _gradient_valid_reference(mask)
    return _per_image_mean((_laplacian_reference(fused) - target) ** 2, valid)


def _images(rng, shape=(2, 7, 8, 1)):
    return [rng.random(shape).astype(np.float32) for _ in range(3)]


def test_image_gradient_matches_scipy_convolve_nearest(rng):
    image = rng.random((2, 6, 7, 2)).astype(np.float32)
    np.testing.assert_allclose(image_gradient(image).numpy(), _laplacian_reference(image), atol=1e-5)


@pytest.mark.parametrize("use_mask", [False, True])
def test_content_loss_matches_numpy(rng, use_mask):
    fused, vis, nir = _images(rng)
    mask = _random_mask(rng, fused.shape) if use_mask else None
    np.testing.assert_allclose(
        content_loss(fused, vis, nir, gamma=0.6, mask=mask), _content_reference(fused, vis, nir, 0.6, mask), rtol=1e-5
    )


def test_content_loss_weights_nir_by_gamma(rng):
    fused, vis, nir = _images(rng)
    # gamma = 1 ignores the visible image entirely, gamma = 0 ignores the NIR image.
    np.testing.assert_allclose(content_loss(fused, vis, nir, gamma=1.0), np.abs(fused - nir).mean(), rtol=1e-5)
    np.testing.assert_allclose(content_loss(fused, vis, nir, gamma=0.0), np.abs(fused - vis).mean(), rtol=1e-5)


def test_gradient_target_is_the_signed_gradient_of_larger_magnitude(rng):
    a = rng.standard_normal((2, 5, 6, 1)).astype(np.float32)
    b = rng.standard_normal((2, 5, 6, 1)).astype(np.float32)
    # Force ties of both kinds and zeros.
    a[0, 0, :3, 0] = [0.5, -0.25, 0.0]
    b[0, 0, :3, 0] = [-0.5, -0.25, 0.0]
    target = gradient_target(a, b).numpy()
    paper = np.sign(a + b) * np.maximum(np.abs(a), np.abs(b))
    nonzero_sum = (a + b) != 0
    np.testing.assert_array_equal(target[nonzero_sum], paper[nonzero_sum])
    # Ties: opposite gradients give 0, equal ones give themselves; symmetric in (a, b).
    np.testing.assert_array_equal(target[0, 0, :3, 0], [0.0, -0.25, 0.0])
    np.testing.assert_array_equal(gradient_target(b, a).numpy(), target)


def test_no_gradient_flows_through_the_target(rng):
    fused, vis, nir = (tf.constant(x) for x in _images(rng))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([fused, vis, nir])
        target_sum = tf.reduce_sum(gradient_target(vis, nir))
        loss = gradient_loss(fused, vis, nir)
    assert tape.gradient(target_sum, [vis, nir]) == [None, None]
    assert tape.gradient(loss, [vis, nir]) == [None, None]
    fused_grad = tape.gradient(loss, fused).numpy()
    assert np.all(np.isfinite(fused_grad)) and np.any(fused_grad != 0)


@pytest.mark.parametrize("use_mask", [False, True])
def test_gradient_loss_matches_numpy(rng, use_mask):
    fused, vis, nir = _images(rng)
    mask = _random_mask(rng, fused.shape, p_valid=0.9) if use_mask else None
    np.testing.assert_allclose(
        gradient_loss(fused, vis, nir, mask=mask), _gradient_reference(fused, vis, nir, mask), rtol=1e-5
    )


def test_gradient_loss_is_zero_when_the_fused_image_has_the_target_gradients(rng):
    _, vis, _ = _images(rng)
    # A source with everywhere-smaller gradients: the target is vis's own gradient.
    flatter = (0.5 + 0.1 * (vis - 0.5)).astype(np.float32)
    np.testing.assert_allclose(gradient_loss(vis, vis, flatter), 0.0, atol=1e-12)


def test_gradient_loss_gradient_matches_finite_differences(rng):
    fused, vis, nir = (tf.constant(x, tf.float64) for x in _images(rng, (1, 4, 5, 1)))
    mask = tf.constant(_random_mask(rng, (1, 4, 5, 1), p_valid=0.9), tf.float64)
    theoretical, numerical = tf.test.compute_gradient(lambda f: gradient_loss(f, vis, nir, mask=mask), [fused])
    np.testing.assert_allclose(theoretical[0], numerical[0], atol=1e-6)


@pytest.mark.parametrize("use_mask", [False, True])
def test_fusion_loss_matches_numpy(rng, use_mask):
    fused, vis, nir = _images(rng)
    mask = _random_mask(rng, fused.shape, p_valid=0.9) if use_mask else None
    terms = fusion_loss(fused, vis, nir, weights=LossWeights(gamma=0.8, delta=10.0), mask=mask)
    content = _content_reference(fused, vis, nir, 0.8, mask)
    gradient = _gradient_reference(fused, vis, nir, mask)
    assert set(terms) == {"total", "content", "gradient"}
    np.testing.assert_allclose(terms["content"], content, rtol=1e-5)
    np.testing.assert_allclose(terms["gradient"], gradient, rtol=1e-5)
    np.testing.assert_allclose(terms["total"], content + 10.0 * gradient, rtol=1e-5)


def test_fusion_loss_ignores_masked_pixels(rng):
    images = _images(rng)
    mask = _random_mask(rng, images[0].shape, p_valid=0.9)
    changed = [np.where(mask > 0, x, rng.random(x.shape) * 3).astype(np.float32) for x in images]
    for name in ("content", "gradient"):
        np.testing.assert_allclose(
            fusion_loss(*changed, mask=mask)[name], fusion_loss(*images, mask=mask)[name], rtol=1e-6
        )
        assert not np.allclose(fusion_loss(*changed)[name], fusion_loss(*images)[name], rtol=1e-3)


def test_fusion_loss_works_in_tf_function_with_finite_gradients(rng):
    fused, vis, nir = (tf.constant(x) for x in _images(rng))
    mask = tf.constant(_random_mask(rng, fused.shape, p_valid=0.9))

    @tf.function(input_signature=[SPEC_1] * 4)
    def loss_and_grad(f, v, n, m):
        with tf.GradientTape() as tape:
            tape.watch(f)
            total = fusion_loss(f, v, n, mask=m)["total"]
        return total, tape.gradient(total, f)

    total, grad = loss_and_grad(fused, vis, nir, mask)
    np.testing.assert_allclose(total, fusion_loss(fused, vis, nir, mask=mask)["total"], rtol=1e-6)
    assert np.all(np.isfinite(grad.numpy())) and np.any(grad.numpy() != 0)
