"""Baselines: ECC recovers known synthetic affines, reports failures; average fusion."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from rfnet_tf import baselines
from rfnet_tf.metrics.registration import (
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
