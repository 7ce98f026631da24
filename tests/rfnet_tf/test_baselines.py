"""Baselines: ECC and SIFT recover known affines and report failures; average fusion;
the Laplacian pyramid against OpenCV's and its fusion rule."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from rfnet_tf import baselines
from rfnet_tf.metrics.registration import (
    affine_to_pixel_matrix,
    landmark_errors,
    map_moving_to_fixed,
    sampling_coordinates,
    warp_image,
)

REAL_PAIR = "scene_401.png"  # one of the pairs whose VIS and NIR really are aligned


def synthetic_affine(shape, degrees: float, scale: float, shift_px) -> np.ndarray:
    """Normalised backward affine: rotation + isotropic scale + a pixel shift (dy, dx)."""
    height, width = shape
    angle = math.radians(degrees)
    cos, sin = math.cos(angle), math.sin(angle)
    linear = scale * np.array([[cos, -sin], [sin, cos]])
    # Normalised units differ per axis; convert the linear part so that it is a true
    # rotation in pixels: A_norm = D L D^-1 with D = diag(2/(W-1), 2/(H-1)).
    to_norm = np.diag([2.0 / (width - 1), 2.0 / (height - 1)])
    linear = to_norm @ linear @ np.linalg.inv(to_norm)
    shift = np.array([shift_px[1] * 2.0 / (width - 1), shift_px[0] * 2.0 / (height - 1)])
    return np.hstack([linear, shift[:, None]])


def landmark_rmse(theta_true: np.ndarray, theta_estimated: np.ndarray, shape) -> float:
    """RMSE (fixed px) over a 5x5 grid of fixed landmarks of a synthetic misalignment."""
    height, width = shape
    fractions = np.linspace(0.15, 0.85, 5)
    grid = np.meshgrid(fractions * height, fractions * width, indexing="ij")
    fixed_points = np.stack(grid, axis=-1).reshape(-1, 2)
    moving_points = map_moving_to_fixed(fixed_points, shape, theta=theta_true)
    carried = map_moving_to_fixed(moving_points, shape, theta=theta_estimated)
    return float(np.sqrt(np.mean(landmark_errors(carried, fixed_points) ** 2)))


def textured_image(rng: np.random.Generator, shape=(240, 320)) -> np.ndarray:
    texture = sum(
        ndimage.gaussian_filter(rng.normal(size=shape), sigma) * sigma for sigma in (1.5, 4.0, 12.0)
    )
    return np.clip(128 + 40 * texture / texture.std(), 0, 255)


def test_identity_is_the_identity_affine():
    np.testing.assert_array_equal(baselines.identity(), [[1, 0, 0], [0, 1, 0]])


def test_ecc_translation_sign_follows_our_backward_convention(rng):
    scene = textured_image(rng, (120, 170))
    # Two crops of one scene, no border: fixed[y, x] = moving[y, x + 4], so the
    # registration must sample the moving image 4 px to the right: T(p) = p + (0, 4).
    moving = scene[:, :160]
    fixed = scene[:, 4:164]
    result = baselines.ecc_affine(moving, fixed, levels=2)
    assert not result.failed, result.reason
    expected = np.array([[1.0, 0.0, 4 * 2.0 / (160 - 1)], [0.0, 1.0, 0.0]])
    np.testing.assert_allclose(result.theta, expected, atol=2e-3)


@pytest.mark.parametrize("representation", baselines.REPRESENTATIONS)
def test_ecc_recovers_a_synthetic_affine_across_an_intensity_change(rng, representation):
    fixed = textured_image(rng)
    theta_true = synthetic_affine(fixed.shape, degrees=3.0, scale=1.04, shift_px=(-7.0, 10.0))
    # A different "modality": a monotone, non-linear intensity change.
    other_modality = 255.0 * (fixed / 255.0) ** 0.7
    moving, mask = warp_image(other_modality, sampling_coordinates(fixed.shape, theta=theta_true))
    result = baselines.ecc_affine(moving, fixed, representation=representation, moving_mask=mask)
    assert not result.failed, result.reason
    assert landmark_rmse(theta_true, result.theta, fixed.shape) < 0.2
    assert result.correlation > 0.9


def test_ecc_recovers_a_synthetic_affine_on_a_real_vis_nir_pair(vis_nir_dir):
    rgb = np.asarray(Image.open(vis_nir_dir / "vis" / REAL_PAIR).convert("RGB"), dtype=np.float64)
    vis_luma = rgb @ np.array([0.299, 0.587, 0.114])
    nir = np.asarray(Image.open(vis_nir_dir / "nir" / REAL_PAIR).convert("L"), dtype=np.float64)
    theta_true = synthetic_affine(nir.shape, degrees=-3.0, scale=0.97, shift_px=(8.0, -10.0))
    moving, mask = warp_image(vis_luma, sampling_coordinates(nir.shape, theta=theta_true))
    unaligned = landmark_rmse(theta_true, baselines.identity(), nir.shape)
    result = baselines.ecc_affine(moving, nir, moving_mask=mask)
    assert not result.failed, result.reason
    assert unaligned > 10.0
    assert landmark_rmse(theta_true, result.theta, nir.shape) < 1.0


def test_ecc_failure_is_reported_not_hidden(rng):
    constant = np.full((120, 160), 90.0)
    result = baselines.ecc_affine(constant, textured_image(rng, (120, 160)))
    assert result.failed
    assert result.reason
    assert math.isnan(result.correlation)
    np.testing.assert_array_equal(result.theta, baselines.identity())


def test_average_fusion_hand_case():
    vis = np.array([[0.0, 10.0], [200.0, 255.0]])
    nir = np.array([[100.0, 20.0], [0.0, 255.0]])
    np.testing.assert_allclose(baselines.average_fusion(vis, nir), [[50.0, 15.0], [100.0, 255.0]])


def test_sift_recovers_the_known_affines_of_real_pairs(known_affine_dir):
    """Real RGBs and their NIRs warped by known matrices M: SIFT's backward pixel map (on
    the luma, the default) must agree with OpenCV's inverse of M at the image's corners
    and centre."""
    for matrix_file in sorted(known_affine_dir.glob("*/*_nir.npy")):
        number = matrix_file.name[:4]
        rgb = cv2.imread(str(matrix_file.parent / f"{number}_rgb.jpg"), cv2.IMREAD_COLOR)
        luma = rgb[..., ::-1].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        nir = cv2.imread(str(matrix_file.with_suffix(".jpg")), cv2.IMREAD_GRAYSCALE)
        true_backward = cv2.invertAffineTransform(np.load(matrix_file))
        result = baselines.sift_affine(luma, nir.astype(np.float64))
        assert not result.failed, (matrix_file, result.reason)
        assert baselines.SIFT_MIN_INLIERS <= result.inliers <= result.matches
        found = affine_to_pixel_matrix(result.theta, nir.shape, luma.shape)
        height, width = nir.shape
        corners_and_centre = np.array(
            [[0, 0], [width - 1, 0], [0, height - 1], [width - 1, height - 1], [width / 2, height / 2]]
        )
        points = np.hstack([corners_and_centre, np.ones((5, 1))]).T
        errors = np.linalg.norm(found @ points - true_backward @ points, axis=0)
        assert errors.max() < 1.5, (matrix_file, errors)


def test_sift_on_gradients_survives_a_contrast_inversion_that_defeats_the_luma(rng):
    fixed = textured_image(rng)
    theta_true = synthetic_affine(fixed.shape, degrees=4.0, scale=0.95, shift_px=(6.0, -9.0))
    inverted, mask = warp_image(255.0 - fixed, sampling_coordinates(fixed.shape, theta=theta_true))
    on_gradients = baselines.sift_affine(inverted, fixed, "gradient", moving_mask=mask)
    assert not on_gradients.failed, on_gradients.reason
    assert landmark_rmse(theta_true, on_gradients.theta, fixed.shape) < 0.3
    on_luma = baselines.sift_affine(inverted, fixed, "intensity", moving_mask=mask)
    assert on_luma.failed and on_luma.inliers < baselines.SIFT_MIN_INLIERS


def test_sift_failure_is_reported_not_hidden(rng):
    flat = np.full((120, 160), 90.0)
    result = baselines.sift_affine(flat, textured_image(rng, (120, 160)))
    assert result.failed and "keypoints" in result.reason
    np.testing.assert_array_equal(result.theta, baselines.identity())
    # A moving mask with no valid pixel leaves no moving keypoint either.
    texture = textured_image(rng, (120, 160))
    masked = baselines.sift_affine(texture, texture, moving_mask=np.zeros((120, 160)))
    assert masked.failed and "(0 moving" in masked.reason
    unmasked = baselines.sift_affine(texture, texture)
    assert not unmasked.failed
    np.testing.assert_allclose(unmasked.theta, baselines.identity(), atol=1e-3)


@pytest.mark.parametrize("shape", [(16, 20), (17, 21), (15, 9), (3, 4), (1, 5)])
def test_pyramid_steps_equal_opencvs(rng, shape):
    image = rng.uniform(0, 255, shape)
    down = baselines.pyramid_down(image)
    np.testing.assert_allclose(down, cv2.pyrDown(image), atol=1e-10)
    height, width = shape
    np.testing.assert_allclose(
        baselines.pyramid_up(down, shape), cv2.pyrUp(down, dstsize=(width, height)), atol=1e-10
    )


def opencv_laplacian_pyramid(image: np.ndarray, levels: int) -> list[np.ndarray]:
    gaussian = [image]
    for _ in range(levels):
        gaussian.append(cv2.pyrDown(gaussian[-1]))
    details = [
        fine - cv2.pyrUp(coarse, dstsize=(fine.shape[1], fine.shape[0]))
        for fine, coarse in zip(gaussian[:-1], gaussian[1:])
    ]
    return [*details, gaussian[-1]]


def test_laplacian_pyramid_equals_opencvs_and_collapses_back_exactly(rng):
    image = rng.uniform(0, 255, (45, 61))
    pyramid = baselines.laplacian_pyramid(image, 3)
    reference = opencv_laplacian_pyramid(image, 3)
    assert [level.shape for level in pyramid] == [(45, 61), (23, 31), (12, 16), (6, 8)]
    for level, expected in zip(pyramid, reference):
        np.testing.assert_allclose(level, expected, atol=1e-10)
    np.testing.assert_allclose(baselines.collapse_laplacian_pyramid(pyramid), image, atol=1e-10)


def test_laplacian_fusion_follows_its_rule_on_opencvs_pyramids(rng):
    vis = textured_image(rng, (40, 52))
    nir = 255.0 - textured_image(rng, (40, 52))
    levels = 3
    a, b = opencv_laplacian_pyramid(vis, levels), opencv_laplacian_pyramid(nir, levels)
    fused = [np.where(np.abs(x) >= np.abs(y), x, y) for x, y in zip(a[:-1], b[:-1])]
    image = (a[-1] + b[-1]) / 2
    for detail in reversed(fused):
        image = detail + cv2.pyrUp(image, dstsize=(detail.shape[1], detail.shape[0]))
    np.testing.assert_allclose(baselines.laplacian_fusion(vis, nir, levels), image, atol=1e-9)


def test_laplacian_fusion_analytic_cases(rng):
    image = textured_image(rng, (33, 47))
    # Fusing an image with itself gives it back; two constants give their mean.
    np.testing.assert_allclose(baselines.laplacian_fusion(image, image), image, atol=1e-9)
    constants = baselines.laplacian_fusion(np.full((33, 47), 40.0), np.full((33, 47), 100.0))
    np.testing.assert_allclose(constants, 70.0, atol=1e-9)
    # Detail in one image only is kept whole, over the mean of the two bases.
    flat = np.full((33, 47), 100.0)
    pyramid = baselines.laplacian_pyramid(image, 3)
    with_detail = baselines.laplacian_fusion(image, flat, levels=3)
    expected = image - baselines.collapse_laplacian_pyramid(
        [np.zeros_like(level) for level in pyramid[:-1]] + [pyramid[-1] / 2 - 50.0]
    )
    np.testing.assert_allclose(with_detail, expected, atol=1e-9)
    with pytest.raises(ValueError, match="one shape"):
        baselines.laplacian_fusion(image, image[:-1])
