"""Validation during training: held-out landmark RMSE against an independent computation."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from rfnet_tf.data.synthetic import AffineRanges
from rfnet_tf.networks import RFNet
from rfnet_tf.training.validation import Validation, end_point_error, landmark_rmse

from .conftest import textured_pair

PAIRS = [textured_pair("a", 80, 96, seed=5), textured_pair("b", 72, 88, seed=6)]


def direct_rmse(fixed, moving):
    return float(np.sqrt(np.mean(np.sum((np.asarray(fixed) - np.asarray(moving)) ** 2, axis=1))))


def test_unregistered_rmse_is_the_landmark_distance_and_the_truth_scores_zero():
    validation = Validation("affinenet", PAIRS, draws=2)
    assert len(validation.samples) == 4
    direct = [direct_rmse(s.pair.nir_points, s.pair.vis_points) for s in validation.samples]
    assert validation.identity["identity_rmse_mean"] == pytest.approx(np.mean(direct))
    assert validation.identity["identity_rmse_median"] == pytest.approx(np.median(direct))
    for sample in validation.samples:
        assert landmark_rmse(sample, theta=sample.truth.affine.registration) < 1e-6
        assert end_point_error(sample, theta=sample.truth.affine.registration) < 1e-6


def test_end_point_error_against_a_direct_computation_and_defined_for_a_folding_flow():
    """The identity's error is the mean length of the true registration flow; a folding
    flow (no inverse: the landmark RMSE is NaN) still gets its finite mean distance."""
    validation = Validation("deformation", PAIRS[:1], draws=1)
    (sample,) = validation.samples
    truth = sample.truth.registration_flow()
    assert end_point_error(sample) == pytest.approx(np.mean(np.linalg.norm(truth, axis=-1)))
    height, width = sample.pair.nir.shape[:2]
    fold = np.zeros((height, width, 2))
    fold[..., 1] = 3.0 * np.sin(np.arange(width) / 2.0)[None, :]
    assert np.isnan(landmark_rmse(sample, flow=fold))
    direct = np.mean(np.linalg.norm(truth - fold, axis=-1))
    assert end_point_error(sample, flow=fold) == pytest.approx(direct, rel=1e-6)


def test_draws_are_the_evaluation_seeds_and_differ():
    validation = Validation("affinenet", PAIRS[:1], draws=2)
    first, second = (s.truth.affine.misalignment for s in validation.samples)
    assert not np.allclose(first, second)


@pytest.mark.parametrize("stage", ["affinenet", "deformation"])
def test_a_new_network_registers_as_the_identity(stage):
    """An AffineNet whose head is zero predicts the identity, and a new deformation block
    (zero-initialised head) a zero flow, so the stage's RMSE equals the unregistered one."""
    validation = Validation(stage, PAIRS, draws=1, affine_ranges=AffineRanges(max_rotation_deg=5.0))
    model = RFNet(affine_input_size=32)
    kernel = model.affinenet.head.kernel
    kernel.assign(tf.zeros_like(kernel))
    results = validation(model)
    assert results["rmse_mean"] == pytest.approx(results["identity_rmse_mean"], rel=1e-4)
    assert results["rmse_median"] == pytest.approx(results["identity_rmse_median"], rel=1e-4)
    assert results["epe_mean"] == pytest.approx(results["identity_epe_mean"], rel=1e-4)
    assert validation(model) == results  # the traced function is reused


def test_unknown_stage_and_empty_pairs_are_refused():
    with pytest.raises(ValueError, match="no validation for stage 'fusion'"):
        Validation("fusion", PAIRS)
    with pytest.raises(ValueError):
        Validation("affinenet", [])
