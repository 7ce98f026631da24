"""The compared methods and their metrics on one sample (paper Tables 1 and 2).

Every method is one :class:`Method` entry of :data:`REGISTRY`: its label, what it
needs of the RFNet model, how it registers and / or fuses, and its notes.

Registration methods (Table 1) each give a backward transform from the fixed (NIR)
frame into the moving VIS, ``T(p) = T_theta(p + phi(p))`` (ARCHITECTURE section 1;
``rfnet_tf.metrics.registration``): RFNet's (read from the outputs of an
``inference.Predictor`` call), the identity, and the classic baselines
(``rfnet_tf.baselines``). The classic methods (:data:`FALLIBLE_METHODS`) can fail: a
failed run is reported (``failed``, ``reason`` and the method's own ``details``) and
registers with the identity.

Every method's registered VIS is made by the same numpy warp of the moving VIS at its
``T(p)`` (for RFNet this reproduces the model's own composed single interpolation), so
the methods differ only in their transforms.

Fusion methods (Table 2) fuse the NIR with the VIS registered by *one* registration
(the "fusion registration": ``rfnet`` when evaluated, else the first registration
method requested), so they compare fusion rules on equal footing; a model's fusion
(``rfnet``, ``rfnet_fine``) is its own fused image.

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
from collections.abc import Callable

import numpy as np

from rfnet_tf import baselines
from rfnet_tf.colour import luma, rgb_to_ycbcr, ycbcr_to_rgb
from rfnet_tf.conventions import CONTENT_THRESHOLD
from rfnet_tf.evaluation.inference import COARSE_PARTS, COARSE_SIFT_CALL, FINE_CALL, MODEL_CALL
from rfnet_tf.evaluation.sources import Sample
from rfnet_tf.metrics.fusion import fusion_metrics
from rfnet_tf.metrics.registration import (
    endpoint_error,
    landmark_errors,
    landmark_summary,
    map_fixed_to_moving,
    map_moving_to_fixed,
    registration_psnr,
    registration_ssim,
    sampling_coordinates,
    warp_image,
)
from rfnet_tf.weights import PARTS

@dataclasses.dataclass(frozen=True)
class Method:
    """One compared method: everything the evaluation knows of it (:data:`REGISTRY`).

    Attributes:
      name: the name ``--methods`` takes; label: its column heading in the tables.
      registers: what its registration is (``--methods`` help), or ``""``: no
        registration method (fusion only).
      register: its registration, ``register(name, sample, predictions, ecc_levels)``
        -> :class:`Registration` (see :func:`register`).
      fuses: what its fusion computes (help and results.json notes), or ``""``: no
        fusion method (registration only).
      fuse: a fusion rule ``fuse(registered VIS luma, NIR)`` on 0-255 lumas, or ``None``
        for a fusion method whose fused image is the model's own (``fused`` of its call).
      parts: the RFNet parts it needs (``()``: no model).
      call: the ``inference.Predictor`` call it reads, for a method with ``parts``.
      flow: its registration has a dense flow (shown as an image).
      confident: it reports the coarse registration's confidence (:func:`confidence`).
      succeeds: for a method that may fail (reported, then registered with the
        identity, and timed on its own), what its success means; else ``""``.
      settings: such a method's settings for results.json, ``settings(ecc_levels)``.
      default: evaluated without ``--methods``.
    """

    name: str
    label: str
    registers: str = ""
    register: Callable | None = None
    fuses: str = ""
    fuse: Callable | None = None
    parts: tuple[str, ...] = ()
    call: str | None = None
    flow: bool = False
    confident: bool = False
    succeeds: str = ""
    settings: Callable[[int], dict] | None = None
    default: bool = True

    def __post_init__(self):
        if bool(self.parts) != (self.call is not None):
            raise ValueError(f"{self.name}: a method needs both model parts and a call, or neither")
        if bool(self.registers) != (self.register is not None):
            raise ValueError(f"{self.name}: a registration needs its text and its function")


def _identity(name, sample, predictions, ecc_levels) -> Registration:
    return Registration(name)


def _model_registration(affine: bool, flow: bool) -> Callable:
    """The registration read from an RFNet call's outputs: its affine and / or flow."""

    def register_from(name, sample, predictions, ecc_levels) -> Registration:
        method = REGISTRY[name]
        prediction = predictions[method.call]
        theta = np.asarray(prediction["affine"], np.float64) if affine else None
        field = np.asarray(prediction["flow"], np.float64) if flow else None
        details = confidence(prediction) if method.confident else {}
        for key in ("sift_failed", "sift_kept"):
            if key in prediction:
                details[key] = bool(prediction[key])
        if flow and "fine_kept" in prediction:
            details["fine_kept"] = bool(prediction["fine_kept"])
            details["fine_gain"] = finite_or_none(float(prediction["fine_gain"]))
        return Registration(name, theta=theta, flow=field, details=details)

    return register_from


def _baseline_registration(run: Callable) -> Callable:
    """A classic method that may fail: ``run(moving, fixed, mask, ecc_levels)`` on 0-255
    lumas returns ``(result, details)``; timed here."""

    def register_with(name, sample, predictions, ecc_levels) -> Registration:
        start = time.perf_counter()
        moving = luma_255(sample.pair.vis)
        fixed = sample.pair.nir[..., 0].astype(np.float64) * PEAK
        result, details = run(moving, fixed, sample.moving_mask, ecc_levels)
        return Registration(
            name,
            theta=None if result.failed else result.theta,
            failed=result.failed,
            reason=result.reason,
            details=details,
            seconds=time.perf_counter() - start,
        )

    return register_with


def _ecc(moving, fixed, moving_mask, ecc_levels):
    result = baselines.ecc_affine(moving, fixed, levels=ecc_levels, moving_mask=moving_mask)
    return result, {"correlation": None if result.failed else result.correlation}


def _sift(moving, fixed, moving_mask, ecc_levels):
    result = baselines.sift_affine(moving, fixed, moving_mask=moving_mask)
    return result, {"matches": result.matches, "inliers": result.inliers}


def _sift_settings(ecc_levels: int) -> dict:
    return {
        "representation": baselines.SIFT_REPRESENTATION,
        "ratio": baselines.SIFT_RATIO,
        "ransac_threshold_px": baselines.SIFT_RANSAC_THRESHOLD_PX,
        "min_inliers": baselines.SIFT_MIN_INLIERS,
    }


# Every method, in table order: registration methods (Table 1), then fusion-only ones
# (Table 2). A new method is one entry here (and its test).
REGISTRY = {
    method.name: method
    for method in (
        # The full model: RFNet's affine, then its dense flow.
        Method(
            "rfnet", "RFNet", registers="affine + flow",
            register=_model_registration(affine=True, flow=True),
            fuses="F2M's fused luma", parts=PARTS, call=MODEL_CALL, flow=True, confident=True,
        ),
        Method(
            "rfnet_coarse", "RFNet coarse", registers="the coarse module: affine only",
            register=_model_registration(affine=True, flow=False),
            parts=COARSE_PARTS, call=MODEL_CALL, confident=True,
        ),
        # The coarse module whose guarded search also starts from a SIFT estimate (besides
        # its grid, AffineNet's prediction and the identity), or rfnet_coarse where SIFT
        # fails; a call of its own: an option beyond the paper, evaluated when named.
        Method(
            "rfnet_coarse_sift", "RFNet coarse + SIFT start",
            registers="the coarse module's search started from a SIFT estimate",
            register=_model_registration(affine=True, flow=False),
            parts=COARSE_PARTS, call=COARSE_SIFT_CALL, confident=True, default=False,
        ),
        # F2M alone (RFNet.fine, a call of its own) is an ablation (the paper's
        # Fig. 10(a)): evaluated when named.
        Method(
            "rfnet_fine", "RFNet fine (F2M alone)",
            registers="F2M alone on the unregistered pair: its flow",
            register=_model_registration(affine=False, flow=True),
            fuses="F2M's fused luma of the unregistered pair, registered by its own flow alone",
            parts=("f2m",), call=FINE_CALL, flow=True, default=False,
        ),
        # "Unaligned VIS" in Table 1.
        Method("identity", "unaligned (identity)", registers="unaligned", register=_identity),
        # OpenCV's ECC affine, coarse to fine (baselines.ecc_affine); SIFT keypoints, the
        # ratio test and a RANSAC affine (baselines.sift_affine).
        Method(
            "ecc", "ECC affine", registers="OpenCV ECC affine",
            register=_baseline_registration(_ecc), succeeds="converged",
            settings=lambda ecc_levels: {"levels": ecc_levels},
        ),
        Method(
            "sift", "SIFT affine", registers="SIFT matches, RANSAC affine",
            register=_baseline_registration(_sift),
            succeeds=f"found an affine with at least {baselines.SIFT_MIN_INLIERS} RANSAC inliers",
            settings=_sift_settings,
        ),
        Method(
            "average", "average", fuses="(registered VIS luma + NIR) / 2",
            fuse=baselines.average_fusion,
        ),
        Method(
            "laplacian", "Laplacian pyramid",
            fuses=(
                f"Laplacian pyramids of both ({baselines.LAPLACIAN_LEVELS} detail levels), the "
                "larger absolute detail at each pixel and level, the mean of the bases"
            ),
            fuse=baselines.laplacian_fusion,
        ),
    )
}

# Views of the registry.
METHODS = tuple(REGISTRY)
REGISTRATION_METHODS = tuple(name for name, m in REGISTRY.items() if m.register is not None)
FUSION_METHODS = tuple(name for name, m in REGISTRY.items() if m.fuses)
DEFAULT_METHODS = tuple(name for name, m in REGISTRY.items() if m.default)
# The methods that need the RFNet model: the parts each needs and the call it reads.
MODEL_PARTS = {name: m.parts for name, m in REGISTRY.items() if m.parts}
MODEL_CALLS = {name: m.call for name, m in REGISTRY.items() if m.call is not None}
FUSION_RULES = {name: REGISTRY[name].fuses for name in FUSION_METHODS}
FLOW_METHODS = tuple(name for name, m in REGISTRY.items() if m.flow)
CONFIDENT_METHODS = tuple(name for name, m in REGISTRY.items() if m.confident)
MODEL_FUSION_METHODS = tuple(name for name in FUSION_METHODS if REGISTRY[name].fuse is None)
FALLIBLE_METHODS = tuple(name for name, m in REGISTRY.items() if m.succeeds)
SUCCESS_MEANS = {name: REGISTRY[name].succeeds for name in FALLIBLE_METHODS}


def methods_help() -> str:
    """The ``--methods`` help: every method and what it does, from the registry."""

    def listing(names, text):
        return ", ".join(
            f"{name} ({text(REGISTRY[name])}{'' if REGISTRY[name].default else '; not by default'})"
            for name in names
        )

    return (
        f"Comma-separated methods. Registration: "
        f"{listing(REGISTRATION_METHODS, lambda m: m.registers)}. Fusion of the NIR and the "
        f"VIS registered by rfnet, else by the first registration method: "
        f"{listing(FUSION_METHODS, lambda m: m.fuses)}."
    )


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
        ``coarse_ncc``, ``coarse_overlap`` and ``unsure``, see :func:`confidence`; its
        flow: ``fine_gain`` and ``fine_kept``, ``RFNet``'s guard on F2M's flow).
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
    ecc_levels: int = baselines.ECC_LEVELS,
) -> Registration:
    """The transform of ``method`` for ``sample``.

    Args:
      method: one of :data:`REGISTRATION_METHODS`.
      sample: the pair.
      predictions: ``{call: outputs}`` of the RFNet calls made for the pair
        (``inference.Predictor``; :attr:`Method.call`): a model method reads the
        ``affine`` and / or ``flow`` of its call.
      ecc_levels: ECC pyramid levels.
    """
    if method not in REGISTRATION_METHODS:
        raise ValueError(
            f"unknown registration method {method!r}; methods are {REGISTRATION_METHODS}"
        )
    return REGISTRY[method].register(method, sample, predictions, ecc_levels)


def confidence(prediction: dict) -> dict:
    """The coarse registration's confidence from an RFNet call's outputs: ``coarse_ncc``,
    ``coarse_overlap`` and ``unsure`` (``coarse_unsure``: either below its threshold,
    ``rfnet_tf.networks.refine.Confidence``); empty for outputs without them (older
    SavedModels)."""
    if "coarse_unsure" not in prediction:
        return {}
    return {
        "coarse_ncc": finite_or_none(float(prediction["coarse_ncc"])),
        "coarse_overlap": finite_or_none(float(prediction["coarse_overlap"])),
        "unsure": bool(prediction["coarse_unsure"]),
    }


def method_settings(method: str, ecc_levels: int) -> dict:
    """The settings a method of :data:`FALLIBLE_METHODS` runs with, for results.json."""
    return REGISTRY[method].settings(ecc_levels)


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
    if method not in FUSION_METHODS:
        raise ValueError(f"unknown fusion method {method!r}; methods are {FUSION_METHODS}")
    if method in MODEL_FUSION_METHODS:
        return np.asarray(predictions[MODEL_CALLS[method]]["fused"], np.float64)[..., 0] * PEAK
    return REGISTRY[method].fuse(registered.vis_luma, nir[..., 0].astype(np.float64) * PEAK)


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
