"""The compared methods and their metrics on one sample (paper Tables 1 and 2).

Registration methods (Table 1) each give a backward transform from the fixed (NIR)
frame into the moving VIS, ``T(p) = T_theta(p + phi(p))`` (ARCHITECTURE section 1;
``rfnet_tf.metrics.registration``):

* ``rfnet``: the full model, RFNet's affine then its dense flow;
* ``rfnet_coarse``: the coarse module alone, the affine of the same call;
* ``rfnet_coarse_sift``: the coarse module with a SIFT estimate as one more start of
  its guarded search (an option beyond the paper; a call of its own);
* ``rfnet_fine``: F2M alone on the unregistered pair, its dense flow (``RFNet.fine``,
  a call of its own; the paper's Fig. 10(a));
* ``identity``: the unaligned VIS ("unaligned VIS" in Table 1);
* ``ecc``: OpenCV's ECC affine, coarse to fine (``rfnet_tf.baselines.ecc_affine``);
* ``sift``: SIFT keypoints, ratio test, RANSAC affine (``rfnet_tf.baselines.sift_affine``).

The classic methods (:data:`FALLIBLE_METHODS`) can fail: a failed run is reported
(``failed``, ``reason`` and the method's own ``details``) and registers with the identity.

Every method's registered VIS is made by the same numpy warp of the moving VIS at its
``T(p)`` (for RFNet this reproduces the model's own composed single interpolation), so
the methods differ only in their transforms.

Fusion methods (Table 2) fuse the NIR with the VIS registered by *one* registration
(the "fusion registration": ``rfnet`` when evaluated, else the first registration
method requested), so they compare fusion rules on equal footing:

* ``rfnet``: F2M's fused luma;
* ``rfnet_fine``: F2M's fused luma of the unregistered pair (F2M alone, registering it
  by its own flow);
* ``average``: the mean of that registered VIS luma and the NIR;
* ``laplacian``: Laplacian-pyramid fusion of the two (``rfnet_tf.baselines.laplacian_fusion``).

Validity. PSNR and SSIM use the fixed pixels whose sample point lies inside the moving
image and, for a synthetic misalignment, on its content (the black border a synthetic
warp leaves is not image content). The end-point error compares the method's ``T``
with the true one over the fixed pixels whose true correspondence lies on the moving
image's content: the same region for every method. Fusion metrics are whole-image
statistics of the fused image and see the registered VIS's border as it is.
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np

from rfnet_tf import baselines
from rfnet_tf.colour import luma, rgb_to_ycbcr, ycbcr_to_rgb
from rfnet_tf.conventions import CONTENT_THRESHOLD
from rfnet_tf.evaluation.inference import COARSE_PARTS, COARSE_SIFT_CALL, FINE_CALL, MODEL_CALL
from rfnet_tf.networks.refine import LOW_CONFIDENCE_NCC, LOW_CONFIDENCE_OVERLAP
from rfnet_tf.evaluation.sources import Sample
from rfnet_tf.metrics import (
    fusion_metrics,
    landmark_errors,
    landmark_summary,
    map_fixed_to_moving,
    map_moving_to_fixed,
    sampling_coordinates,
    warp_image,
)
from rfnet_tf.metrics.registration import endpoint_error, registration_psnr, registration_ssim
from rfnet_tf.weights import PARTS

REGISTRATION_METHODS = (
    "rfnet", "rfnet_coarse", "rfnet_coarse_sift", "rfnet_fine", "identity", "ecc", "sift",
)
FUSION_METHODS = ("rfnet", "rfnet_fine", "average", "laplacian")
# What each fusion method computes, for the notes under the tables.
FUSION_RULES = {
    "rfnet": "F2M's fused luma",
    "rfnet_fine": "F2M's fused luma of the unregistered pair, registered by its own flow alone",
    "average": "(registered VIS luma + NIR) / 2",
    "laplacian": (
        f"Laplacian pyramids of both ({baselines.LAPLACIAN_LEVELS} detail levels), the larger "
        "absolute detail at each pixel and level, the mean of the bases"
    ),
}
METHODS = (*REGISTRATION_METHODS, "average", "laplacian")
# F2M alone is an ablation (the paper's Fig. 10(a)) and the SIFT start an option beyond
# the paper: evaluated when named.
DEFAULT_METHODS = tuple(
    method for method in METHODS if method not in ("rfnet_fine", "rfnet_coarse_sift")
)
# Methods that need the RFNet model: the parts each needs, and the call of
# ``inference.Predictor`` it reads (one call of the whole model feeds rfnet and
# rfnet_coarse; F2M alone is a call of its own).
MODEL_PARTS = {
    "rfnet": PARTS,
    "rfnet_coarse": COARSE_PARTS,
    "rfnet_coarse_sift": COARSE_PARTS,
    "rfnet_fine": ("f2m",),
}
MODEL_CALLS = {
    "rfnet": MODEL_CALL,
    "rfnet_coarse": MODEL_CALL,
    "rfnet_coarse_sift": COARSE_SIFT_CALL,
    "rfnet_fine": FINE_CALL,
}
# Methods whose registration is the coarse module's (only an affine), with its
# confidence (``coarse_ncc``, ``coarse_overlap``; unsure below the thresholds of
# rfnet_tf.networks.refine).
AFFINE_ONLY_METHODS = ("rfnet_coarse", "rfnet_coarse_sift")
CONFIDENT_METHODS = ("rfnet", "rfnet_coarse", "rfnet_coarse_sift")
# Registration methods with a dense flow (shown as an image), and fusion methods whose
# fused image is the model's own.
FLOW_METHODS = ("rfnet", "rfnet_fine")
MODEL_FUSION_METHODS = ("rfnet", "rfnet_fine")
# Registration methods that may fail (reported, then registered with the identity) and
# are timed on their own, with what their success means.
FALLIBLE_METHODS = ("ecc", "sift")
SUCCESS_MEANS = {
    "ecc": "converged",
    "sift": f"found an affine with at least {baselines.SIFT_MIN_INLIERS} RANSAC inliers",
}

LANDMARK_METRICS = ("rmse", "mae", "mee")
# A pair counts as registered within t px when its landmark RMSE is below t.
SUCCESS_THRESHOLDS_PX = (2, 5, 10)
SUCCESS_METRICS = tuple(f"success_{threshold}px" for threshold in SUCCESS_THRESHOLDS_PX)
REGISTRATION_METRICS = ("rmse", "mae", "mee", *SUCCESS_METRICS, "psnr", "ssim", "epe")
FUSION_METRICS = ("en", "std", "ag", "sf", "psnr", "mi", "ssim", "qabf")
# Registration errors are better low; every other metric (success rates, registration
# PSNR / SSIM and every fusion metric) is better high.
LOWER_IS_BETTER = {"registration": frozenset({"rmse", "mae", "mee", "epe"}), "fusion": frozenset()}

PEAK = 255.0


@dataclasses.dataclass(eq=False)
class Registration:
    """One method's registration of one sample.

    Attributes:
      method: the method name.
      theta: ``(2, 3)`` normalised backward affine, or ``None`` (identity).
      flow: ``(H, W, 2)`` backward flow ``(dy, dx)`` px after the affine, or ``None``.
      failed, reason: the outcome of a method of :data:`FALLIBLE_METHODS`.
      details: what the method reports besides, for results.json (ECC:
        ``correlation``; SIFT: ``matches``, ``inliers``; RFNet's coarse registration:
        ``coarse_ncc``, ``coarse_overlap`` and ``unsure``, see :func:`confidence`).
      seconds: the method's own run time (the RFNet calls are timed separately).
    """

    method: str
    theta: np.ndarray | None = None
    flow: np.ndarray | None = None
    failed: bool = False
    reason: str = ""
    details: dict = dataclasses.field(default_factory=dict)
    seconds: float = 0.0

    def coordinates(self, shape) -> np.ndarray:
        """``(H, W, 2)`` moving-image ``(y, x)`` sampled by every fixed pixel: ``T(p)``."""
        return sampling_coordinates(shape, theta=self.theta, flow=self.flow)


@dataclasses.dataclass(eq=False)
class Registered:
    """A registration applied to a sample.

    Attributes:
      registration: the transform.
      coordinates: ``(H, W, 2)`` ``T(p)``.
      vis: ``(H, W, C)`` float64 registered VIS in ``[0, 1]``.
      vis_luma: ``(H, W)`` float64 registered VIS luma, 0-255.
      valid: ``(H, W)`` bool, where the registered VIS shows moving-image content.
      metrics: ``{metric: float or None}`` (see :func:`registration_metrics`).
    """

    registration: Registration
    coordinates: np.ndarray
    vis: np.ndarray
    vis_luma: np.ndarray
    valid: np.ndarray
    metrics: dict


def luma_255(image: np.ndarray) -> np.ndarray:
    """``(H, W)`` float64 luma on 0-255 of an ``(H, W, C)`` image in ``[0, 1]``."""
    return np.asarray(luma(np.asarray(image, np.float64)))[..., 0] * PEAK


def register(
    method: str,
    sample: Sample,
    predictions: dict[str, dict[str, np.ndarray]],
    ecc_levels: int = 3,
) -> Registration:
    """The transform of ``method`` for ``sample``.

    Args:
      method: one of :data:`REGISTRATION_METHODS`.
      sample: the pair.
      predictions: ``{call: outputs}`` of the RFNet calls made for the pair
        (``inference.Predictor``; :data:`MODEL_CALLS`): ``rfnet`` reads ``affine`` and
        ``flow``, ``rfnet_coarse`` ``affine`` of the whole model's call, ``rfnet_fine``
        ``flow`` of the fine call.
      ecc_levels: ECC pyramid levels.
    """
    if method == "identity":
        return Registration(method)
    if method in MODEL_CALLS:
        prediction = predictions[MODEL_CALLS[method]]
        theta = None if method == "rfnet_fine" else np.asarray(prediction["affine"], np.float64)
        flow = None if method in AFFINE_ONLY_METHODS else np.asarray(prediction["flow"], np.float64)
        details = confidence(prediction) if method in CONFIDENT_METHODS else {}
        if "sift_failed" in prediction:
            details["sift_failed"] = bool(prediction["sift_failed"])
        return Registration(method, theta=theta, flow=flow, details=details)
    if method not in FALLIBLE_METHODS:
        raise ValueError(
            f"unknown registration method {method!r}; methods are {REGISTRATION_METHODS}"
        )
    start = time.perf_counter()
    moving = luma_255(sample.pair.vis)
    fixed = sample.pair.nir[..., 0].astype(np.float64) * PEAK
    if method == "ecc":
        result = baselines.ecc_affine(
            moving, fixed, levels=ecc_levels, moving_mask=sample.moving_mask
        )
        details = {"correlation": None if result.failed else result.correlation}
    else:
        result = baselines.sift_affine(moving, fixed, moving_mask=sample.moving_mask)
        details = {"matches": result.matches, "inliers": result.inliers}
    return Registration(
        method,
        theta=None if result.failed else result.theta,
        failed=result.failed,
        reason=result.reason,
        details=details,
        seconds=time.perf_counter() - start,
    )


def confidence(prediction: dict) -> dict:
    """The coarse registration's confidence from an RFNet call's outputs: ``coarse_ncc``,
    ``coarse_overlap`` and ``unsure`` (either below ``LOW_CONFIDENCE_NCC`` /
    ``LOW_CONFIDENCE_OVERLAP``); empty for outputs without them (older SavedModels)."""
    if "coarse_ncc" not in prediction:
        return {}
    correlation = float(prediction["coarse_ncc"])
    overlap = float(prediction["coarse_overlap"])
    return {
        "coarse_ncc": finite_or_none(correlation),
        "coarse_overlap": finite_or_none(overlap),
        "unsure": not (correlation >= LOW_CONFIDENCE_NCC and overlap >= LOW_CONFIDENCE_OVERLAP),
    }


def method_settings(method: str, ecc_levels: int) -> dict:
    """The settings a method of :data:`FALLIBLE_METHODS` runs with, for results.json."""
    if method == "ecc":
        return {"levels": ecc_levels}
    return {
        "representation": baselines.SIFT_REPRESENTATION,
        "ratio": baselines.SIFT_RATIO,
        "ransac_threshold_px": baselines.SIFT_RANSAC_THRESHOLD_PX,
        "min_inliers": baselines.SIFT_MIN_INLIERS,
    }


def finite_or_none(value: float) -> float | None:
    """``value`` as a float, or ``None`` if it is NaN or infinite (JSON has neither)."""
    value = float(value)
    return value if math.isfinite(value) else None


@dataclasses.dataclass(eq=False)
class GroundTruth:
    """A sample's true registration, computed once per sample.

    Attributes:
      coordinates: ``(H, W, 2)`` true ``T*(p)`` (``registration_coordinates()`` of the
        sample's truth).
      region: ``(H, W)`` bool, the fixed pixels whose true correspondence lies on the
        moving image's content: where the end-point error is measured.
    """

    coordinates: np.ndarray
    region: np.ndarray


def ground_truth(sample: Sample) -> GroundTruth | None:
    """The sample's :class:`GroundTruth`, or ``None`` for real data."""
    if sample.truth is None:
        return None
    coordinates = sample.truth.registration_coordinates()
    content, inside = warp_image(sample.truth.mask[..., 0], coordinates)
    return GroundTruth(coordinates, inside & (content >= CONTENT_THRESHOLD))


def registration_metrics(
    sample: Sample, registered: Registered, truth: GroundTruth | None
) -> dict[str, float | None]:
    """Paper Table 1 metrics of one registered sample.

    Keys, only when the sample has landmarks: ``rmse, mae, mee`` (landmark errors in px,
    :mod:`rfnet_tf.metrics`, in the frame ``sample.landmark_frame`` names) and
    ``success_2px, success_5px, success_10px`` (whether ``rmse`` is below 2, 5, 10 px;
    their mean over pairs is the share of pairs registered within that error); always:
    ``psnr, ssim``; with a ground truth: ``epe`` (mean end-point error of ``T`` against
    the true registration over ``truth.region``, px). A value that cannot be computed
    (e.g. a landmark whose carried position does not converge under a steep flow, or
    an empty valid region) is ``None``.
    """
    pair = sample.pair
    registration = registered.registration
    nir = pair.nir[..., 0].astype(np.float64) * PEAK
    metrics: dict[str, float | bool | None] = {}
    if pair.has_landmarks:
        transform = {"theta": registration.theta, "flow": registration.flow}
        if sample.landmark_frame == "moving":
            carried = map_fixed_to_moving(pair.nir_points, pair.nir.shape, **transform)
            distances = landmark_errors(carried, pair.vis_points)
        else:
            carried = map_moving_to_fixed(pair.vis_points, pair.nir.shape, **transform)
            distances = landmark_errors(carried, pair.nir_points)
        summary = landmark_summary(distances)
        metrics.update({key: finite_or_none(summary[key]) for key in LANDMARK_METRICS})
        for threshold, key in zip(SUCCESS_THRESHOLDS_PX, SUCCESS_METRICS):
            metrics[key] = None if metrics["rmse"] is None else metrics["rmse"] < threshold
    metrics["psnr"] = finite_or_none(registration_psnr(registered.vis_luma, nir, registered.valid))
    metrics["ssim"] = finite_or_none(registration_ssim(registered.vis_luma, nir, registered.valid))
    if truth is not None:
        metrics["epe"] = finite_or_none(
            endpoint_error(registered.coordinates, truth.coordinates, truth.region)
        )
    return metrics


def apply_registration(
    sample: Sample, registration: Registration, truth: GroundTruth | None = None
) -> Registered:
    """Warps the sample's VIS by ``registration`` and measures it (``truth``:
    :func:`ground_truth` of the sample, for the end-point error)."""
    pair = sample.pair
    coordinates = registration.coordinates(pair.nir.shape)
    channels = pair.vis.shape[-1]
    moving = pair.vis
    if sample.moving_mask is not None:
        # Warped together with the VIS: one interpolation pass for both.
        moving = np.concatenate([moving, sample.moving_mask[..., None]], axis=-1)
    warped, valid = warp_image(moving, coordinates)
    vis = warped[..., :channels]
    if sample.moving_mask is not None:
        valid = valid & (warped[..., channels] >= CONTENT_THRESHOLD)
    registered = Registered(registration, coordinates, vis, luma_255(vis), valid, {})
    registered.metrics = registration_metrics(sample, registered, truth)
    return registered


def fuse(method: str, registered: Registered, nir: np.ndarray, predictions: dict) -> np.ndarray:
    """``(H, W)`` float64 fused luma (0-255) of ``method``.

    Args:
      method: one of :data:`FUSION_METHODS`.
      registered: the fusion registration's result (``average`` and ``laplacian``
        fuse its VIS luma).
      nir: ``(H, W, 1)`` NIR in ``[0, 1]``.
      predictions: ``{call: outputs}`` of the RFNet calls (:func:`register`); a method
        of :data:`MODEL_FUSION_METHODS` takes ``fused`` of its call.
    """
    if method in MODEL_FUSION_METHODS:
        return np.asarray(predictions[MODEL_CALLS[method]]["fused"], np.float64)[..., 0] * PEAK
    if method == "average":
        return baselines.average_fusion(registered.vis_luma, nir[..., 0].astype(np.float64) * PEAK)
    if method == "laplacian":
        return baselines.laplacian_fusion(
            registered.vis_luma, nir[..., 0].astype(np.float64) * PEAK
        )
    raise ValueError(f"unknown fusion method {method!r}; methods are {FUSION_METHODS}")


def fused_rgb(fused_luma: np.ndarray, registered_vis: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` RGB in ``[0, 1]``: a fused luma (0-255) with the registered VIS's
    chroma (ARCHITECTURE section 1; a grey VIS gives a grey image)."""
    fused = fused_luma[..., None] / PEAK
    if registered_vis.shape[-1] == 1:
        return np.repeat(np.clip(fused, 0.0, 1.0), 3, axis=-1)
    chroma = np.asarray(rgb_to_ycbcr(registered_vis))[..., 1:]
    return np.clip(np.asarray(ycbcr_to_rgb(np.concatenate([fused, chroma], axis=-1))), 0.0, 1.0)


def fusion_rgb(
    method: str, fused_luma: np.ndarray, registered_vis: np.ndarray, predictions: dict
) -> np.ndarray:
    """``(H, W, 3)`` RGB in ``[0, 1]`` of ``method``'s fusion: for a method of
    :data:`MODEL_FUSION_METHODS` the model's own ``fused_rgb`` (its luma with the VIS it
    registered itself), else :func:`fused_rgb` of ``fused_luma`` (0-255) and the
    fusion registration's ``registered_vis``."""
    if method in MODEL_FUSION_METHODS:
        return predictions[MODEL_CALLS[method]]["fused_rgb"]
    return fused_rgb(fused_luma, registered_vis)


def fusion_scores(
    registered: Registered, nir: np.ndarray, fused_luma: np.ndarray, paper_conventions: bool
) -> dict[str, float | None]:
    """Paper Table 2 metrics (:data:`FUSION_METRICS`) of one fused image; non-finite -> None."""
    scores = fusion_metrics(
        registered.vis_luma, nir[..., 0].astype(np.float64) * PEAK, fused_luma, paper_conventions
    )
    return {key: finite_or_none(scores[key]) for key in FUSION_METRICS}
