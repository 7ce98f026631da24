"""Methods: transforms, validity, landmark errors against independently computed truth
(synthetic misalignments, and real pairs with known affines: the grid metric by hand)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from rfnet_tf.colour import rgb_to_ycbcr
from rfnet_tf.data import AffineRanges, Pair, make_misaligned_pair
from rfnet_tf.evaluation import methods, sources
from rfnet_tf.evaluation.inference import FINE_CALL, MODEL_CALL
from rfnet_tf.evaluation.sources import Sample
from rfnet_tf.metrics.registration import pixel_matrix_to_affine

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


def test_a_pair_without_landmarks_or_truth_scores_psnr_and_ssim_only(rng):
    """Landmark metrics need landmarks and ``epe`` a ground truth; the rest is always there."""
    pair = make_pair(rng)
    grey = Pair(pair.name, vis=np.repeat(pair.nir, 3, axis=-1), nir=pair.nir)
    metrics = methods.apply_registration(Sample(grey), methods.register("identity", Sample(grey), None)).metrics
    assert set(metrics) == {"psnr", "ssim"}
    assert metrics["psnr"] is None or metrics["psnr"] > 60  # identical images: infinite -> None
    assert metrics["ssim"] == pytest.approx(1.0)


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
    fine_flow = np.zeros((40, 50, 2))
    fine_flow[..., 1] = -2.0
    predictions = {
        MODEL_CALL: {"affine": theta, "flow": flow},
        FINE_CALL: {"flow": fine_flow},
    }
    registration = methods.register("rfnet", sample, predictions)
    coordinates = registration.coordinates((40, 50))
    y, x = np.mgrid[0:40, 0:50]
    np.testing.assert_allclose(coordinates[..., 0], y + 1.5, atol=1e-9)
    np.testing.assert_allclose(coordinates[..., 1], x + shift_x, atol=1e-9)
    coarse = methods.register("rfnet_coarse", sample, predictions)
    assert coarse.flow is None
    np.testing.assert_allclose(coarse.coordinates((40, 50))[..., 1], x + shift_x, atol=1e-9)
    # F2M alone: its own call's flow, no affine.
    fine = methods.register("rfnet_fine", sample, predictions)
    assert fine.theta is None
    np.testing.assert_allclose(fine.coordinates((40, 50)), np.stack([y, x - 2.0], axis=-1), atol=1e-9)


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
    assert set(metrics) == {"rmse", "mae", "mee", *methods.SUCCESS_METRICS, "psnr", "ssim"}
    assert metrics["mae"] == pytest.approx(3.0)
    assert metrics["mee"] == pytest.approx(2.0)
    # RMSE sqrt((1 + 9) / 2) = 2.24 px: not within 2 px, within 5 and 10.
    assert [metrics[key] for key in methods.SUCCESS_METRICS] == [False, True, True]
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
    assert registration.theta is None and registration.details == {"correlation": None}
    y, x = np.mgrid[0:64, 0:80]
    np.testing.assert_array_equal(registration.coordinates((64, 80)), np.stack([y, x], -1))


def test_sift_through_the_evaluation_path_reports_its_matches_or_its_failure(
    known_affine_dir, rng
):
    sample = sources.known_affine_folder(sources.Folder(known_affine_dir)).samples[0]
    registration = methods.register("sift", sample, None)
    assert not registration.failed, registration.reason
    assert set(registration.details) == {"matches", "inliers"} and registration.seconds > 0
    assert methods.apply_registration(sample, registration).metrics["rmse"] < 1.5
    flat = make_pair(rng)
    flat.vis = np.full_like(flat.vis, 0.4)
    failed = methods.register("sift", Sample(flat), None)
    assert failed.failed and failed.reason and failed.theta is None


def grid_metric(known_affine_dir, sample: Sample, backward_pixels: np.ndarray) -> np.ndarray:
    """Hand computation of the known-affine metric: the distances, over the 9x9 grid of
    NIR pixels whose true source lies inside the VIS, between the registration's
    ``backward_pixels @ [x, y, 1]`` and the true source (OpenCV's inverse of M)."""
    height, width = sample.pair.height, sample.pair.width
    ys, xs = np.meshgrid(np.linspace(0, height - 1, 9), np.linspace(0, width - 1, 9), indexing="ij")
    grid = np.stack([xs.ravel(), ys.ravel(), np.ones(81)])
    truth = cv2.invertAffineTransform(np.load(known_affine_dir / f"{sample.name}_nir.npy")) @ grid
    kept = (truth[0] >= 0) & (truth[0] <= width - 1) & (truth[1] >= 0) & (truth[1] <= height - 1)
    return np.linalg.norm(backward_pixels @ grid - truth, axis=0)[kept]


def registration_by(backward_pixels: np.ndarray, sample: Sample) -> methods.Registration:
    shape = (sample.pair.height, sample.pair.width)
    return methods.Registration("test", theta=pixel_matrix_to_affine(backward_pixels, shape))


def test_known_affine_identity_scores_the_grid_metric_computed_by_hand(known_affine_dir):
    for sample in sources.known_affine_folder(sources.Folder(known_affine_dir)).samples:
        distances = grid_metric(known_affine_dir, sample, np.eye(2, 3))
        metrics = methods.apply_registration(
            sample, methods.register("identity", sample, None), methods.ground_truth(sample)
        ).metrics
        rmse = np.sqrt(np.mean(distances**2))
        assert metrics["rmse"] == pytest.approx(rmse, abs=1e-6)
        assert metrics["mae"] == pytest.approx(distances.max(), abs=1e-6)
        assert metrics["mee"] == pytest.approx(np.median(distances), abs=1e-6)
        assert metrics["rmse"] > 10.0 and not metrics["success_10px"]


def test_known_affine_true_matrix_scores_zero_and_the_other_convention_badly(known_affine_dir):
    for sample in sources.known_affine_folder(sources.Folder(known_affine_dir)).samples:
        matrix = np.load(known_affine_dir / f"{sample.name}_nir.npy")
        truth = methods.ground_truth(sample)
        true_registration = registration_by(cv2.invertAffineTransform(matrix), sample)
        exact = methods.apply_registration(sample, true_registration, truth).metrics
        assert exact["rmse"] < 0.01 and exact["epe"] < 0.01 and exact["success_2px"]
        # M itself taken as the backward map (the forward / backward mix-up).
        swapped = methods.apply_registration(sample, registration_by(matrix, sample), truth).metrics
        assert swapped["rmse"] > 10.0 and swapped["epe"] > 10.0 and not swapped["success_10px"]


def test_known_affine_errors_of_a_near_miss_are_measured_in_the_vis_frame(known_affine_dir):
    sample = sources.known_affine_folder(sources.Folder(known_affine_dir)).samples[2]
    backward = cv2.invertAffineTransform(np.load(known_affine_dir / f"{sample.name}_nir.npy"))
    near_miss = backward @ np.array([[1.01, 0.004, 1.5], [-0.003, 0.995, -0.8], [0.0, 0.0, 1.0]])
    distances = grid_metric(known_affine_dir, sample, near_miss)
    metrics = methods.apply_registration(sample, registration_by(near_miss, sample)).metrics
    assert metrics["rmse"] == pytest.approx(np.sqrt(np.mean(distances**2)), abs=1e-6)
    assert metrics["mae"] == pytest.approx(distances.max(), abs=1e-6)
    assert 0.5 < metrics["rmse"] < 5.0


def test_fusion_methods_on_the_0_255_scale(rng):
    sample = Sample(make_pair(rng))
    registered = methods.apply_registration(sample, methods.register("identity", sample, None))
    nir = sample.pair.nir
    average = methods.fuse("average", registered, nir, None)
    expected_luma = 255.0 * (sample.pair.vis.astype(np.float64) @ [0.299, 0.587, 0.114])
    np.testing.assert_allclose(average, 0.5 * (expected_luma + 255.0 * nir[..., 0]), atol=1e-4)
    predictions = {
        MODEL_CALL: {"fused": np.full((64, 80, 1), 0.25, np.float32), "fused_rgb": 0},
        FINE_CALL: {"fused": np.full((64, 80, 1), 0.5, np.float32), "fused_rgb": 1},
    }
    np.testing.assert_allclose(methods.fuse("rfnet", registered, nir, predictions), 63.75)
    np.testing.assert_allclose(methods.fuse("rfnet_fine", registered, nir, predictions), 127.5)
    # The model fusions show their own colour image; the others colour their luma.
    assert methods.fusion_rgb("rfnet", None, None, predictions) == 0
    assert methods.fusion_rgb("rfnet_fine", None, None, predictions) == 1
    np.testing.assert_array_equal(
        methods.fusion_rgb("average", average, registered.vis, predictions),
        methods.fused_rgb(average, registered.vis),
    )
    scores = methods.fusion_scores(registered, nir, average, paper_conventions=False)
    assert list(scores) == list(methods.FUSION_METRICS)


def test_laplacian_fusion_of_a_vis_equal_to_the_nir_is_the_nir(rng):
    nir = make_pair(rng).nir
    sample = Sample(Pair(name="same", vis=nir, nir=nir))
    registered = methods.apply_registration(sample, methods.register("identity", sample, None))
    fused = methods.fuse("laplacian", registered, nir, None)
    np.testing.assert_allclose(fused, 255.0 * nir[..., 0], atol=1e-6)


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
    # A method of one kind only is unknown as the other.
    with pytest.raises(ValueError, match="unknown registration method"):
        methods.register("average", sample, None)
    with pytest.raises(ValueError, match="unknown fusion method"):
        methods.fuse("ecc", None, sample.pair.nir, None)


def test_an_entry_needs_model_parts_and_a_call_together_and_a_registration_its_text():
    with pytest.raises(ValueError, match="both model parts and a call"):
        methods.Method("new", "New", parts=("f2m",))
    with pytest.raises(ValueError, match="its text and its function"):
        methods.Method("new", "New", registers="something")


def test_the_help_names_every_method_and_marks_those_not_run_by_default():
    text = methods.methods_help()
    for name in methods.METHODS:
        assert f"{name} (" in text
    listed = methods.REGISTRATION_METHODS + methods.FUSION_METHODS
    assert text.count("not by default") == sum(name not in methods.DEFAULT_METHODS for name in listed)


def test_confidence_carries_the_models_flag_and_no_nan():
    sure = methods.confidence(
        {"coarse_ncc": np.float32(0.8), "coarse_overlap": np.float32(0.9), "coarse_unsure": np.bool_(False)}
    )
    assert sure == {"coarse_ncc": pytest.approx(0.8), "coarse_overlap": pytest.approx(0.9), "unsure": False}
    unsure = methods.confidence({"coarse_ncc": np.nan, "coarse_overlap": 1.0, "coarse_unsure": np.bool_(True)})
    assert unsure == {"coarse_ncc": None, "coarse_overlap": 1.0, "unsure": True}
    assert methods.confidence({"affine": np.eye(2, 3)}) == {}


def test_the_coarse_methods_carry_their_confidence_and_no_flow(aligned_pair):
    theta = np.array([[1.0, 0.0, 0.01], [0.0, 1.0, 0.0]])
    predictions = {
        "rfnet": {"affine": theta, "flow": np.zeros((*aligned_pair.nir.shape[:2], 2)),
                  "coarse_ncc": 0.1, "coarse_overlap": 1.0, "coarse_unsure": True},
        "rfnet_coarse_sift": {"affine": theta, "coarse_ncc": 0.7, "coarse_overlap": 0.9,
                              "coarse_unsure": False, "sift_failed": True},
    }
    sample = Sample(aligned_pair)
    coarse = methods.register("rfnet_coarse", sample, predictions)
    assert coarse.flow is None and coarse.details["unsure"]
    with_sift = methods.register("rfnet_coarse_sift", sample, predictions)
    np.testing.assert_array_equal(with_sift.theta, theta)
    assert with_sift.flow is None and with_sift.details["sift_failed"] and not with_sift.details["unsure"]
