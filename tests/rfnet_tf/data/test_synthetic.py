"""Synthetic misalignment: conventions, ranges, exact ground truth, landmarks, flips."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.ndimage
import tensorflow as tf

from layers import affine_grid, identity_grid, warp_affine, warp_flow
from rfnet_tf.data.io import Pair
from rfnet_tf.metrics.registration import affine_to_pixel_matrix
from rfnet_tf.data.synthetic import (
    AffineRanges,
    Curriculum,
    LocalFieldRanges,
    affine_from_unit_samples,
    affine_matrix,
    flip_affine,
    flip_flow,
    flip_image,
    invert_affine,
    invert_flow,
    make_misaligned_pair,
    random_affine,
    random_local_field,
    transform_points,
)

HEIGHT, WIDTH = 72, 96


def ramp_image(height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """``(H, W, 3)`` channels linear in ``(y, x)``: bilinear resampling of it is exact.

    The three channels together encode the position, so any coordinate error shows.
    """
    yy, xx = np.meshgrid(
        np.arange(height) / (height - 1), np.arange(width) / (width - 1), indexing="ij"
    )
    return np.stack([yy, xx, 0.5 * (yy + xx)], axis=-1).astype(np.float32)


def ramp_pair(height: int = HEIGHT, width: int = WIDTH) -> Pair:
    vis = ramp_image(height, width)
    return Pair(name="ramp", vis=vis, nir=vis.mean(axis=-1, keepdims=True))


def pixel_grid(height: int, width: int) -> np.ndarray:
    return np.stack(
        np.meshgrid(np.arange(height), np.arange(width), indexing="ij"), axis=-1
    ).astype(np.float64)


def bilinear(field: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Independent bilinear interpolation (clamped) of ``(H, W, C)`` at ``(N, 2)`` (y, x)."""
    return np.stack(
        [
            scipy.ndimage.map_coordinates(field[..., c], points.T, order=1, mode="nearest")
            for c in range(field.shape[-1])
        ],
        axis=-1,
    )


def interior(mask: np.ndarray, border: int = 2) -> np.ndarray:
    """``mask`` (H, W) eroded by ``border`` pixels, also away from the image border."""
    eroded = scipy.ndimage.binary_erosion(mask, iterations=border)
    eroded[:border], eroded[-border:], eroded[:, :border], eroded[:, -border:] = (
        False,
        False,
        False,
        False,
    )
    return eroded


# ---------------------------------------------------------------- affine conventions


def test_pixel_and_normalised_affines_agree_with_layers_affine_grid(rng):
    theta = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]) + rng.normal(0.0, 0.1, (2, 3))
    coords = affine_grid(tf.constant(theta[None]), HEIGHT, WIDTH)[0].numpy()
    points = pixel_grid(HEIGHT, WIDTH).reshape(-1, 2)
    np.testing.assert_allclose(
        transform_points(theta, points, HEIGHT, WIDTH), coords.reshape(-1, 2), atol=1e-9
    )
    pixel = affine_to_pixel_matrix(theta, (HEIGHT, WIDTH))
    x, y = pixel @ np.stack([points[:, 1], points[:, 0], np.ones(len(points))])
    np.testing.assert_allclose(np.stack([y, x], -1), coords.reshape(-1, 2), atol=1e-9)


def test_invert_affine_composes_to_the_identity(rng):
    theta = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]) + rng.normal(0.0, 0.2, (4, 2, 3))
    inverse = invert_affine(theta).numpy()
    homogeneous = lambda m: np.concatenate(
        [m, np.broadcast_to([[0.0, 0.0, 1.0]], (len(m), 1, 3))], axis=1
    )
    np.testing.assert_allclose(
        homogeneous(theta) @ homogeneous(inverse), np.broadcast_to(np.eye(3), (4, 3, 3)), atol=1e-12
    )


def test_affine_matrix_analytic_cases():
    # A 90-degree rotation of a square image: (u, v) -> (-v, u).
    theta = affine_matrix(
        *(tf.constant(v, tf.float64) for v in (90.0, 1.0, 0.0, 0.0, 0.0)), 33, 33
    ).numpy()
    np.testing.assert_allclose(theta, [[0, -1, 0], [1, 0, 0]], atol=1e-12)
    # Translation by a fraction t of the extent is 2t in normalised units.
    theta = affine_matrix(
        *(tf.constant(v, tf.float64) for v in (0.0, 1.0, 0.0, 0.1, -0.05)), 20, 50
    ).numpy()
    np.testing.assert_allclose(theta, [[1, 0, -0.1], [0, 1, 0.2]], atol=1e-12)


def test_random_affine_pixel_matrix_is_the_documented_composition():
    affine = random_affine(7, HEIGHT, WIDTH)
    angle = math.radians(affine.rotation_deg)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    linear = rotation @ np.array([[1.0, affine.shear], [0.0, 1.0]]) * affine.scale
    centre = np.array([(WIDTH - 1) / 2, (HEIGHT - 1) / 2])
    shift = np.array([affine.translation_x * (WIDTH - 1), affine.translation_y * (HEIGHT - 1)])
    expected = np.concatenate([linear, (centre - linear @ centre + shift)[:, None]], axis=1)
    np.testing.assert_allclose(affine.misalignment_pixels(), expected, atol=1e-9)
    np.testing.assert_allclose(
        affine.registration_pixels(), np.linalg.inv(np.vstack([expected, [0, 0, 1]]))[:2], atol=1e-9
    )


def test_random_affine_ranges_seeding_and_log_uniform_scale():
    rng = np.random.default_rng(0)
    draws = [random_affine(rng, HEIGHT, WIDTH) for _ in range(200)]
    ranges = AffineRanges()
    rotations = np.array([d.rotation_deg for d in draws])
    scales = np.array([d.scale for d in draws])
    assert 0.9 * ranges.max_rotation_deg < np.abs(rotations).max() <= ranges.max_rotation_deg
    assert scales.min() >= 0.8 and scales.max() <= 1.25
    assert abs(np.log(scales).mean()) < 0.035  # log-uniform on [0.8, 1/0.8] is centred at log 1
    assert max(abs(d.shear) for d in draws) <= ranges.max_shear
    shifts = [max(abs(d.translation_y), abs(d.translation_x)) for d in draws]
    assert 0.9 * ranges.max_translation < max(shifts) <= ranges.max_translation
    np.testing.assert_array_equal(
        random_affine(3, HEIGHT, WIDTH).misalignment, random_affine(3, HEIGHT, WIDTH).misalignment
    )
    assert not np.allclose(
        random_affine(3, HEIGHT, WIDTH).misalignment, random_affine(4, HEIGHT, WIDTH).misalignment
    )
    narrow = random_affine(
        5, HEIGHT, WIDTH, AffineRanges(max_rotation_deg=0.0, scale_range=(1.0, 1.0), max_shear=0.0)
    )
    np.testing.assert_allclose(narrow.misalignment[:, :2], np.eye(2), atol=1e-12)


# ---------------------------------------------------------------- local fields


def test_invert_flow_of_an_affine_flow_is_the_analytic_inverse():
    # f(p) = K p + b is reproduced exactly by bilinear interpolation, and its inverse is
    # g(q) = (I + K)^-1 (q - b) - q.
    height, width = 40, 50
    linear = np.array([[0.03, -0.02], [0.015, 0.04]])
    offset = np.array([1.5, -2.0])
    grid = pixel_grid(height, width)
    flow = grid @ linear.T + offset
    inverse, residual = invert_flow(tf.constant(flow), tolerance=1e-8)
    expected = (grid - offset) @ np.linalg.inv(np.eye(2) + linear).T - grid
    inside = interior(np.ones((height, width), bool), border=6)
    np.testing.assert_allclose(inverse.numpy()[inside], expected[inside], atol=1e-6)
    assert float(residual) < 1e-8


@pytest.mark.parametrize("size", [(96, 128), (48, 40)])
def test_random_local_field_amplitude_inverse_and_no_folding(size):
    height, width = size
    ranges = LocalFieldRanges()
    field = random_local_field(11, height, width, ranges)
    magnitude = np.linalg.norm(field.misalignment, axis=-1)
    factor = min(height, width) / 384
    np.testing.assert_allclose(magnitude.max(), field.max_displacement, rtol=1e-9)
    assert 2.0 * factor <= field.max_displacement <= 10.0 * factor
    assert field.residual < 1e-4
    # Independent check of g(q) + f(q + g(q)) = 0 with scipy's bilinear interpolation.
    points = (pixel_grid(height, width) + field.registration).reshape(-1, 2)
    error = field.registration.reshape(-1, 2) + bilinear(field.misalignment, points)
    assert np.abs(error).max() < 1e-4
    jacobian = np.stack(np.gradient(field.misalignment, axis=(0, 1)), axis=-1)
    assert np.linalg.det(np.eye(2) + jacobian).min() > 0.2
    np.testing.assert_array_equal(
        random_local_field(11, height, width).misalignment, field.misalignment
    )


def test_local_field_scales_with_image_size():
    small = [random_local_field(seed, 48, 64).max_displacement for seed in range(6)]
    assert all(2.0 * 48 / 384 <= value <= 10.0 * 48 / 384 for value in small)
    fixed = LocalFieldRanges(reference_size=None, max_displacement_range=(3.0, 3.0))
    assert random_local_field(0, 48, 64, fixed).max_displacement == pytest.approx(3.0)
    assert LocalFieldRanges().control_grid_shape(384, 384) == (7, 7)
    assert LocalFieldRanges().control_grid_shape(768, 1536) == (7, 13)


# ---------------------------------------------------------------- misaligned pairs


@pytest.mark.parametrize("kind", ["affine", "local", "both"])
def test_registration_ground_truth_restores_the_aligned_image(kind):
    pair = ramp_pair()
    misaligned = make_misaligned_pair(
        pair, 3, kind, field_ranges=LocalFieldRanges(reference_size=None)
    )
    moving = tf.constant(misaligned.pair.vis[None])
    moving_mask = tf.constant(misaligned.mask[None])
    registered, registered_mask = moving, moving_mask
    if misaligned.affine is not None:
        registration = tf.constant(misaligned.affine.registration[None], tf.float32)
        registered, _ = warp_affine(registered, registration)
        registered_mask, _ = warp_affine(registered_mask, registration)
    if misaligned.field is not None:
        flow = tf.constant(misaligned.field.registration[None], tf.float32)
        registered, _ = warp_flow(registered, flow)
        registered_mask, _ = warp_flow(registered_mask, flow)
    valid = interior(registered_mask[0, ..., 0].numpy() > 1.0 - 1e-5)
    assert valid.mean() > 0.3
    error = np.abs(registered[0].numpy() - pair.vis)[valid]
    assert error.max() < 1e-3
    # Without registration the images differ (the test can fail).
    assert np.abs(misaligned.pair.vis - pair.vis)[valid].max() > 0.01


@pytest.mark.parametrize("kind", ["affine", "local", "both"])
def test_landmarks_follow_the_ground_truth(kind):
    pair = ramp_pair()
    misaligned = make_misaligned_pair(
        pair, 5, kind, num_landmarks=6, field_ranges=LocalFieldRanges(reference_size=None)
    )
    fixed, moving = misaligned.pair.nir_points, misaligned.pair.vis_points
    assert fixed.shape == moving.shape == (6, 2)
    margin = max(4.0, 0.05 * min(HEIGHT, WIDTH))
    for points in (fixed, moving):
        assert points[:, 0].min() >= margin and points[:, 0].max() <= HEIGHT - 1 - margin
        assert points[:, 1].min() >= margin and points[:, 1].max() <= WIDTH - 1 - margin
    # The registration maps the fixed points onto the moving points ...
    coords = misaligned.registration_coordinates()
    np.testing.assert_allclose(bilinear(coords, fixed), moving, atol=1e-3)
    # ... and the misalignment (checked independently) maps them back.
    back = moving
    if misaligned.affine is not None:
        back = transform_points(misaligned.affine.misalignment, back, HEIGHT, WIDTH)
    if misaligned.field is not None:
        back = back + bilinear(misaligned.field.misalignment, back)
    np.testing.assert_allclose(back, fixed, atol=1e-3)
    # The moving image shows at the moving point what the aligned image shows at the fixed one.
    np.testing.assert_allclose(
        bilinear(misaligned.pair.vis, moving), bilinear(pair.vis, fixed), atol=2e-3
    )


def test_affine_mask_and_total_flow():
    pair = ramp_pair()
    misaligned = make_misaligned_pair(pair, 9, "affine")
    samples = transform_points(
        misaligned.affine.misalignment, pixel_grid(HEIGHT, WIDTH).reshape(-1, 2), HEIGHT, WIDTH
    )
    inside = (samples[:, 0] >= -1e-3) & (samples[:, 0] <= HEIGHT - 1 + 1e-3)
    inside &= (samples[:, 1] >= -1e-3) & (samples[:, 1] <= WIDTH - 1 + 1e-3)
    np.testing.assert_array_equal(misaligned.mask.reshape(-1) == 1.0, inside)
    assert 0.3 < inside.mean() < 1.0
    assert np.all(
        misaligned.pair.vis.reshape(-1, 3)[~inside] < 1.0
    )  # zero padding reached the border
    registration = tf.constant(misaligned.affine.registration[None])
    expected = (
        affine_grid(registration, HEIGHT, WIDTH)[0] - identity_grid(1, HEIGHT, WIDTH, tf.float64)[0]
    )
    np.testing.assert_allclose(misaligned.registration_flow(), expected.numpy(), atol=1e-9)
    np.testing.assert_array_equal(misaligned.pair.nir, pair.nir)
    np.testing.assert_array_equal(misaligned.aligned_vis, pair.vis)


def test_bad_kind_and_too_small_image():
    with pytest.raises(ValueError, match="kind"):
        make_misaligned_pair(ramp_pair(), 0, "rigid")
    with pytest.raises(ValueError, match="too small"):
        make_misaligned_pair(ramp_pair(8, 8), 0, "affine", margin=5)


# ---------------------------------------------------------------- flips


@pytest.mark.parametrize("vertical, horizontal", [(False, True), (True, False), (True, True)])
def test_flipped_ground_truth_registers_flipped_images(vertical, horizontal):
    pair = ramp_pair()
    misaligned = make_misaligned_pair(
        pair, 2, "both", field_ranges=LocalFieldRanges(reference_size=None)
    )
    flip = lambda image: flip_image(
        tf.constant(image), tf.constant(vertical), tf.constant(horizontal)
    )
    affine = flip_affine(
        tf.constant(misaligned.affine.registration, tf.float32), vertical, horizontal
    )
    flow = flip_flow(tf.constant(misaligned.field.registration, tf.float32), vertical, horizontal)
    registered, _ = warp_affine(flip(misaligned.pair.vis)[None], affine[None])
    registered, _ = warp_flow(registered, flow[None])
    mask, _ = warp_affine(flip(misaligned.mask)[None], affine[None])
    mask, _ = warp_flow(mask, flow[None])
    valid = interior(mask[0, ..., 0].numpy() > 1.0 - 1e-5)
    assert valid.mean() > 0.3
    assert np.abs(registered[0].numpy() - flip(pair.vis).numpy())[valid].max() < 1e-3
    # The unflipped ground truth does not register the flipped images.
    unflipped, _ = warp_affine(
        flip(misaligned.pair.vis)[None],
        tf.constant(misaligned.affine.registration[None], tf.float32),
    )
    assert np.abs(unflipped[0].numpy() - flip(pair.vis).numpy())[valid].max() > 0.01


def test_flips_are_involutions(rng):
    theta = tf.constant(rng.normal(size=(2, 3)))
    flow = tf.constant(rng.normal(size=(5, 6, 2)))
    for vertical in (False, True):
        for horizontal in (False, True):
            twice = flip_affine(flip_affine(theta, vertical, horizontal), vertical, horizontal)
            np.testing.assert_array_equal(twice.numpy(), theta.numpy())
            twice = flip_flow(flip_flow(flow, vertical, horizontal), vertical, horizontal)
            np.testing.assert_array_equal(twice.numpy(), flow.numpy())
    identity = tf.constant([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    np.testing.assert_array_equal(flip_affine(identity, True, True).numpy(), identity.numpy())


@pytest.mark.parametrize(
    "ranges",
    [
        dict(max_rotation_deg=-1.0),
        dict(scale_range=(1.2, 0.9)),
        dict(scale_range=(0.0, 1.0)),
        dict(max_shear=1.0),
        dict(max_translation=0.6),
    ],
)
def test_affine_ranges_that_cannot_be_drawn_are_refused(ranges):
    with pytest.raises(ValueError):
        AffineRanges(**ranges)


def test_local_field_ranges_that_cannot_be_drawn_are_refused():
    with pytest.raises(ValueError):
        LocalFieldRanges(max_displacement_range=(5.0, 2.0))
    with pytest.raises(ValueError):
        LocalFieldRanges(control_spacing=0.0)


def test_curriculum_magnitude_grows_linearly_to_one_and_stays():
    curriculum = Curriculum(steps=100, start=0.2)
    magnitudes = [float(curriculum.magnitude(step)) for step in (0, 50, 100, 1000)]
    np.testing.assert_allclose(magnitudes, [0.2, 0.6, 1.0, 1.0], atol=1e-7)
    assert float(Curriculum().magnitude(0)) == 1.0
    with pytest.raises(ValueError):
        Curriculum(steps=-1)


def test_a_curriculum_with_a_first_step_holds_its_start_until_then_and_grows_from_there():
    curriculum = Curriculum(steps=100, start=0.2, first_step=1000)
    magnitudes = [float(curriculum.magnitude(step)) for step in (0, 1000, 1050, 1100, 5000)]
    np.testing.assert_allclose(magnitudes, [0.2, 0.2, 0.6, 1.0, 1.0], atol=1e-7)
    with pytest.raises(ValueError):
        Curriculum(steps=100, first_step=-1)


def test_a_magnitude_scales_every_parameter_of_the_affine():
    unit = tf.constant([0.9, 0.95, 0.1, 0.8, 0.3], tf.float64)
    ranges = AffineRanges()
    full = affine_from_unit_samples(unit, HEIGHT, WIDTH, ranges).numpy()
    half = affine_from_unit_samples(unit, HEIGHT, WIDTH, ranges, magnitude=0.5).numpy()
    rotation, log_scale, shear, shift_y, shift_x = (
        (2 * 0.9 - 1) * ranges.max_rotation_deg,
        np.log(0.8) + 0.95 * (np.log(1.25) - np.log(0.8)),
        (2 * 0.1 - 1) * ranges.max_shear,
        (2 * 0.8 - 1) * ranges.max_translation,
        (2 * 0.3 - 1) * ranges.max_translation,
    )
    for factor, matrix in ((1.0, full), (0.5, half)):
        expected = affine_matrix(
            *(tf.constant(v, tf.float64) for v in (
                factor * rotation, np.exp(factor * log_scale), factor * shear,
                factor * shift_y, factor * shift_x,
            )),
            HEIGHT, WIDTH,
        ).numpy()
        np.testing.assert_allclose(matrix, expected, atol=1e-12)
    zero = affine_from_unit_samples(unit, HEIGHT, WIDTH, ranges, magnitude=0.0).numpy()
    np.testing.assert_allclose(zero, [[1, 0, 0], [0, 1, 0]], atol=1e-12)
