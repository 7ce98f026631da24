"""losses.deformation: bilateral smoothness (Eq. 10) and L_defor (Eq. 9), whose Eq. 10
sees the field in normalised units."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

from losses.deformation import bilateral_smoothness, deformation_loss
from losses.weights import LossWeights

LAPLACIAN_KERNEL = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], np.float64)
# Neighbour offsets (dy, dx): right, down, down-right, down-left.
OFFSETS = [(0, 1), (1, 0), (1, 1), (1, -1)]


def _random_mask(rng, shape, p_valid=0.85):
    return (rng.random(shape) < p_valid).astype(np.float32)


def _smoothness_reference(flow, fused, alpha):
    """Eq. 10 by loops: per direction the mean over in-image pairs, summed."""
    batch, height, width, _ = flow.shape
    total = 0.0
    for oy, ox in OFFSETS:
        terms = []
        for b in range(batch):
            for y in range(height):
                for x in range(width):
                    ny, nx = y + oy, x + ox
                    if not (0 <= ny < height and 0 <= nx < width):
                        continue
                    weight = math.exp(-alpha * abs(float(fused[b, y, x, 0]) - float(fused[b, ny, nx, 0])))
                    step = abs(float(flow[b, y, x, 0]) - float(flow[b, ny, nx, 0])) + abs(
                        float(flow[b, y, x, 1]) - float(flow[b, ny, nx, 1])
                    )
                    terms.append(weight * step)
        total += sum(terms) / len(terms)
    return total


def _laplacian_reference(image):
    return np.stack([ndimage.convolve(im[..., 0].astype(np.float64), LAPLACIAN_KERNEL, mode="nearest") for im in image])[
        ..., None
    ]


def _normalised(flow):
    """``(dy, dx)`` px -> ``(2 dy / (H - 1), 2 dx / (W - 1))``, the affines' units."""
    _, height, width, _ = flow.shape
    return flow * np.array([2.0 / (height - 1), 2.0 / (width - 1)])


def _deformation_reference(fused, nir, flow, lambda_smooth, alpha, mask=None):
    if mask is None:
        valid = np.ones(fused.shape, bool)
    else:
        cross = ndimage.generate_binary_structure(2, 1)
        valid = np.stack([ndimage.binary_erosion(m[..., 0] > 0, structure=cross, border_value=1) for m in mask])[..., None]
    grad_f, grad_y = _laplacian_reference(fused), _laplacian_reference(nir)
    # Each image's mean over its valid pixels, then the batch mean.
    consistency = np.mean([np.abs(grad_f - grad_y)[b][valid[b]].mean() for b in range(len(fused))])
    sparsity = np.mean([np.abs(grad_f)[b][valid[b]].mean() for b in range(len(fused))])
    smooth = _smoothness_reference(_normalised(flow), fused, alpha)
    return consistency, sparsity, smooth, consistency + sparsity + lambda_smooth * smooth


def _inputs(rng, shape=(2, 5, 6)):
    fused = rng.random((*shape, 1)).astype(np.float32)
    nir = rng.random((*shape, 1)).astype(np.float32)
    flow = (3.0 * rng.standard_normal((*shape, 2))).astype(np.float32)
    return fused, nir, flow


@pytest.mark.parametrize("alpha", [0.5, 2.0])
def test_smoothness_matches_loops(rng, alpha):
    fused, _, flow = _inputs(rng)
    np.testing.assert_allclose(bilateral_smoothness(flow, fused, alpha=alpha), _smoothness_reference(flow, fused, alpha), rtol=1e-5)


def test_smoothness_of_a_constant_field_is_zero(rng):
    fused, _, _ = _inputs(rng)
    flow = np.broadcast_to(np.array([2.5, -1.25], np.float32), (2, 5, 6, 2))
    assert float(bilateral_smoothness(flow, fused)) == 0.0


def test_smoothness_hand_computed_3x3():
    # Fused image: dark rows 0-1, bright row 2. Flow: zero except (dy, dx) = (-2, 1) at
    # pixel (y=1, x=2), so every pair touching that pixel has |dphi|_1 = 2 + 1 = 3 and
    # all other pairs have 0. Weights: exp(-0.5 * |I_f(p) - I_f(p_n)|) = 1 within rows
    # 0-1 and exp(-0.5) = e between rows 1 and 2.
    fused = np.array([[0, 0, 0], [0, 0, 0], [1, 1, 1]], np.float32)[None, ..., None]
    flow = np.zeros((1, 3, 3, 2), np.float32)
    flow[0, 1, 2] = [-2.0, 1.0]
    e = math.exp(-0.5)
    # right      (6 pairs): (1,1)-(1,2): weight 1                       -> 3 * 1 / 6
    # down       (6 pairs): (0,2)-(1,2): weight 1; (1,2)-(2,2): weight e -> 3 * (1 + e) / 6
    # down-right (4 pairs): (0,1)-(1,2): weight 1                        -> 3 * 1 / 4
    # down-left  (4 pairs): (1,2)-(2,1): weight e                        -> 3 * e / 4
    # sum = 3 * (1/6 + 1/6 + 1/4) + 3 * e * (1/6 + 1/4) = 7/4 + (5/4) e = 2.508163...
    expected = 3 * (1 / 6 + (1 + e) / 6 + 1 / 4 + e / 4)
    np.testing.assert_allclose(expected, 7 / 4 + 5 / 4 * e, rtol=1e-12)
    np.testing.assert_allclose(bilateral_smoothness(flow, fused, alpha=0.5), expected, rtol=1e-6)


def test_smoothness_weights_carry_no_gradient_but_the_flow_does(rng):
    fused, _, flow = (tf.constant(x) for x in _inputs(rng))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([fused, flow])
        smooth = bilateral_smoothness(flow, fused)
    assert tape.gradient(smooth, fused) is None
    grad = tape.gradient(smooth, flow).numpy()
    assert np.all(np.isfinite(grad)) and np.any(grad != 0)


@pytest.mark.parametrize("use_mask", [False, True])
def test_deformation_loss_matches_numpy(rng, use_mask):
    fused, nir, flow = _inputs(rng)
    mask = _random_mask(rng, fused.shape) if use_mask else None
    terms = deformation_loss(fused, nir, flow, weights=LossWeights(lambda_smooth=0.3, alpha=1.0), mask=mask)
    consistency, sparsity, smooth, total = _deformation_reference(fused, nir, flow, 0.3, 1.0, mask)
    assert set(terms) == {"total", "consistency", "sparsity", "smooth"}
    np.testing.assert_allclose(terms["consistency"], consistency, rtol=1e-5)
    np.testing.assert_allclose(terms["sparsity"], sparsity, rtol=1e-5)
    np.testing.assert_allclose(terms["smooth"], smooth, rtol=1e-5)
    np.testing.assert_allclose(terms["total"], total, rtol=1e-5)


def test_deformation_smoothness_measures_the_field_in_normalised_units():
    """A field that grows by 1 px per row (only dy) and one that grows by 1 px per
    column (only dx), on a uniform image of 5 x 9 px (bilateral weights 1): in pixels
    both have the same smoothness, 3 (three of the four directions step by 1 px); in
    normalised units dy counts 2 / (H - 1) = 1/2 per px and dx 2 / (W - 1) = 1/4."""
    height, width = 5, 9
    fused = np.full((1, height, width, 1), 0.5, np.float32)
    nir = np.zeros_like(fused)
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    zeros = np.zeros_like(rows)
    along_y = np.stack([rows, zeros], axis=-1)[None]
    along_x = np.stack([zeros, cols], axis=-1)[None]
    for field in (along_y, along_x):
        np.testing.assert_allclose(bilateral_smoothness(field, fused), 3.0, rtol=1e-6)
    np.testing.assert_allclose(deformation_loss(fused, nir, along_y)["smooth"], 3.0 / 2.0, rtol=1e-6)
    np.testing.assert_allclose(deformation_loss(fused, nir, along_x)["smooth"], 3.0 / 4.0, rtol=1e-6)


def test_deformation_gradient_terms_ignore_masked_pixels(rng):
    fused, nir, flow = _inputs(rng)
    mask = _random_mask(rng, fused.shape)
    fused_changed, nir_changed = (np.where(mask > 0, x, rng.random(x.shape) * 4).astype(np.float32) for x in (fused, nir))
    for name in ("consistency", "sparsity"):
        np.testing.assert_allclose(
            deformation_loss(fused_changed, nir_changed, flow, mask=mask)[name],
            deformation_loss(fused, nir, flow, mask=mask)[name],
            rtol=1e-6,
        )


def test_deformation_loss_works_in_tf_function_with_finite_gradients(rng):
    fused, nir, flow = (tf.constant(x) for x in _inputs(rng))
    mask = tf.constant(_random_mask(rng, fused.shape))
    image_spec = tf.TensorSpec([None, None, None, 1], tf.float32)

    @tf.function(input_signature=[image_spec, image_spec, tf.TensorSpec([None, None, None, 2], tf.float32), image_spec])
    def loss_and_grads(f, n, phi, m):
        with tf.GradientTape() as tape:
            tape.watch([f, phi])
            total = deformation_loss(f, n, phi, mask=m)["total"]
        return total, tape.gradient(total, [f, phi])

    total, grads = loss_and_grads(fused, nir, flow, mask)
    np.testing.assert_allclose(total, deformation_loss(fused, nir, flow, mask=mask)["total"], rtol=1e-6)
    for grad in grads:
        assert np.all(np.isfinite(grad.numpy())) and np.any(grad.numpy() != 0)
