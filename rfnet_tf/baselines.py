"""Classic baselines for paper Tables 1 and 2 (numpy / OpenCV, no TensorFlow).

* ``identity``: the unaligned input ("unaligned VIS" in Table 1).
* ``ecc_affine``: OpenCV's ECC (Evangelidis & Psarakis, TPAMI 2008) affine
  registration, coarse to fine, returned in the project's normalised backward affine
  convention (ARCHITECTURE section 1), so it plugs into the same warps and metrics as
  AffineNet's output.
* ``sift_affine``: a feature-based affine, the kind of the paper's Table 1 peers: SIFT
  keypoints (Lowe, IJCV 2004) matched with the ratio test, affine by RANSAC; same
  convention.
* ``average_fusion``: the mean of the registered VIS luma and the NIR image (the
  "average weighted strategy" the paper uses to show coarse-registered pairs).
* ``laplacian_fusion``: multi-scale fusion on Laplacian pyramids (Burt & Adelson,
  1983/1985): the larger absolute detail at every level, the average of the bases.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from rfnet_tf.metrics.registration import (
    affine_to_pixel_matrix,
    pixel_matrix_to_affine,
    single_channel,
)

REPRESENTATIONS = ("intensity", "gradient")
# ECC baseline (ecc_affine): pyramid levels, coarse to fine.
ECC_LEVELS = 3
# SIFT baseline (sift_affine): Lowe's ratio, RANSAC's inlier distance and the fewest
# inliers accepted as a registration (OpenCV's feature-homography tutorial asks for 10).
SIFT_REPRESENTATION = "intensity"
SIFT_RATIO = 0.75
SIFT_RANSAC_THRESHOLD_PX = 3.0
SIFT_MIN_INLIERS = 10
# Keypoints of a moving image are kept this many pixels away from its invalid region, so
# that the edge of a black border makes none.
SIFT_MASK_MARGIN_PX = 8
# An estimated affine whose 2x2 part has a smaller determinant has collapsed.
MIN_DETERMINANT = 1e-3
# Laplacian fusion: detail levels (a 1024x680 image keeps a 64x43 base); the binomial
# kernel of Burt and Adelson's pyramid, as OpenCV's pyrDown / pyrUp.
LAPLACIAN_LEVELS = 4
BINOMIAL_KERNEL = np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0


def identity() -> np.ndarray:
    """The identity affine ``[[1, 0, 0], [0, 1, 0]]``, ``(2, 3)`` float64 (normalised)."""
    return np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


@dataclasses.dataclass(frozen=True)
class EccResult:
    """Outcome of ``ecc_affine``.

    Attributes:
      theta: ``(2, 3)`` float64 normalised backward affine (fixed frame -> moving image):
        ``registered[p] = moving[T_theta(p)]``. The identity when ``failed``.
      failed: True if OpenCV raised at any pyramid level (e.g. non-convergence,
        uncorrelated or constant images) or returned a non-finite warp.
      reason: OpenCV's message and the level (empty on success).
      correlation: the final enhanced correlation coefficient at the finest level
        (NaN when failed).
    """

    theta: np.ndarray
    failed: bool
    reason: str
    correlation: float


def _representation(image: np.ndarray, representation: str, blur_sigma: float) -> np.ndarray:
    """Float32 image ECC aligns: blurred luma, or its Sobel gradient magnitude."""
    image = image.astype(np.float32)
    if blur_sigma > 0:
        image = cv2.GaussianBlur(image, (0, 0), blur_sigma)
    if representation == "intensity":
        return image
    gx = cv2.Sobel(image, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(image, cv2.CV_32F, 0, 1, ksize=3)
    return cv2.magnitude(gx, gy)


def _pyramid_level(image: np.ndarray, level: int) -> np.ndarray:
    if level == 0:
        return image
    height, width = image.shape
    size = (max(width >> level, 8), max(height >> level, 8))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _registration_inputs(
    moving_luma, fixed_luma, moving_mask, representation: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The checked ``(moving, fixed, moving_mask)`` of a registration baseline, float32
    ``(H, W)`` each (the mask ``None`` when not given)."""
    if representation not in REPRESENTATIONS:
        raise ValueError(f"representation must be one of {REPRESENTATIONS}, got {representation!r}")
    moving = single_channel(moving_luma, "moving_luma", np.float32)
    fixed = single_channel(fixed_luma, "fixed_luma", np.float32)
    if moving_mask is not None:
        moving_mask = single_channel(moving_mask, "moving_mask", np.float32)
        if moving_mask.shape != moving.shape:
            raise ValueError(f"moving_mask shape {moving_mask.shape} differs from {moving.shape}")
    return moving, fixed, moving_mask


def ecc_affine(
    moving_luma,
    fixed_luma,
    levels: int = ECC_LEVELS,
    iterations: int = 200,
    eps: float = 1e-6,
    representation: str = "intensity",
    blur_sigma: float = 1.0,
    gauss_filter_size: int = 5,
    initial_theta: np.ndarray | None = None,
    moving_mask=None,
) -> EccResult:
    """Coarse-to-fine ECC affine registration of ``moving_luma`` onto ``fixed_luma``.

    Level ``k`` (from ``levels - 1`` down to 0) runs ``cv2.findTransformECC`` with
    ``MOTION_AFFINE`` on both images downsampled by ``2^k`` (area interpolation), each
    level starting from the previous level's estimate. The estimate is carried between
    levels as the normalised affine, which is independent of the image size.

    Convention. ``findTransformECC(template, input, W)`` returns the pixel matrix ``W``
    with ``template(x, y) ~ input(W @ [x, y, 1])``, ``(x, y)`` = (column, row). With the
    fixed image as template and the moving image as input, ``W`` is exactly the pixel
    form of our backward affine (``registration.affine_to_pixel_matrix``), so
    ``theta = N_moving @ W @ N_fixed^-1`` with ``N`` the pixel -> normalised matrices.

    Representation (decision, measured). ECC maximises a correlation coefficient,
    invariant to a gain and offset between the images but not to the non-linear VIS-NIR
    intensity relation (vegetation is bright in NIR), so Sobel gradient magnitudes of
    the blurred luma (``"gradient"``) are the obvious alternative to the blurred luma
    itself (``"intensity"``). Measured on the six RGB-NIR Scene pairs of
    ``../shared/data/vis_nir`` that are really aligned (scenes 105, 155, 201, 205, 301,
    401), moving = VIS luma warped by a random affine (with its validity mask), fixed =
    NIR, landmark RMSE over a 5x5 grid of fixed points:

    * small affines (rotation +-4 deg, scale 0.96-1.04, shear +-0.02, translation
      +-2 %), 4 levels: both under 1 px in 36/36 trials, median 0.32 px (intensity),
      0.27 px (gradient, twice the run time);
    * the training distribution of ARCHITECTURE section 5 (+-10 deg, scale 0.8-1.25,
      shear +-0.15, translation +-10 %), 48 trials: under 1 px in 41 (intensity) vs 32
      (gradient) with 3 levels, 41 vs 42 with 4 levels; the other trials converge to a
      wrong optimum (one intensity trial raised and was reported as failed).

    The intensity representation is as accurate, does not depend on the level count and
    runs 2-4x faster, so it is the default. The ~0.3 px floor is the pairs' own residual
    misalignment (ECC on the unwarped pairs finds 0.1-0.7 px shifts).

    Args:
      moving_luma: ``(H_m, W_m)`` moving (VIS) luma, any scale (e.g. 0-255).
      fixed_luma: ``(H_f, W_f)`` fixed (NIR) image, same scale.
      levels: pyramid levels (1 = full resolution only).
      iterations, eps: ECC stopping criteria per level (maximum count, minimum
        increment of the correlation coefficient).
      representation: ``"intensity"`` (blurred luma) or ``"gradient"`` (its Sobel
        gradient magnitude).
      blur_sigma: Gaussian blur (pixels of each level) before the representation.
      gauss_filter_size: OpenCV's own pre-blur kernel size inside ECC (odd, or 0/1
        for none).
      initial_theta: optional ``(2, 3)`` normalised starting affine (default identity).
      moving_mask: optional ``(H_m, W_m)`` validity mask of the moving image (> 0.5 =
        valid), e.g. the black border of a synthetically warped image; ECC ignores
        invalid moving pixels (OpenCV's ``inputMask``).

    Returns:
      ``EccResult``. Failures are reported, never hidden: on ``cv2.error`` the result
      has ``failed=True``, the reason, and the identity as the fallback transform.
    """
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    moving, fixed, moving_mask = _registration_inputs(
        moving_luma, fixed_luma, moving_mask, representation
    )
    theta = identity() if initial_theta is None else np.asarray(initial_theta, dtype=np.float64)
    criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, iterations, eps)
    correlation = float("nan")
    for level in reversed(range(levels)):
        moving_level = _representation(_pyramid_level(moving, level), representation, blur_sigma)
        fixed_level = _representation(_pyramid_level(fixed, level), representation, blur_sigma)
        mask_level = None
        if moving_mask is not None:
            # A pixel is valid at a coarse level only if every pixel it averages is, and
            # the blur and the Sobel reach a few pixels further into the invalid border.
            valid = _pyramid_level((moving_mask > 0.5).astype(np.float32), level) > 0.999
            mask_level = cv2.erode(valid.astype(np.uint8), np.ones((5, 5), np.uint8))
        shapes = (fixed_level.shape, moving_level.shape)
        warp = affine_to_pixel_matrix(theta, *shapes).astype(np.float32)
        try:
            correlation, warp = cv2.findTransformECC(
                fixed_level,
                moving_level,
                warp,
                cv2.MOTION_AFFINE,
                criteria,
                mask_level,
                gauss_filter_size,
            )
        except cv2.error as error:
            height, width = fixed_level.shape
            reason = f"level {level} ({width}x{height}): {error.err or error}"
            return EccResult(identity(), True, reason, float("nan"))
        if not np.all(np.isfinite(warp)):
            reason = f"level {level}: non-finite warp {warp.tolist()}"
            return EccResult(identity(), True, reason, float("nan"))
        theta = pixel_matrix_to_affine(warp.astype(np.float64), *shapes)
    return EccResult(theta, False, "", float(correlation))


@dataclasses.dataclass(frozen=True)
class SiftResult:
    """Outcome of ``sift_affine``.

    Attributes:
      theta: ``(2, 3)`` float64 normalised backward affine (fixed frame -> moving image);
        the identity when ``failed``.
      failed: True when too few matches or RANSAC inliers support an affine, or the
        affine found is degenerate.
      reason: what failed (empty on success).
      matches: matches that passed the ratio test.
      inliers: RANSAC inliers of the affine (0 when none was found).
    """

    theta: np.ndarray
    failed: bool
    reason: str
    matches: int
    inliers: int


def _sift_image(luma: np.ndarray, representation: str) -> np.ndarray:
    """The 8-bit image SIFT sees: the luma (0-255), or its gradient magnitude
    (``_representation``, blur 1 px) scaled so that its 99.5th percentile is 255."""
    if representation == "intensity":
        return np.clip(np.round(luma), 0, 255).astype(np.uint8)
    magnitude = _representation(luma, "gradient", blur_sigma=1.0)
    scale = 255.0 / max(float(np.percentile(magnitude, 99.5)), 1e-6)
    return np.clip(np.round(magnitude * scale), 0, 255).astype(np.uint8)


def sift_affine(
    moving_luma,
    fixed_luma,
    representation: str = SIFT_REPRESENTATION,
    ratio: float = SIFT_RATIO,
    ransac_threshold: float = SIFT_RANSAC_THRESHOLD_PX,
    min_inliers: int = SIFT_MIN_INLIERS,
    moving_mask=None,
) -> SiftResult:
    """Feature-based affine registration of ``moving_luma`` onto ``fixed_luma``.

    OpenCV's SIFT (``cv2.SIFT_create``, default settings) finds keypoints and
    descriptors in both images; each fixed descriptor's two nearest moving descriptors
    (L2) make a match when the nearer is closer than ``ratio`` times the other (Lowe's
    ratio test); ``cv2.estimateAffine2D`` fits, by RANSAC with ``ransac_threshold`` px,
    the 6-parameter affine taking fixed keypoints onto moving ones. That pixel matrix
    ``[x', y'] = W @ [x, y, 1]`` is the backward map (the moving pixel each fixed pixel
    samples, as in ``ecc_affine``), returned as the normalised ``theta``.

    Representation (decision, measured). ``"gradient"``, the Sobel gradient magnitude of
    the blurred luma scaled to 8 bits, drops the sign of the edges, which can flip between
    VIS and NIR (vegetation is dark in VIS, bright in NIR); ``"intensity"`` is the luma.
    Measured on real RGB-NIR Scene ``country`` pairs whose NIR was warped by a random
    affine (rotation up to 15 degrees, scale 0.9-1.1, shift up to 13 % of the width),
    landmark RMSE of the known-affine grid:

    * the 8 validation pairs (0003 ... 0051): both 7/8 under 2 px and 8/8 under 5 px;
      median 0.53 px (intensity) and 0.43 px (gradient), mean 0.98 and 1.05 px;
    * the 47 pairs not flagged as misaligned, two draws of the affines (94 trials):
      under 2 px 62 (intensity) and 61 (gradient), under 5 px 81 and 82, under 10 px 86
      and 86; medians 0.84 / 1.15 px and 0.96 / 1.08 px; median RANSAC inliers 89 / 117
      and 75 / 71; 1.0 s and 1.8 s a pair at 1024x680.

    The two are equally accurate; the luma runs in about half the time and keeps more
    inliers above ``min_inliers``, so it is the default. The ~1 px median is about the
    pairs' own residual misalignment (median 0.8 px, ``../shared/data/README.md``).

    Args:
      moving_luma: ``(H_m, W_m)`` moving (VIS) luma on 0-255.
      fixed_luma: ``(H_f, W_f)`` fixed (NIR) image on 0-255.
      representation: ``"intensity"`` or ``"gradient"`` (see above).
      ratio: Lowe's ratio-test threshold.
      ransac_threshold: RANSAC's inlier distance, moving px.
      min_inliers: the fewest inliers accepted (3 or more: an affine needs 3 points);
        fewer is a failure.
      moving_mask: optional ``(H_m, W_m)`` validity mask of the moving image (> 0.5 =
        valid); keypoints are kept :data:`SIFT_MASK_MARGIN_PX` px inside it.

    Returns:
      ``SiftResult``; a failure carries the identity and the reason.
    """
    if min_inliers < 3:
        raise ValueError(f"min_inliers must be >= 3 (an affine needs 3 points), got {min_inliers}")
    moving, fixed, moving_mask = _registration_inputs(
        moving_luma, fixed_luma, moving_mask, representation
    )
    mask = None
    if moving_mask is not None:
        size = 2 * SIFT_MASK_MARGIN_PX + 1
        mask = cv2.erode((moving_mask > 0.5).astype(np.uint8), np.ones((size, size), np.uint8))
    sift = cv2.SIFT_create()
    moving_points, moving_descriptors = sift.detectAndCompute(
        _sift_image(moving, representation), mask
    )
    fixed_points, fixed_descriptors = sift.detectAndCompute(
        _sift_image(fixed, representation), None
    )

    def failure(reason: str, matches: int = 0, inliers: int = 0) -> SiftResult:
        return SiftResult(identity(), True, reason, matches, inliers)

    if len(moving_points) < 2 or len(fixed_points) < 2:
        return failure(
            f"too few keypoints ({len(moving_points)} moving, {len(fixed_points)} fixed)"
        )
    pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(fixed_descriptors, moving_descriptors, k=2)
    good = [
        best for best, second in (p for p in pairs if len(p) == 2)
        if best.distance < ratio * second.distance
    ]
    if len(good) < min_inliers:
        return failure(
            f"{len(good)} matches passed the ratio test, fewer than {min_inliers}", len(good)
        )
    fixed_xy = np.float32([fixed_points[match.queryIdx].pt for match in good])
    moving_xy = np.float32([moving_points[match.trainIdx].pt for match in good])
    matrix, inlier_flags = cv2.estimateAffine2D(
        fixed_xy, moving_xy, method=cv2.RANSAC, ransacReprojThreshold=ransac_threshold
    )
    inliers = 0 if inlier_flags is None else int(inlier_flags.sum())
    if matrix is None or inliers < min_inliers:
        return failure(f"{inliers} RANSAC inliers, fewer than {min_inliers}", len(good), inliers)
    determinant = float(np.linalg.det(matrix[:, :2]))
    if not np.all(np.isfinite(matrix)) or abs(determinant) < MIN_DETERMINANT:
        return failure(f"degenerate affine {matrix.tolist()}", len(good), inliers)
    theta = pixel_matrix_to_affine(matrix.astype(np.float64), fixed.shape, moving.shape)
    return SiftResult(theta, False, "", len(good), inliers)


def average_fusion(registered_vis_luma, nir) -> np.ndarray:
    """Pixel-wise mean ``(vis + nir) / 2`` of two same-shape single-channel images."""
    vis = np.asarray(registered_vis_luma, dtype=np.float64)
    nir = np.asarray(nir, dtype=np.float64)
    if vis.shape != nir.shape:
        raise ValueError(f"images differ in shape: {vis.shape} vs {nir.shape}")
    return 0.5 * (vis + nir)


def _binomial_filter(image: np.ndarray, axis: int, padded: np.ndarray) -> np.ndarray:
    """Correlation of ``padded`` (``image`` with 2 extra samples each side of ``axis``)
    with :data:`BINOMIAL_KERNEL` along ``axis``; the result has ``image``'s shape."""
    length = image.shape[axis]
    return sum(
        weight * np.take(padded, np.arange(offset, offset + length), axis=axis)
        for offset, weight in enumerate(BINOMIAL_KERNEL)
    )


def pyramid_down(image: np.ndarray) -> np.ndarray:
    """One Gaussian pyramid step: ``(H, W)`` -> ``((H + 1) // 2, (W + 1) // 2)``.

    The 5-tap binomial blur (:data:`BINOMIAL_KERNEL` on each axis) with the border
    reflected about the edge pixel (``d c b | a b c d``), then every other pixel from
    the first: OpenCV's ``cv2.pyrDown``.
    """
    blurred = np.asarray(image, dtype=np.float64)
    for axis in (0, 1):
        widths = [(0, 0), (0, 0)]
        widths[axis] = (2, 2)
        blurred = _binomial_filter(blurred, axis, np.pad(blurred, widths, mode="reflect"))
    return blurred[::2, ::2]


def _upsample_axis(image: np.ndarray, length: int, axis: int) -> np.ndarray:
    """Doubles ``image`` along ``axis`` and keeps ``length`` samples: the zeros inserted
    between samples are filled by the binomial kernel times 2, i.e. sample ``2i`` is
    ``(s[i-1] + 6 s[i] + s[i+1]) / 8`` and ``2i+1`` is ``(s[i] + s[i+1]) / 2``; beyond
    the first sample ``s[-1] = s[1]``, beyond the last ``s[n] = s[n-1]`` (OpenCV's
    ``pyrUp`` borders)."""
    count = image.shape[axis]
    before = np.take(image, [min(1, count - 1)], axis=axis)
    after = np.take(image, [count - 1], axis=axis)
    padded = np.concatenate([before, image, after], axis=axis)
    previous, current, following = (
        np.take(padded, np.arange(start, start + count), axis=axis) for start in range(3)
    )
    even = (previous + 6.0 * current + following) / 8.0
    odd = (current + following) / 2.0
    interleaved = np.stack([even, odd], axis=axis + 1)
    interleaved = interleaved.reshape(*image.shape[:axis], 2 * count, *image.shape[axis + 1 :])
    return np.take(interleaved, np.arange(length), axis=axis)


def pyramid_up(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The expansion of a pyramid level to the finer ``shape`` (``(H, W)``, at most twice
    ``image``'s size a side): OpenCV's ``cv2.pyrUp(image, dstsize=(W, H))``."""
    image = np.asarray(image, dtype=np.float64)
    return _upsample_axis(_upsample_axis(image, shape[0], 0), shape[1], 1)


def laplacian_pyramid(image: np.ndarray, levels: int) -> list[np.ndarray]:
    """``levels`` detail images (finest first) and the coarsest Gaussian level.

    Detail ``k`` is ``G_k - pyramid_up(G_{k+1})`` with ``G_0 = image`` and ``G_{k+1} =
    pyramid_down(G_k)``; the list ends with ``G_levels``, the base. Float64, ``(H, W)``
    at level 0, each next level half the size (rounded up).
    """
    if levels < 0:
        raise ValueError(f"levels must be >= 0, got {levels}")
    current = np.asarray(image, dtype=np.float64)
    pyramid = []
    for _ in range(levels):
        coarser = pyramid_down(current)
        pyramid.append(current - pyramid_up(coarser, current.shape))
        current = coarser
    return [*pyramid, current]


def collapse_laplacian_pyramid(pyramid: list[np.ndarray]) -> np.ndarray:
    """The image of a Laplacian pyramid: from the base, expand and add each detail."""
    image = pyramid[-1]
    for detail in reversed(pyramid[:-1]):
        image = detail + pyramid_up(image, detail.shape)
    return image


def laplacian_fusion(registered_vis_luma, nir, levels: int = LAPLACIAN_LEVELS) -> np.ndarray:
    """Laplacian-pyramid fusion of two same-shape single-channel images.

    Both images are decomposed into ``levels`` detail levels and a base
    (:func:`laplacian_pyramid`); each fused detail pixel is the one of larger absolute
    value (the VIS on a tie), the fused base the mean of the two bases, and the fused
    pyramid is collapsed. Fewer levels are used when the image is too small for
    ``levels`` halvings to leave at least 2 px a side. Values are not clipped (on 0-255
    inputs the result may leave that range slightly near strong edges).

    Returns:
      ``(H, W)`` float64.
    """
    vis = np.asarray(registered_vis_luma, dtype=np.float64)
    nir = np.asarray(nir, dtype=np.float64)
    if vis.shape != nir.shape or vis.ndim != 2:
        raise ValueError(f"expected two (H, W) images of one shape, not {vis.shape}, {nir.shape}")
    levels = max(0, min(levels, int(np.log2(min(vis.shape))) - 1))
    vis_pyramid = laplacian_pyramid(vis, levels)
    nir_pyramid = laplacian_pyramid(nir, levels)
    fused = [
        np.where(np.abs(vis_detail) >= np.abs(nir_detail), vis_detail, nir_detail)
        for vis_detail, nir_detail in zip(vis_pyramid[:-1], nir_pyramid[:-1])
    ]
    fused.append(0.5 * (vis_pyramid[-1] + nir_pyramid[-1]))
    return collapse_laplacian_pyramid(fused)
