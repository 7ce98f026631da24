"""Classic baselines for paper Tables 1 and 2 (numpy / OpenCV, no TensorFlow).

* ``identity``: the unaligned input ("unaligned VIS" in Table 1).
* ``ecc_affine``: OpenCV's ECC (Evangelidis & Psarakis, TPAMI 2008) affine
  registration, coarse to fine, returned in the project's normalised backward affine
  convention (ARCHITECTURE section 1), so it plugs into the same warps and metrics as
  AffineNet's output.
* ``average_fusion``: the mean of the registered VIS luma and the NIR image (the
  "average weighted strategy" the paper uses to show coarse-registered pairs).
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from rfnet_tf.metrics.registration import affine_to_pixel_matrix, pixel_matrix_to_affine

REPRESENTATIONS = ("intensity", "gradient")


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


def _as_luma(image, name: str) -> np.ndarray:
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim != 2:
        raise ValueError(f"{name} must be single-channel (H, W) luma, got {image.shape}")
    return image


def ecc_affine(
    moving_luma,
    fixed_luma,
    levels: int = 3,
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
    if representation not in REPRESENTATIONS:
        raise ValueError(f"representation must be one of {REPRESENTATIONS}, got {representation!r}")
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    moving = _as_luma(moving_luma, "moving_luma")
    fixed = _as_luma(fixed_luma, "fixed_luma")
    theta = identity() if initial_theta is None else np.asarray(initial_theta, dtype=np.float64)
    criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, iterations, eps)
    if moving_mask is not None:
        moving_mask = _as_luma(moving_mask, "moving_mask")
        if moving_mask.shape != moving.shape:
            raise ValueError(f"moving_mask shape {moving_mask.shape} differs from {moving.shape}")
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


def average_fusion(registered_vis_luma, nir) -> np.ndarray:
    """Pixel-wise mean ``(vis + nir) / 2`` of two same-shape single-channel images."""
    vis = np.asarray(registered_vis_luma, dtype=np.float64)
    nir = np.asarray(nir, dtype=np.float64)
    if vis.shape != nir.shape:
        raise ValueError(f"images differ in shape: {vis.shape} vs {nir.shape}")
    return 0.5 * (vis + nir)
