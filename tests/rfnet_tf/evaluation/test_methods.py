"""Methods: transforms, validity, landmark errors against independently computed truth."""

from __future__ import annotations

import numpy as np
import pytest

from rfnet_tf.colour import rgb_to_ycbcr
from rfnet_tf.data import AffineRanges, make_misaligned_pair
from rfnet_tf.evaluation import methods
from rfnet_tf.evaluation.sources import Sample

from .conftest import make_pair

SMALL_AFFINE = AffineRanges(
    max_rotation_deg=3.0, scale_range=(0.97, 1.03), max_shear=0.02, max_translation=0.03
)


def synthetic_sample(rng, kind="affine", shape=(64, 80), affine_ranges=AffineRanges()) -> Sample:
    truth = make_misaligned_pair(make_pair(rng, shape), rng, kind, 5, affine_ranges)
    return Sample(truth.pair, truth)


def test_identity_landmark_error_is_the_known_misalignment(rng):
    sample = synthetic_sample(rng)
    # Independently: the fixed landmark q's content sits at A_px [x, y, 1] in the moving image.
    matrix = sample.truth.affine.registration_pixels()
    fixed = sample.pair.nir_points
    moving_x = matrix[0, 0] * fixed[:, 1] + matrix[0, 1] * fixed[:, 0] + matrix[0, 2]
    moving_y = matrix[1, 0] * fixed[:, 1] + matrix[1, 1] * fixed[:, 0] + matrix[1, 2]
    distances = np.hypot(moving_y - fixed[:, 0], moving_x - fixed[:, 1])

    registered = methods.apply_registration(
        sample, methods.register("identity", sample, None), methods.ground_truth(sample)
    )
    metrics = registered.metrics
    assert metrics["rmse"] == pytest.approx(np.sqrt(np.mean(distances**2)), rel=1e-9)
    assert metrics["mae"] == pytest.approx(distances.max(), rel=1e-9)
    assert metrics["mee"] == pytest.approx(np.median(distances), rel=1e-9)
    assert metrics["rmse"] > 1.0


@pytest.mark.parametrize("kind", ["affine", "both"])
def test_the_true_registration_has_no_error(rng, kind):
    sample = synthetic_sample(rng, kind)
    truth = sample.truth
    flow = None if truth.field is None else truth.field.registration
    registration = methods.Registration("rfnet", theta=truth.affine.registration, flow=flow)
    metrics = methods.apply_registration(sample, registration, methods.ground_truth(sample)).metrics
    assert set(metrics) == set(methods.REGISTRATION_METRICS)
    assert metrics["epe"] < 1e-6
    assert metrics["rmse"] < 1e-3  # the local field's inverse is exact to 1e-4 px


def test_rfnet_composes_affine_then_flow(rng):
    sample = Sample(make_pair(rng, (40, 50)))
    shift_x = 3.0
    theta = np.array([[1.0, 0.0, shift_x * 2.0 / 49.0], [0.0, 1.0, 0.0]])
    flow = np.zeros((40, 50, 2))
    flow[..., 0] = 1.5
    registration = methods.register("rfnet", sample, {"affine": theta, "flow": flow})
    coordinates = registration.coordinates((40, 50))
    y, x = np.mgrid[0:40, 0:50]
    np.testing.assert_allclose(coordinates[..., 0], y + 1.5, atol=1e-9)
    np.testing.assert_allclose(coordinates[..., 1], x + shift_x, atol=1e-9)
    coarse = methods.register("rfnet_coarse", sample, {"affine": theta, "flow": flow})
    assert coarse.flow is None
    np.testing.assert_allclose(coarse.coordinates((40, 50))[..., 1], x + shift_x, atol=1e-9)


def test_valid_region_excludes_the_black_border_of_a_synthetic_warp(rng):
    sample = synthetic_sample(rng)
    registered = methods.apply_registration(sample, methods.register("identity", sample, None))
    np.testing.assert_array_equal(registered.valid, sample.truth.mask[..., 0] >= 0.999)
    assert not registered.valid.all()


def test_metric_keys_follow_what_the_source_provides(rng):
    pair = make_pair(rng)
    real = Sample(pair)
    metrics = methods.apply_registration(real, methods.register("identity", real, None)).metrics
    assert set(metrics) == {"psnr", "ssim"}
    pair.vis_points = np.array([[10.0, 12.0], [30.0, 40.0]])
    pair.nir_points = np.array([[11.0, 12.0], [30.0, 43.0]])
    metrics = methods.apply_registration(real, methods.register("identity", real, None)).metrics
    assert set(metrics) == {"rmse", "mae", "mee", "psnr", "ssim"}
    assert metrics["mae"] == pytest.approx(3.0)
    assert metrics["mee"] == pytest.approx(2.0)
    # Identical images: PSNR is infinite, which JSON cannot hold: it becomes None.
    same = Sample(type(pair)(name="same", vis=pair.nir, nir=pair.nir))
    assert methods.apply_registration(same, methods.register("identity", same, None)).metrics["psnr"] is None


def test_ecc_recovers_a_small_affine_through_the_evaluation_path(rng):
    sample = synthetic_sample(rng, "affine", (96, 128), SMALL_AFFINE)
    registration = methods.register("ecc", sample, None, ecc_levels=2)
    assert not registration.failed, registration.reason
    metrics = methods.apply_registration(sample, registration, methods.ground_truth(sample)).metrics
    assert metrics["rmse"] < 0.5
    assert metrics["epe"] < 0.5


def test_ecc_failure_is_reported_and_registers_with_the_identity(rng):
    pair = make_pair(rng)
    pair.vis = np.full_like(pair.vis, 0.4)
    sample = Sample(pair)
    registration = methods.register("ecc", sample, None)
    assert registration.failed and registration.reason
    assert registration.theta is None and registration.correlation is None
    y, x = np.mgrid[0:64, 0:80]
    np.testing.assert_array_equal(registration.coordinates((64, 80)), np.stack([y, x], -1))


def test_fusion_methods_on_the_0_255_scale(rng):
    sample = Sample(make_pair(rng))
    registered = methods.apply_registration(sample, methods.register("identity", sample, None))
    nir = sample.pair.nir
    average = methods.fuse("average", registered, nir, None)
    expected_luma = 255.0 * (sample.pair.vis.astype(np.float64) @ [0.299, 0.587, 0.114])
    np.testing.assert_allclose(average, 0.5 * (expected_luma + 255.0 * nir[..., 0]), atol=1e-4)
    fused = np.full((64, 80, 1), 0.25, np.float32)
    np.testing.assert_allclose(methods.fuse("rfnet", registered, nir, {"fused": fused}), 63.75)
    scores = methods.fusion_scores(registered, nir, average, paper_conventions=False)
    assert list(scores) == list(methods.FUSION_METRICS)


def test_fused_rgb_carries_the_fused_luma_and_the_registered_chroma(rng):
    vis = 0.3 + 0.4 * rng.random((20, 24, 3))
    fused_luma = 255.0 * (0.35 + 0.3 * rng.random((20, 24)))
    rgb = methods.fused_rgb(fused_luma, vis)
    ycbcr = np.asarray(rgb_to_ycbcr(rgb))
    np.testing.assert_allclose(ycbcr[..., 0], fused_luma / 255.0, atol=1e-6)
    np.testing.assert_allclose(ycbcr[..., 1:], np.asarray(rgb_to_ycbcr(vis))[..., 1:], atol=1e-6)
    grey = methods.fused_rgb(fused_luma, vis[..., :1])
    np.testing.assert_allclose(grey, np.repeat(fused_luma[..., None] / 255.0, 3, axis=-1))


def test_unknown_methods_are_rejected(rng):
    sample = Sample(make_pair(rng))
    with pytest.raises(ValueError, match="unknown registration method"):
        methods.register("nope", sample, None)
    with pytest.raises(ValueError, match="unknown fusion method"):
        methods.fuse("nope", None, sample.pair.nir, None)
