"""resample, identity_grid, affine_grid, normalised_flow, warp_affine, warp_flow and
SpatialTransformer against scipy.ndimage, analytic fields, slicing and finite differences."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

from layers import (
    SpatialTransformer,
    affine_grid,
    identity_grid,
    normalised_flow,
    resample,
    warp_affine,
    warp_flow,
)


def _random_image(rng, batch=2, height=7, width=9, channels=3, dtype=np.float32):
    return rng.uniform(0.0, 1.0, size=(batch, height, width, channels)).astype(dtype)


def _resample_np(image, coords, padding_mode="zeros"):
    sampled, mask = resample(image, coords, padding_mode)
    return sampled.numpy(), mask.numpy()


def _pixel_affine(theta: np.ndarray, height: int, width: int):
    """``(matrix (2, 2), offset (2,))`` of the backward map in pixel ``(y, x)`` order.

    The normalised convention is ``n = N @ [x, y, 1]`` with
    ``N = [[2/(W-1), 0, -1], [0, 2/(H-1), -1], [0, 0, 1]]`` and the input point is
    ``N^-1 @ [[theta], [0, 0, 1]] @ N @ [x, y, 1]``; swapping x and y gives scipy's
    ``(row, col)`` order.
    """
    normalise = np.array([[2.0 / (width - 1), 0.0, -1.0], [0.0, 2.0 / (height - 1), -1.0], [0, 0, 1]])
    full = np.vstack([theta, [0.0, 0.0, 1.0]])
    xy_map = np.linalg.inv(normalise) @ full @ normalise
    swap = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    yx_map = swap @ xy_map @ swap
    return yx_map[:2, :2], yx_map[:2, 2]


def _affine_source_coords(theta: np.ndarray, height: int, width: int) -> np.ndarray:
    """``(H, W, 2)`` pixel ``(y, x)`` sampled by each output pixel, from ``_pixel_affine``."""
    matrix, offset = _pixel_affine(theta, height, width)
    ys, xs = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    return np.einsum("ij,hwj->hwi", matrix, np.stack([ys, xs], -1)) + offset


def _rotation_shift(angle_deg, scale, shift_u, shift_v):
    a = np.deg2rad(angle_deg)
    return np.array(
        [[scale * np.cos(a), -scale * np.sin(a), shift_u], [scale * np.sin(a), scale * np.cos(a), shift_v]]
    )


# ----------------------------------------------------------------------------- resample


def test_matches_scipy_map_coordinates_in_bounds(rng):
    image = _random_image(rng, batch=2, height=8, width=11, channels=3)
    coords = np.stack(
        [rng.uniform(0.0, 7.0, size=(2, 5, 6)), rng.uniform(0.0, 10.0, size=(2, 5, 6))], axis=-1
    ).astype(np.float32)
    sampled, mask = _resample_np(image, coords)
    assert sampled.shape == (2, 5, 6, 3) and mask.shape == (2, 5, 6, 1)
    for b in range(2):
        for c in range(3):
            expected = ndimage.map_coordinates(
                image[b, :, :, c].astype(np.float64),
                [coords[b, ..., 0], coords[b, ..., 1]],
                order=1,
                mode="nearest",
            )
            np.testing.assert_allclose(sampled[b, ..., c], expected, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(mask, 1.0)


@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
def test_linear_field_is_reproduced_exactly(rng, padding_mode):
    height, width = 6, 10
    ys, xs = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    a, b, c = 0.3, -0.07, 0.045
    image = (a + b * ys + c * xs).astype(np.float32)[None, :, :, None]
    coords = np.stack(
        [rng.uniform(0.0, height - 1, size=(1, 4, 7)), rng.uniform(0.0, width - 1, size=(1, 4, 7))],
        axis=-1,
    ).astype(np.float32)
    sampled, _ = _resample_np(image, coords, padding_mode)
    expected = a + b * coords[..., 0] + c * coords[..., 1]
    np.testing.assert_allclose(sampled[..., 0], expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
def test_identity_grid_returns_the_image(rng, padding_mode):
    image = _random_image(rng, batch=2, height=5, width=8, channels=2)
    grid = identity_grid(2, 5, 8)
    ys, xs = np.meshgrid(np.arange(5), np.arange(8), indexing="ij")
    np.testing.assert_array_equal(grid.numpy(), np.broadcast_to(np.stack([ys, xs], -1), (2, 5, 8, 2)))
    sampled, mask = _resample_np(image, grid, padding_mode)
    np.testing.assert_allclose(sampled, image, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(mask, 1.0)


@pytest.mark.parametrize("dy, dx", [(2, -3), (-1, 4), (0, 1), (6, 0)])
def test_integer_shift_equals_slicing(rng, dy, dx):
    height, width = 6, 8
    image = _random_image(rng, batch=2, height=height, width=width, channels=2)
    coords = identity_grid(2, height, width).numpy() + np.float32([dy, dx])

    # zeros: out[y, x] = image[y + dy, x + dx] where that exists, else 0.
    expected = np.zeros_like(image)
    out_y = slice(max(0, -dy), min(height, height - dy))
    out_x = slice(max(0, -dx), min(width, width - dx))
    in_y = slice(max(0, dy), min(height, height + dy))
    in_x = slice(max(0, dx), min(width, width + dx))
    expected[:, out_y, out_x] = image[:, in_y, in_x]
    inside = np.zeros((2, height, width, 1), np.float32)
    inside[:, out_y, out_x] = 1.0
    sampled, mask = _resample_np(image, coords, "zeros")
    np.testing.assert_allclose(sampled, expected, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(mask, inside)

    # border: the index is clamped into the image.
    rows = np.clip(np.arange(height) + dy, 0, height - 1)
    cols = np.clip(np.arange(width) + dx, 0, width - 1)
    sampled, mask = _resample_np(image, coords, "border")
    np.testing.assert_allclose(sampled, image[:, rows][:, :, cols], atol=1e-6, rtol=0)
    np.testing.assert_array_equal(mask, inside)

    # A cyclic shift agrees with np.roll where no wrap-around happens.
    rolled = np.roll(image, shift=(-dy, -dx), axis=(1, 2))
    np.testing.assert_allclose(sampled[:, out_y, out_x], rolled[:, out_y, out_x], atol=1e-6, rtol=0)


def test_outside_zeros_versus_border(rng):
    height, width = 5, 6
    image = _random_image(rng, batch=1, height=height, width=width, channels=2)
    img = image[0]
    points = np.float32(
        [
            [-5.0, 2.0],  # far above
            [2.0, 40.0],  # far right
            [-0.25, 2.0],  # a quarter pixel above the first row
            [height - 1 + 0.5, 3.0],  # half a pixel below the last row
            [-0.5, -0.5],  # outside the top-left corner pixel
            [1.5, width - 1 + 0.75],  # right of the last column, between rows
        ]
    )
    coords = points[None, None]
    zeros, mask = _resample_np(image, coords, "zeros")
    border, border_mask = _resample_np(image, coords, "border")
    expected_zeros = [
        np.zeros(2),
        np.zeros(2),
        0.75 * img[0, 2],
        0.5 * img[height - 1, 3],
        0.25 * img[0, 0],
        0.25 * (0.5 * img[1, width - 1] + 0.5 * img[2, width - 1]),
    ]
    expected_border = [
        img[0, 2],
        img[2, width - 1],
        img[0, 2],
        img[height - 1, 3],
        img[0, 0],
        0.5 * img[1, width - 1] + 0.5 * img[2, width - 1],
    ]
    np.testing.assert_allclose(zeros[0, 0], np.array(expected_zeros), atol=1e-6, rtol=0)
    np.testing.assert_allclose(border[0, 0], np.array(expected_border), atol=1e-6, rtol=0)
    np.testing.assert_array_equal(mask, 0.0)
    np.testing.assert_array_equal(border_mask, 0.0)


def test_mask_is_the_closed_image_rectangle():
    height, width = 4, 7
    image = np.ones((1, height, width, 1), np.float32)
    points = np.float32(
        [
            [0.0, 0.0],
            [height - 1, width - 1],
            [0.0, width - 1],
            [1.3, 2.7],
            [-0.01, 3.0],
            [height - 1 + 0.01, 3.0],
            [2.0, -0.01],
            [2.0, width - 1 + 0.01],
            [-3.0, -3.0],
        ]
    )
    _, mask = _resample_np(image, points[None, None])
    np.testing.assert_array_equal(mask[0, 0, :, 0], [1, 1, 1, 1, 0, 0, 0, 0, 0])


def _away_from_kinks(rng, shape, low, high):
    """Coordinates whose fractional part lies in [0.2, 0.8]: no cell edge within 0.2 px."""
    integer = rng.integers(low, high, size=shape)
    return integer + rng.uniform(0.2, 0.8, size=shape)


@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
def test_gradients_match_finite_differences(rng, padding_mode):
    height, width = 4, 5
    image = rng.uniform(0.0, 1.0, size=(2, height, width, 2))
    if padding_mode == "zeros":
        # Includes cells that straddle the border (one or two corners outside).
        coords = np.stack(
            [_away_from_kinks(rng, (2, 2, 3), -1, height), _away_from_kinks(rng, (2, 2, 3), -1, width)],
            axis=-1,
        )
    else:
        # Inside (clamping inactive) and far outside (clamped, zero coordinate gradient).
        coords = np.stack(
            [_away_from_kinks(rng, (2, 2, 3), 0, height - 1), _away_from_kinks(rng, (2, 2, 3), 0, width - 1)],
            axis=-1,
        )
        coords[:, 0, :2] = [[-3.5, 2.5], [height + 1.5, width + 2.5]]
    image_t = tf.constant(image, tf.float64)
    coords_t = tf.constant(coords, tf.float64)
    # A graph function: compute_gradient evaluates it a few hundred times.
    sample = tf.function(lambda i, c: resample(i, c, padding_mode)[0])

    analytic, numeric = tf.test.compute_gradient(lambda c: sample(image_t, c), [coords_t], delta=1e-4)
    np.testing.assert_allclose(analytic[0], numeric[0], atol=1e-6, rtol=0)
    assert np.abs(analytic[0]).max() > 0.01

    analytic, numeric = tf.test.compute_gradient(lambda i: sample(i, coords_t), [image_t], delta=1e-4)
    np.testing.assert_allclose(analytic[0], numeric[0], atol=1e-6, rtol=0)
    assert np.abs(analytic[0]).max() > 0.01


def test_border_gradient_on_the_image_edges(rng):
    """At an integer coordinate the derivative is that of the cell [floor, floor + 1]:
    on the first row/column it points into the image; on the last row/column, under
    "border", the clamped field is constant beyond the edge, so it is zero."""
    height, width = 4, 5
    image = rng.uniform(0.0, 1.0, size=(1, height, width, 1))
    img = image[0, ..., 0]
    points = np.array([[0.0, 2.0], [height - 1.0, 2.0], [1.0, 0.0], [1.0, width - 1.0]])
    coords = tf.constant(points[None, None])
    with tf.GradientTape() as tape:
        tape.watch(coords)
        # Each sample depends only on its own point: the gradient of the sum is per point.
        total = tf.reduce_sum(resample(tf.constant(image), coords, "border")[0])
    grad = tape.gradient(total, coords)
    expected = np.array(
        [
            [img[1, 2] - img[0, 2], img[0, 3] - img[0, 2]],
            [0.0, img[height - 1, 3] - img[height - 1, 2]],
            [img[2, 0] - img[1, 0], img[1, 1] - img[1, 0]],
            [img[2, width - 1] - img[1, width - 1], 0.0],
        ]
    )
    np.testing.assert_allclose(grad.numpy()[0, 0], expected, atol=1e-12, rtol=0)


def test_rejects_unknown_padding_mode(rng):
    image = _random_image(rng)
    with pytest.raises(ValueError):
        resample(image, identity_grid(2, 7, 9), "wrap")
    with pytest.raises(ValueError):
        SpatialTransformer(padding_mode="wrap")


def test_dynamic_shapes_in_tf_function(rng):
    @tf.function(
        input_signature=[
            tf.TensorSpec([None, None, None, None], tf.float32),
            tf.TensorSpec([None, None, None, 2], tf.float32),
            tf.TensorSpec([None, 2, 3], tf.float32),
        ]
    )
    def run(image, coords, theta):
        return resample(image, coords)[0], warp_affine(image, theta)[0]

    for batch, height, width, channels, out_h, out_w in [(1, 5, 7, 2, 3, 4), (3, 9, 4, 1, 6, 2)]:
        image = _random_image(rng, batch, height, width, channels)
        coords = np.stack(
            [rng.uniform(-1, height, (batch, out_h, out_w)), rng.uniform(-1, width, (batch, out_h, out_w))],
            axis=-1,
        ).astype(np.float32)
        theta = np.tile(_rotation_shift(10.0, 0.9, 0.1, -0.05), (batch, 1, 1)).astype(np.float32)
        sampled, warped = run(image, coords, theta)
        np.testing.assert_allclose(sampled.numpy(), _resample_np(image, coords)[0], atol=1e-6)
        np.testing.assert_allclose(warped.numpy(), warp_affine(image, theta)[0].numpy(), atol=1e-6)
    assert run.experimental_get_tracing_count() == 1


# ------------------------------------------------------------------ affine_grid / warp_affine


def test_identity_affine_returns_the_input(rng):
    image = _random_image(rng, batch=2, height=6, width=9, channels=3)
    theta = np.tile(np.float32([[1, 0, 0], [0, 1, 0]]), (2, 1, 1))
    np.testing.assert_allclose(affine_grid(theta, 6, 9).numpy(), identity_grid(2, 6, 9).numpy(), atol=1e-5)
    warped, mask = warp_affine(image, theta)
    np.testing.assert_allclose(warped.numpy(), image, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(mask.numpy(), 1.0)


def test_affine_grid_matches_pixel_matrix():
    height, width = 7, 12
    thetas = np.stack([_rotation_shift(25.0, 1.1, 0.2, -0.3), _rotation_shift(-8.0, 0.8, -0.1, 0.15)])
    thetas[1, 0, 1] += 0.1  # a shear as well
    grid = affine_grid(thetas, height, width).numpy()
    for b in range(2):
        np.testing.assert_allclose(grid[b], _affine_source_coords(thetas[b], height, width), atol=1e-9)


def test_warp_affine_matches_scipy_affine_transform(rng):
    height, width, channels = 20, 26, 2
    ys, xs = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    image = np.stack(
        [np.sin(0.4 * ys) * np.cos(0.3 * xs), ((ys // 3 + xs // 4) % 2).astype(float)], axis=-1
    )[None].repeat(2, axis=0)
    image[1] += rng.uniform(0, 0.5, size=image.shape[1:])
    image = image.astype(np.float32)
    thetas = np.stack([_rotation_shift(12.0, 1.0, 0.1, -0.08), _rotation_shift(-20.0, 0.9, -0.12, 0.05)])
    warped, mask = warp_affine(image, thetas.astype(np.float32))
    warped, mask = warped.numpy(), mask.numpy()
    for b in range(2):
        matrix, offset = _pixel_affine(thetas[b], height, width)
        source = _affine_source_coords(thetas[b], height, width)
        inside = (
            (source[..., 0] >= 0) & (source[..., 0] <= height - 1)
            & (source[..., 1] >= 0) & (source[..., 1] <= width - 1)
        )
        np.testing.assert_array_equal(mask[b, ..., 0], inside)
        # scipy's edge handling differs from ours: compare a pixel away from the border.
        interior = (
            (source[..., 0] >= 1) & (source[..., 0] <= height - 2)
            & (source[..., 1] >= 1) & (source[..., 1] <= width - 2)
        )
        assert interior.sum() > 0.5 * height * width
        for c in range(channels):
            expected = ndimage.affine_transform(
                image[b, ..., c].astype(np.float64), matrix, offset, order=1, mode="constant"
            )
            np.testing.assert_allclose(warped[b, ..., c][interior], expected[interior], atol=1e-5, rtol=0)


def test_normalised_flow_measures_a_translation_in_the_affine_units():
    """The pixel flow of a pure translation affine (shifts ``t_u, t_v``) is, normalised,
    that translation at every pixel: the affines' own units, per axis."""
    height, width = 7, 12
    shifts = np.float32([[0.3, -0.2], [-0.15, 0.05]])  # (t_u, t_v) per batch element
    thetas = np.zeros((2, 2, 3), np.float32)
    thetas[:, 0, 0] = thetas[:, 1, 1] = 1.0
    thetas[:, :, 2] = shifts
    flow = affine_grid(thetas, height, width) - identity_grid(2, height, width)
    normalised = normalised_flow(flow).numpy()
    np.testing.assert_allclose(normalised[..., 0], np.broadcast_to(shifts[:, 1, None, None], (2, height, width)), atol=1e-6)
    np.testing.assert_allclose(normalised[..., 1], np.broadcast_to(shifts[:, 0, None, None], (2, height, width)), atol=1e-6)


def test_normalised_flow_scales_each_axis_by_its_own_extent(rng):
    flow = rng.normal(0.0, 3.0, size=(2, 5, 9, 2))
    expected = flow * np.array([2.0 / 4.0, 2.0 / 8.0])
    np.testing.assert_allclose(normalised_flow(tf.constant(flow)).numpy(), expected, rtol=1e-12)
    # A one-pixel axis has no extent: as in affine_grid, it is divided by 1.
    line = rng.normal(size=(1, 1, 6, 2)).astype(np.float32)
    np.testing.assert_allclose(normalised_flow(line).numpy(), line * np.float32([2.0, 2.0 / 5.0]), rtol=1e-6)


def test_warp_flow_is_resample_at_grid_plus_flow(rng):
    image = _random_image(rng, batch=2, height=6, width=7, channels=2)
    flow = rng.normal(0.0, 2.0, size=(2, 6, 7, 2)).astype(np.float32)
    for mode in ("zeros", "border"):
        warped, mask = warp_flow(image, flow, mode)
        expected, expected_mask = _resample_np(image, identity_grid(2, 6, 7).numpy() + flow, mode)
        np.testing.assert_allclose(warped.numpy(), expected, atol=1e-6)
        np.testing.assert_array_equal(mask.numpy(), expected_mask)


# ------------------------------------------------------------------------ SpatialTransformer


@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
def test_spatial_transformer_dispatches_by_rank(rng, padding_mode):
    height, width = 8, 10
    image = _random_image(rng, batch=2, height=height, width=width, channels=3)
    layer = SpatialTransformer(padding_mode=padding_mode)

    # A flow pointing out of the image, so that the padding mode matters.
    flow = rng.normal(0.0, 1.0, size=(2, height, width, 2)).astype(np.float32) + np.float32([-3.0, 4.0])
    warped, mask = layer([image, flow])
    coords = identity_grid(2, height, width).numpy() + flow
    expected, expected_mask = _resample_np(image, coords, padding_mode)
    np.testing.assert_allclose(warped.numpy(), expected, atol=1e-6)
    np.testing.assert_array_equal(mask.numpy(), expected_mask)
    other_mode = "border" if padding_mode == "zeros" else "zeros"
    assert np.abs(warped.numpy() - _resample_np(image, coords, other_mode)[0]).max() > 0.1

    theta = np.stack([_rotation_shift(15.0, 1.2, 0.3, 0.0), _rotation_shift(-5.0, 0.7, 0.0, -0.4)])
    warped, mask = layer([image, theta.astype(np.float32)])
    coords = np.stack([_affine_source_coords(t, height, width) for t in theta]).astype(np.float32)
    expected, expected_mask = _resample_np(image, coords, padding_mode)
    np.testing.assert_allclose(warped.numpy(), expected, atol=1e-5)
    np.testing.assert_array_equal(mask.numpy(), expected_mask)
    assert np.abs(warped.numpy() - _resample_np(image, coords, other_mode)[0]).max() > 0.1


def test_spatial_transformer_rejects_other_ranks(rng):
    image = _random_image(rng)
    with pytest.raises(ValueError):
        SpatialTransformer()([image, np.zeros((2, 6), np.float32)])


@pytest.mark.parametrize("transform", ["affine", "flow"])
def test_spatial_transformer_dynamic_shapes_config_and_saving(rng, layer_checks, transform):
    layer = SpatialTransformer(padding_mode="border")
    if transform == "affine":
        transform_spec = tf.TensorSpec([None, 2, 3], tf.float32)
        make = lambda b, h, w: (
            np.tile(_rotation_shift(10.0, 0.8, 0.3, -0.2), (b, 1, 1)).astype(np.float32)
        )
    else:
        transform_spec = tf.TensorSpec([None, None, None, 2], tf.float32)
        make = lambda b, h, w: rng.normal(0.0, 2.0, size=(b, h, w, 2)).astype(np.float32)
    specs = [tf.TensorSpec([None, None, None, 2], tf.float32), transform_spec]
    inputs_a = [_random_image(rng, 1, 6, 9, 2), make(1, 6, 9)]
    inputs_b = [_random_image(rng, 2, 10, 5, 2), make(2, 10, 5)]
    layer_checks.dynamic_shapes(layer, specs, inputs_a, inputs_b)
    layer_checks.config_roundtrip(layer, inputs_b)
    layer_checks.save_load(layer, specs, inputs_b)


@pytest.mark.parametrize("dtype", [tf.float32, tf.bfloat16])
def test_gradients_with_none_dimensions_in_tf_function(rng, dtype):
    """The hand-written gradient, traced once with ``None`` sizes, equals the eager one at
    two sizes (and an empty batch), also in bfloat16 (mixed precision)."""
    def gradients(image, coords, weights):
        with tf.GradientTape() as tape:
            tape.watch([image, coords])
            loss = tf.reduce_sum(tf.cast(resample(image, coords)[0], tf.float32) * weights)
        return tape.gradient(loss, [image, coords])

    spec = [tf.TensorSpec([None, None, None, None], dtype), tf.TensorSpec([None, None, None, 2], dtype),
            tf.TensorSpec([None, None, None, None], tf.float32)]
    traced = tf.function(gradients, input_signature=spec)
    for batch, height, width, channels, out_h, out_w in [(1, 5, 7, 2, 3, 4), (3, 9, 4, 1, 6, 2),
                                                         (0, 4, 4, 2, 3, 3)]:
        image = tf.cast(_random_image(rng, batch, height, width, channels), dtype)
        coords = tf.cast(np.stack(
            [rng.uniform(-1, height, (batch, out_h, out_w)), rng.uniform(-1, width, (batch, out_h, out_w))],
            axis=-1,
        ), dtype)
        weights = tf.constant(rng.normal(size=(batch, out_h, out_w, channels)).astype(np.float32))
        for graph, eager in zip(traced(image, coords, weights), gradients(image, coords, weights)):
            assert graph.dtype == dtype and graph.shape == eager.shape
            np.testing.assert_allclose(tf.cast(graph, tf.float32).numpy(),
                                       tf.cast(eager, tf.float32).numpy(), atol=1e-5, rtol=0)
    assert traced.experimental_get_tracing_count() == 1


def test_reflect_coordinates_mirror_about_the_border_pixels_like_numpy_pad():
    from layers.resampler import reflect_coordinates

    size = 5
    positions = np.arange(-9, 14, dtype=np.float64)
    index = np.arange(size)
    expected = np.pad(index, 9, mode="reflect")[positions.astype(int) + 9]
    coords = np.stack([positions, positions], axis=-1)
    folded = reflect_coordinates(tf.constant(coords), size, size).numpy()
    np.testing.assert_array_equal(folded[:, 0], expected)
    np.testing.assert_array_equal(folded[:, 1], expected)
    np.testing.assert_array_equal(reflect_coordinates(tf.constant([[3.0, -2.5]]), 1, 1), [[0.0, 0.0]])


def test_reflect_padding_samples_the_mirrored_image_and_masks_the_outside(rng):
    image = rng.uniform(size=(1, 6, 7, 2)).astype(np.float32)
    padded = np.pad(image, [(0, 0), (4, 4), (4, 4), (0, 0)], mode="reflect")
    ys, xs = np.meshgrid(np.arange(-4, 10), np.arange(-4, 11), indexing="ij")
    coords = np.stack([ys, xs], axis=-1)[None].astype(np.float32)
    sampled, mask = resample(tf.constant(image), tf.constant(coords), padding_mode="reflect")
    np.testing.assert_allclose(sampled.numpy(), padded, atol=1e-6)
    inside = (ys >= 0) & (ys <= 5) & (xs >= 0) & (xs <= 6)
    np.testing.assert_array_equal(mask.numpy()[0, ..., 0], inside.astype(np.float32))
    # Between pixels it is the bilinear interpolant of the mirrored image.
    half = np.array([[[[-0.5, 2.0]]]], np.float32)
    value, _ = resample(tf.constant(image), tf.constant(half), padding_mode="reflect")
    np.testing.assert_allclose(value.numpy()[0, 0, 0], 0.5 * (image[0, 1, 2] + image[0, 0, 2]), atol=1e-6)
