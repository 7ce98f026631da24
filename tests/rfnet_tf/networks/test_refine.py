import math

import numpy as np
import pytest
import tensorflow as tf
from scipy.ndimage import gaussian_filter

from layers import affine_grid, warp_affine
from rfnet_tf.networks import RFNet
from rfnet_tf.networks.refine import (
    START_OFFSETS,
    affine_ncc,
    compose_affines,
    refine_affine,
    similarity_offsets,
)

IDENTITY = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], np.float32)


def _homogeneous(affine: np.ndarray) -> np.ndarray:
    return np.vstack([affine, [0.0, 0.0, 1.0]])


def _texture(size: int, seed: int) -> np.ndarray:
    noise = gaussian_filter(np.random.default_rng(seed).standard_normal((size, size)), 2.5)
    return ((noise - noise.min()) / (noise.max() - noise.min())).astype(np.float32)


def _misalignment(rotation_deg: float, scale: float, shift_y: float, shift_x: float) -> np.ndarray:
    c = scale * math.cos(math.radians(rotation_deg))
    s = scale * math.sin(math.radians(rotation_deg))
    return np.array([[c, -s, shift_x], [s, c, shift_y]], np.float32)


def _point_error(affine: np.ndarray, truth: np.ndarray, size: int) -> float:
    """Mean pixel distance between the two affines' sample points, 8 px from the border."""
    points = affine_grid(tf.constant(affine[None]), size, size).numpy()[0]
    true_points = affine_grid(tf.constant(truth[None]), size, size).numpy()[0]
    return float(np.linalg.norm(points - true_points, axis=-1)[8:-8, 8:-8].mean())


def test_similarity_offsets_against_numpy():
    offsets = ((0.0, 1.0, 0.0, 0.0), (30.0, 2.0, -0.5, 0.25))
    matrices = similarity_offsets(offsets).numpy()
    np.testing.assert_allclose(matrices[0], np.eye(3), atol=1e-7)
    c, s = 2.0 * math.cos(math.pi / 6), 2.0 * math.sin(math.pi / 6)
    np.testing.assert_allclose(matrices[1], [[c, -s, 0.25], [s, c, -0.5], [0, 0, 1]], atol=1e-6)
    assert similarity_offsets().shape == (len(START_OFFSETS), 3, 3)


def test_compose_affines_is_the_product_of_homogeneous_matrices():
    rng = np.random.default_rng(0)
    outer = rng.standard_normal((4, 2, 3)).astype(np.float32)
    inner = np.stack([_homogeneous(a) for a in rng.standard_normal((4, 2, 3))]).astype(np.float32)
    expected = np.stack([(_homogeneous(o) @ i)[:2] for o, i in zip(outer, inner)])
    np.testing.assert_allclose(compose_affines(tf.constant(outer), tf.constant(inner)), expected, rtol=1e-5, atol=1e-6)


def _masked_ncc(a: np.ndarray, b: np.ndarray, mask: np.ndarray, eps: float = 1e-5) -> float:
    weights = mask / mask.sum()
    a_centred = a - (a * weights).sum()
    b_centred = b - (b * weights).sum()
    covariance = (a_centred * b_centred * weights).sum()
    return covariance / np.sqrt(((a_centred**2 * weights).sum() + eps) * ((b_centred**2 * weights).sum() + eps))


def test_affine_ncc_against_numpy_and_peaks_at_the_true_registration():
    fixed = _texture(48, seed=1)[None, ..., None]
    misalignment = _misalignment(4.0, 1.05, 0.05, -0.04)
    moving, _ = warp_affine(tf.constant(fixed), misalignment[None])
    truth = np.linalg.inv(_homogeneous(misalignment))[:2].astype(np.float32)
    at_truth = float(affine_ncc(tf.constant(truth[None]), moving, tf.constant(fixed))[0])
    warped, mask = warp_affine(moving, truth[None])
    np.testing.assert_allclose(at_truth, _masked_ncc(warped.numpy(), fixed, mask.numpy()), atol=1e-5)
    at_identity = float(affine_ncc(tf.constant(IDENTITY[None]), moving, tf.constant(fixed))[0])
    # (Below 1 only by the blur of interpolating twice.)
    assert at_truth > 0.97 and at_truth - at_identity > 0.3


def test_zero_steps_return_the_start_unchanged():
    theta = tf.constant(np.random.default_rng(0).standard_normal((2, 2, 3)).astype(np.float32))
    images = tf.zeros([2, 32, 32, 1])
    assert refine_affine(theta, images, images, steps=0) is theta


def test_recovers_each_image_of_a_batch_from_the_identity():
    """Two images with different, large misalignments (beyond a single descent's reach
    for the first) are registered to sub-pixel accuracy, each with its own affine; the
    search runs in a tf.function with unknown batch and image size."""
    size = 64
    fixed = np.stack([_texture(size, seed=2), _texture(size, seed=3)])[..., None]
    misalignments = np.stack([_misalignment(8.0, 1.15, 0.15, -0.12), _misalignment(-3.0, 0.92, -0.06, 0.08)])
    moving, _ = warp_affine(tf.constant(fixed), tf.constant(misalignments))
    truths = [np.linalg.inv(_homogeneous(m))[:2].astype(np.float32) for m in misalignments]

    spec = tf.TensorSpec([None, None, None, 1], tf.float32)

    @tf.function(input_signature=[tf.TensorSpec([None, 2, 3], tf.float32), spec, spec])
    def refine(theta, moving, fixed):
        return refine_affine(theta, moving, fixed, steps=60, levels=2)

    refined = refine(tf.constant(np.stack([IDENTITY, IDENTITY])), moving, tf.constant(fixed)).numpy()
    for index, truth in enumerate(truths):
        before = _point_error(IDENTITY, truth, size)
        after = _point_error(refined[index], truth, size)
        assert before > 3.0
        assert after < 0.5, (index, before, after)


def test_rfnet_config_carries_the_refinement():
    model = RFNet(affine_input_size=64, coarse_refinement_steps=5, coarse_refinement_levels=2)
    config = model.get_config()
    restored = RFNet.from_config(config)
    assert restored.get_config() == config
    assert (restored.coarse_refinement_steps, restored.coarse_refinement_levels) == (5, 2)
    with pytest.raises(ValueError, match="coarse_refinement_steps"):
        RFNet(coarse_refinement_steps=-1)

