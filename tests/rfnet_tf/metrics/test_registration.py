"""Registration geometry and metrics against hand cases, scipy, OpenCV and scikit-image."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from rfnet_tf.metrics import registration as reg


def random_affine(rng: np.random.Generator) -> np.ndarray:
    return np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]) + rng.uniform(-0.1, 0.1, (2, 3))


def smooth_image(rng: np.random.Generator, shape) -> np.ndarray:
    return ndimage.gaussian_filter(rng.uniform(0, 255, shape), 3.0)


def test_pixel_matrix_matches_hand_normalisation(rng):
    fixed_shape, moving_shape = (30, 50), (40, 35)
    theta = random_affine(rng)
    matrix = reg.affine_to_pixel_matrix(theta, fixed_shape, moving_shape)
    y, x = 7.0, 19.0
    u, v = 2 * x / (50 - 1) - 1, 2 * y / (30 - 1) - 1
    su, sv = theta @ [u, v, 1.0]
    expected_x, expected_y = (su + 1) * (35 - 1) / 2, (sv + 1) * (40 - 1) / 2
    np.testing.assert_allclose(matrix @ [x, y, 1.0], [expected_x, expected_y], atol=1e-10)
    back = reg.pixel_matrix_to_affine(matrix, fixed_shape, moving_shape)
    np.testing.assert_allclose(back, theta, atol=1e-12)


def test_identity_affine_is_identity_pixel_matrix():
    np.testing.assert_allclose(
        reg.affine_to_pixel_matrix(np.eye(2, 3), (17, 23)), [[1, 0, 0], [0, 1, 0]], atol=1e-12
    )


def test_the_corner_pixels_are_the_normalised_corners():
    """Align corners: pixel 0 is -1 and pixel W-1 (H-1) is +1 on each axis."""
    shift = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])  # [u, v] -> [u + 1, v + 1]
    matrix = reg.affine_to_pixel_matrix(shift, (17, 23))
    np.testing.assert_allclose(matrix @ [0.0, 0.0, 1.0], [11.0, 8.0], atol=1e-12)
    np.testing.assert_allclose(matrix @ [11.0, 8.0, 1.0], [22.0, 16.0], atol=1e-12)


def test_a_one_pixel_axis_maps_to_its_only_pixel():
    """A 1-pixel axis has no extent to normalise: finite matrices, and its pixel 0 stays."""
    theta = np.array([[0.9, 0.1, 0.2], [0.0, 1.0, 0.0]])
    matrix = reg.affine_to_pixel_matrix(theta, (1, 9))
    assert np.isfinite(matrix).all()
    np.testing.assert_allclose((matrix @ [4.0, 0.0, 1.0])[1], 0.0, atol=1e-12)
    np.testing.assert_allclose(reg.pixel_matrix_to_affine(matrix, (1, 9)), theta, atol=1e-12)


def test_warp_image_matches_scipy_grid_constant(rng):
    image = rng.uniform(0, 255, (9, 11, 2))
    coords = np.stack([rng.uniform(-2, 10, (13, 12)), rng.uniform(-2, 12, (13, 12))], axis=-1)
    warped, mask = reg.warp_image(image, coords)
    for channel in range(2):
        expected = ndimage.map_coordinates(
            image[..., channel],
            [coords[..., 0], coords[..., 1]],
            order=1,
            mode="grid-constant",
            cval=0.0,
        )
        np.testing.assert_allclose(warped[..., channel], expected, atol=1e-9)
    y, x = coords[..., 0], coords[..., 1]
    inside = (y >= 0) & (y <= 8) & (x >= 0) & (x <= 10)
    np.testing.assert_array_equal(mask, inside)


def test_affine_warp_matches_opencv_inverse_map(rng):
    """Our backward affine in pixel form is OpenCV's WARP_INVERSE_MAP matrix."""
    image = smooth_image(rng, (48, 64))
    theta = random_affine(rng)
    warped, mask = reg.warp_image(image, reg.sampling_coordinates(image.shape, theta=theta))
    matrix = reg.affine_to_pixel_matrix(theta, image.shape)
    expected = cv2.warpAffine(
        image.astype(np.float32), matrix, (64, 48), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    )
    inner = ndimage.binary_erosion(mask, iterations=2)
    # OpenCV quantises the sub-pixel position to 1/32 px.
    np.testing.assert_allclose(warped[inner], expected[inner], atol=0.5)


def test_identity_mapping_gives_raw_landmark_distance(rng):
    fixed = rng.uniform(0, 40, (5, 2))
    moving = rng.uniform(0, 40, (5, 2))
    identity_flow = np.zeros((41, 41, 2))
    carried = reg.map_moving_to_fixed(moving, (41, 41), theta=np.eye(2, 3), flow=identity_flow)
    np.testing.assert_allclose(
        reg.landmark_errors(carried, fixed), np.hypot(*(moving - fixed).T), atol=1e-9
    )


def test_translation_and_constant_flow_move_points_by_hand():
    shape = (21, 41)
    points = np.array([[3.0, 4.0], [10.5, 30.25]])
    # u-translation 0.1 = 0.1 * (W - 1) / 2 = 2 px in x; v-translation -0.2 = -2 px in y.
    theta = np.array([[1.0, 0.0, 0.1], [0.0, 1.0, -0.2]])
    moved = reg.map_fixed_to_moving(points, shape, theta=theta)
    np.testing.assert_allclose(moved, points + [-2.0, 2.0])
    flow = np.broadcast_to(np.array([1.5, -0.5]), shape + (2,))
    moved = reg.map_fixed_to_moving(points, shape, flow=flow)
    np.testing.assert_allclose(moved, points + [1.5, -0.5])
    # Flow first, then the affine (T(q) = T_theta(q + phi(q))).
    np.testing.assert_allclose(
        reg.map_fixed_to_moving(points, shape, theta=theta, flow=flow), points + [-0.5, 1.5]
    )


def test_affine_distance_of_a_shift_and_a_rotation_about_the_centre():
    """Against hand geometry: two affines that differ by a pure shift are that far apart
    at every corner; a rotation by a about the centre moves each corner by
    2 r sin(a / 2), r the half diagonal."""
    shape = (61, 81)
    shifted = np.array([[1.0, 0.0, 2.0 * 3.0 / 80], [0.0, 1.0, 2.0 * -4.0 / 60]])  # 3 px in x, -4 in y
    assert reg.affine_distance(np.eye(2, 3), shifted, shape) == pytest.approx(5.0)
    angle = np.radians(10.0)
    # A pixel-frame rotation about the centre in normalised units (aspect 60 / 80).
    aspect = 60.0 / 80.0
    rotated = np.array([[np.cos(angle), -np.sin(angle) * aspect, 0.0], [np.sin(angle) / aspect, np.cos(angle), 0.0]])
    half_diagonal = np.hypot(40.0, 30.0)
    assert reg.affine_distance(np.eye(2, 3), rotated, shape) == pytest.approx(2 * half_diagonal * np.sin(angle / 2))


def test_moving_to_fixed_inverts_fixed_to_moving(rng):
    fixed_shape, moving_shape = (40, 60), (50, 55)
    theta = random_affine(rng)
    flow = np.stack(
        [ndimage.gaussian_filter(rng.normal(0, 30, fixed_shape), 6) for _ in range(2)], axis=-1
    )
    points = np.stack([rng.uniform(2, 37, 20), rng.uniform(2, 57, 20)], axis=-1)
    moving_points = reg.map_fixed_to_moving(points, fixed_shape, moving_shape, theta, flow)
    back = reg.map_moving_to_fixed(moving_points, fixed_shape, moving_shape, theta, flow)
    np.testing.assert_allclose(back, points, atol=1e-3)


def test_non_invertible_flow_is_reported_as_nan():
    shape = (9, 31)
    x = np.arange(31, dtype=np.float64)
    flow = np.zeros(shape + (2,))
    # p + phi(p) = 4x - 45 is invertible, but d phi / dx = 3 > 1: the iterates of
    # p <- c - phi(p) oscillate with growing amplitude until the border clamp, then
    # alternate between the two clamped extremes.
    flow[..., 1] = 3.0 * (x - 15.0)
    carried = reg.map_moving_to_fixed(np.array([[4.0, 16.0]]), shape, flow=flow)
    assert np.isnan(carried).all()


def test_sampling_coordinates_of_identity_is_the_grid():
    coords = reg.sampling_coordinates((5, 7), theta=np.eye(2, 3))
    ys, xs = np.meshgrid(np.arange(5), np.arange(7), indexing="ij")
    np.testing.assert_allclose(coords, np.stack([ys, xs], -1), atol=1e-12)


def test_grid_points_span_the_image_corner_to_corner():
    points = reg.grid_points((5, 9), per_side=3)
    # Rows 0, 2, 4 times columns 0, 4, 8, row-major.
    expected = [[y, x] for y in (0.0, 2.0, 4.0) for x in (0.0, 4.0, 8.0)]
    np.testing.assert_array_equal(points, expected)
    assert reg.grid_points((680, 1024)).shape == (81, 2)
    with pytest.raises(ValueError, match="2 or more"):
        reg.grid_points((5, 9), per_side=1)


def test_inside_image_keeps_the_border_within_the_tolerance():
    points = np.array([[0.0, 0.0], [4.0, 8.0], [-1e-4, 8.0 + 1e-4], [-0.01, 3.0], [2.0, 8.01]])
    np.testing.assert_array_equal(reg.inside_image(points, (5, 9)), [True, True, True, False, False])


def test_landmark_errors_and_summary_hand_case():
    registered = np.array([[0.0, 0.0], [3.0, 4.0], [1.0, 1.0], [0.0, 12.0], [5.0, 0.0]])
    fixed = np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0], [0.0, 0.0], [0.0, 0.0]])
    d = reg.landmark_errors(registered, fixed)
    np.testing.assert_allclose(d, [0, 5, 0, 12, 5])
    summary = reg.landmark_summary(d)
    assert summary["rmse"] == pytest.approx(np.sqrt((25 + 144 + 25) / 5))
    assert summary["mae"] == 12.0
    assert summary["mee"] == 5.0


def test_psnr_of_known_additive_error_and_skimage(rng):
    a = rng.uniform(0, 250, (20, 30))
    assert reg.registration_psnr(a + 5.0, a) == pytest.approx(10 * np.log10(255**2 / 25.0))
    b = np.clip(a + rng.normal(0, 10, a.shape), 0, 255)
    expected = peak_signal_noise_ratio(b, a, data_range=255)
    assert reg.registration_psnr(a, b) == pytest.approx(expected)


def test_psnr_uses_only_the_mask(rng):
    a = rng.uniform(0, 255, (20, 30))
    b = rng.uniform(0, 255, (20, 30))
    mask = np.zeros((20, 30), bool)
    mask[3:15, 5:25] = True
    expected = 10 * np.log10(255**2 / np.mean((a[mask] - b[mask]) ** 2))
    assert reg.registration_psnr(a, b, mask) == pytest.approx(expected)


def test_ssim_matches_skimage(rng):
    a = smooth_image(rng, (40, 50))
    b = np.clip(a + rng.normal(0, 20, a.shape), 0, 255)
    expected = structural_similarity(
        a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
    )
    assert reg.registration_ssim(a, b) == pytest.approx(expected, abs=1e-10)


def test_masked_ssim_ignores_pixels_outside_and_equals_skimage_on_the_crop(rng):
    a = smooth_image(rng, (40, 60))
    b = np.clip(a * 0.8 + rng.normal(0, 15, a.shape), 0, 255)
    mask = np.zeros(a.shape, bool)
    mask[:, :30] = True
    expected = structural_similarity(
        a[:, :30],
        b[:, :30],
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=255,
    )
    black_border = np.where(mask, a, 0.0)
    assert reg.registration_ssim(black_border, b, mask) == pytest.approx(expected, abs=1e-10)


def test_endpoint_error_hand_case():
    true = np.zeros((4, 5, 2))
    pred = true + [3.0, 4.0]
    assert reg.endpoint_error(pred, true) == pytest.approx(5.0)
    pred[0, 0] = [0.0, 0.0]
    mask = np.ones((4, 5), bool)
    mask[1:] = False
    assert reg.endpoint_error(pred, true, mask) == pytest.approx(4 * 5.0 / 5)


def test_single_channel_drops_a_trailing_channel_of_one_and_rejects_other_shapes(rng):
    image = rng.uniform(0, 255, (5, 7))
    squeezed = reg.single_channel(image[..., None], "image", np.float32)
    assert squeezed.shape == (5, 7) and squeezed.dtype == np.float32
    np.testing.assert_array_equal(squeezed, image.astype(np.float32))
    np.testing.assert_array_equal(reg.single_channel(image.tolist(), "image"), image)
    for shape in [(5, 7, 3), (5,), (1, 5, 7, 1)]:
        with pytest.raises(ValueError, match=rf"moving_luma .* got \({shape[0]},"):
            reg.single_channel(np.zeros(shape), "moving_luma")
