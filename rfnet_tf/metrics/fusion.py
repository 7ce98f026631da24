"""Image-fusion quality metrics (numpy; paper Table 2, ARCHITECTURE section 6).

All functions take single-channel luma on the 0-255 scale as float arrays ``(H, W)``
(a trailing channel of size 1 is accepted): ``vis`` is the registered visible luma,
``nir`` the near-infrared image, ``fused`` the fused luma. Where a metric needs 8-bit
grey levels (histograms), images are rounded half up and clipped to 0-255, as
MATLAB's ``uint8()`` does.

Standard definitions are the default. ``paper_conventions=True`` reproduces the
conventions behind the paper's Table 2. RFNet's evaluation code was never released;
the authors' lab (Jiayi Ma's group, Wuhan University; Ma is RFNet's corresponding
author) publishes its MATLAB fusion-evaluation scripts with SeAFusion (Tang, Yuan and
Ma, Information Fusion 2022): github.com/Linfeng-Tang/SeAFusion, folder
``Evaluation/``, where ``analysis_Reference.m`` reads the 8-bit image files and calls
``SD_evaluation.m``, ``AG_evaluation.m``, ``PSNR_evaluation.m`` and MATLAB's
``entropy``. That these scripts produced Table 2 is an inference, but they reproduce
its otherwise unexplained scales:

* PSNR: ``PSNR_evaluation`` receives ``im2double`` images (``[0, 1]``) but uses peak
  255: ``20 log10(255 / sqrt(MSE_[0,1]))`` = standard PSNR + ``20 log10(255)``
  (+48.13 dB). Table 2's 63.7-66.4 dB are 15.6-18.2 dB on the standard scale.
* STD: ``SD_evaluation`` receives the ``uint8`` image, so ``F - mean`` and ``.^2`` run
  in saturating ``uint8`` arithmetic: every term is ``min(255, max(0, round(F - mu))^2)``
  and STD <= sqrt(255) = 15.97. Table 2's 9.1-10.1 fit that: for the VIS/NIR averages
  of the 10 RGB-NIR Scene pairs in ../shared/data the standard STD is 23-58, the
  saturating one 7.0-10.6.
* AG: ``AG_evaluation`` uses MATLAB ``gradient`` (as the standard definition here) on
  the 8-bit image but divides the sum by ``(H-1)(W-1)`` instead of ``H W``.
* EN: MATLAB ``entropy`` of the 8-bit image, identical to the standard definition.

SF, MI, SSIM and Qabf are not in Table 2 and stay standard under the switch (the same
scripts compute SF on ``[0, 1]``, i.e. standard SF / 255, and an MEF-SSIM instead of
SSIM, but nothing in the paper checks those). Under the switch every input is first
rounded to 8 bits, as the paper's fused results were saved as 8-bit files.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from rfnet_tf.metrics.registration import single_channel, structural_similarity

LEVELS = 256
PEAK = 255.0
# 20 log10(255) = 48.13 dB: the paper's fusion PSNR minus the standard one.
PAPER_PSNR_OFFSET_DB = 20.0 * math.log10(PEAK)

# Xydeas & Petrovic (Electronics Letters 36(4), 2000) sigmoid constants: edge strength
# (g) and orientation (a) preservation, and the weight exponent L.
QABF_TG, QABF_KG, QABF_DG = 0.9994, -15.0, 0.5
QABF_TA, QABF_KA, QABF_DA = 0.9879, -22.0, 0.8
QABF_L = 1.0


def _as_image(image, name: str = "image") -> np.ndarray:
    image = single_channel(image, name)
    if min(image.shape) < 2:
        raise ValueError(f"{name} must be at least 2 x 2 pixels, got {image.shape}")
    return image


def _same_shape(*images: np.ndarray) -> None:
    if len({image.shape for image in images}) != 1:
        raise ValueError(f"images differ in shape: {[image.shape for image in images]}")


def quantise(image) -> np.ndarray:
    """0-255 float image -> integer grey levels (float64), rounded half up, clipped."""
    return np.clip(np.floor(_as_image(image) + 0.5), 0.0, PEAK)


def _grey_levels(image) -> np.ndarray:
    return quantise(image).astype(np.int64)


def entropy(image) -> float:
    """EN: Shannon entropy (bits) of the 256-bin histogram of the 8-bit image.

    ``EN = -sum_k p_k log2 p_k`` over grey levels with ``p_k > 0``.
    """
    counts = np.bincount(_grey_levels(image).ravel(), minlength=LEVELS)
    p = counts[counts > 0] / counts.sum()
    return float(-np.sum(p * np.log2(p)))


def standard_deviation(image, paper_conventions: bool = False) -> float:
    """STD: population standard deviation ``sqrt(mean((F - mean F)^2))`` (0-255 scale).

    ``paper_conventions``: the saturating-``uint8`` form of SeAFusion's
    ``Evaluation/SD_evaluation.m`` (module docstring):
    ``sqrt(mean(min(255, max(0, round(F - mean F))^2)))`` on the 8-bit image, where the
    rounding is MATLAB's (half away from zero; only the non-negative side survives).
    """
    if not paper_conventions:
        return float(np.std(_as_image(image)))
    levels = quantise(image)
    difference = np.maximum(np.floor(levels - levels.mean() + 0.5), 0.0)
    return float(np.sqrt(np.mean(np.minimum(difference**2, PEAK))))


def average_gradient(image, paper_conventions: bool = False) -> float:
    """AG: mean over pixels of ``sqrt((gx^2 + gy^2) / 2)`` (0-255 scale).

    ``gx, gy`` are central differences ``(F[i, j+1] - F[i, j-1]) / 2`` (and likewise
    along rows) in the interior and one-sided first differences on the first and last
    row/column (``numpy.gradient``, the same as MATLAB ``gradient``).

    ``paper_conventions``: SeAFusion's ``Evaluation/AG_evaluation.m``: the same gradient
    on the 8-bit image, but the sum is divided by ``(H-1)(W-1)`` instead of ``H W``.
    """
    image = quantise(image) if paper_conventions else _as_image(image)
    gy, gx = np.gradient(image)
    magnitude = np.sqrt((gx**2 + gy**2) / 2.0)
    height, width = image.shape
    if paper_conventions:
        return float(magnitude.sum() / ((height - 1) * (width - 1)))
    return float(magnitude.mean())


def spatial_frequency(image) -> float:
    """SF (Eskicioglu & Fisher 1995): ``sqrt(RF^2 + CF^2)`` (0-255 scale).

    Row frequency ``RF = sqrt(mean((F[i, j] - F[i, j-1])^2))`` over the ``H x (W-1)``
    horizontal first differences; column frequency ``CF`` likewise over the
    ``(H-1) x W`` vertical ones (each a mean over its own differences).
    """
    image = _as_image(image)
    row_frequency_sq = np.mean(np.diff(image, axis=1) ** 2)
    column_frequency_sq = np.mean(np.diff(image, axis=0) ** 2)
    return float(np.sqrt(row_frequency_sq + column_frequency_sq))


def fusion_psnr(vis, nir, fused, paper_conventions: bool = False) -> float:
    """PSNR (dB) of the fused image against both sources.

    Standard: ``MSE = (MSE(F, vis) + MSE(F, nir)) / 2`` on the 0-255 scale and
    ``PSNR = 10 log10(255^2 / MSE)``; ``inf`` if MSE is 0.

    ``paper_conventions``: SeAFusion's ``Evaluation/PSNR_evaluation.m`` on
    ``im2double`` 8-bit images: ``20 log10(255 / sqrt(MSE_[0,1]))`` with
    ``MSE_[0,1] = MSE / 255^2``, i.e. the standard PSNR of the 8-bit images plus
    ``20 log10(255) = 48.13`` dB.
    """
    if paper_conventions:
        vis, nir, fused = quantise(vis), quantise(nir), quantise(fused)
    else:
        vis, nir, fused = _as_image(vis, "vis"), _as_image(nir, "nir"), _as_image(fused, "fused")
    _same_shape(vis, nir, fused)
    mse = 0.5 * (np.mean((fused - vis) ** 2) + np.mean((fused - nir) ** 2))
    if mse == 0:
        return float("inf")
    if paper_conventions:
        return float(20.0 * np.log10(PEAK / np.sqrt(mse / PEAK**2)))
    return float(10.0 * np.log10(PEAK**2 / mse))


def mutual_information(a, b) -> float:
    """MI (bits) of two 8-bit images from their 256 x 256 joint histogram.

    ``MI = sum p(i, j) log2(p(i, j) / (p(i) p(j)))`` over bins with ``p(i, j) > 0``;
    ``MI(A, A)`` is the entropy of ``A``.
    """
    a = _grey_levels(a)
    b = _grey_levels(b)
    _same_shape(a, b)
    joint = np.bincount((a * LEVELS + b).ravel(), minlength=LEVELS * LEVELS).reshape(LEVELS, LEVELS)
    p = joint / joint.sum()
    pa = p.sum(axis=1, keepdims=True)
    pb = p.sum(axis=0, keepdims=True)
    nonzero = p > 0
    return float(np.sum(p[nonzero] * np.log2(p[nonzero] / (pa @ pb)[nonzero])))


def fusion_mi(vis, nir, fused) -> float:
    """MI of a fusion: ``MI(vis, F) + MI(nir, F)`` (bits)."""
    return mutual_information(vis, fused) + mutual_information(nir, fused)


def fusion_ssim(vis, nir, fused) -> float:
    """SSIM of a fusion: ``SSIM(vis, F) + SSIM(nir, F)`` (range [-2, 2]).

    The sum, not the mean, is the common choice in fusion benchmarks: VIFB (Zhang, Ye
    and Xiao, CVPRW 2020), github.com/xingchenzhang/VIFB ``metrics/metricsSsim.m``
    returns ``ssim(img1, fused) + ssim(img2, fused)``. Each term is
    ``registration.structural_similarity`` (Gaussian 11x11, sigma 1.5, 0-255, 5-px
    border excluded), i.e. scikit-image's Gaussian SSIM.
    """
    return structural_similarity(vis, fused) + structural_similarity(nir, fused)


def _sobel_strength_orientation(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sobel edge strength ``g`` and orientation ``alpha = arctan(sy / sx)``.

    Zero padding outside the image (MATLAB ``conv2(..., 'same')``, as every common
    Qabf implementation); ``alpha = pi/2`` where ``sx = 0``.
    """
    kernel_x = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    sx = ndimage.correlate(image, kernel_x, mode="constant", cval=0.0)
    sy = ndimage.correlate(image, kernel_x.T, mode="constant", cval=0.0)
    strength = np.sqrt(sx**2 + sy**2)
    vertical = sx == 0
    alpha = np.where(vertical, np.pi / 2, np.arctan(sy / np.where(vertical, 1.0, sx)))
    return strength, alpha


def _edge_preservation(g_source, a_source, g_fused, a_fused) -> np.ndarray:
    """Per-pixel ``Q^{SF} = Q_g Q_a`` of one source ``S`` in the fused image."""
    larger = np.maximum(g_source, g_fused)
    # Relative strength min/max; equal strengths (including both zero) preserve fully.
    safe_larger = np.where(larger > 0, larger, 1.0)
    ratio = np.where(larger > 0, np.minimum(g_source, g_fused) / safe_larger, 1.0)
    orientation = 1.0 - np.abs(a_source - a_fused) / (np.pi / 2)
    q_g = QABF_TG / (1.0 + np.exp(QABF_KG * (ratio - QABF_DG)))
    q_a = QABF_TA / (1.0 + np.exp(QABF_KA * (orientation - QABF_DA)))
    return q_g * q_a


def qabf(vis, nir, fused) -> float:
    """Q^{AB/F} (Xydeas & Petrovic 2000): edge information carried into the fusion.

    For each source ``S`` and pixel: Sobel strength ``g`` and orientation
    ``alpha = arctan(sy / sx)``; relative strength ``G = min(g_S, g_F) / max(g_S, g_F)``
    (1 where they are equal, including both 0); relative orientation
    ``A = 1 - |alpha_S - alpha_F| / (pi/2)``; ``Q^{SF} = Tg / (1 + exp(kg (G - Dg)))
    * Ta / (1 + exp(ka (A - Da)))`` with Tg=0.9994, kg=-15, Dg=0.5, Ta=0.9879, ka=-22,
    Da=0.8. Then ``Qabf = sum(Q^{AF} g_A^L + Q^{BF} g_B^L) / sum(g_A^L + g_B^L)``, L=1.
    Scale-invariant in the intensities. NaN if both sources are flat.

    The widespread MATLAB port (``analysis_Qabf.m``, e.g. in SeAFusion) sets
    ``G = g_F`` instead of 1 when ``g_S == g_F``; this follows the paper's ratio. So
    ``Qabf(A, A, A) = Q(G=1, A=1) = 0.9994/(1+e^-7.5) * 0.9879/(1+e^-4.4) = 0.97479``
    for any image with an edge, the maximum the sigmoids allow.
    """
    vis, nir, fused = _as_image(vis, "vis"), _as_image(nir, "nir"), _as_image(fused, "fused")
    _same_shape(vis, nir, fused)
    g_f, a_f = _sobel_strength_orientation(fused)
    numerator = 0.0
    denominator = 0.0
    for source in (vis, nir):
        g_s, a_s = _sobel_strength_orientation(source)
        weight = g_s**QABF_L
        numerator += np.sum(_edge_preservation(g_s, a_s, g_f, a_f) * weight)
        denominator += np.sum(weight)
    return float(numerator / denominator) if denominator > 0 else float("nan")


def fusion_metrics(vis_luma, nir, fused, paper_conventions: bool = False) -> dict[str, float]:
    """All fusion metrics of one fused pair (0-255 luma).

    Returns ``{"en", "std", "ag", "sf", "psnr", "mi", "ssim", "qabf"}``; see each
    function. ``paper_conventions`` switches STD, AG and PSNR (and 8-bit rounding of
    the inputs) to the paper's Table 2 conventions; the module docstring gives the
    evidence.
    """
    vis, nir, fused = _as_image(vis_luma, "vis"), _as_image(nir, "nir"), _as_image(fused, "fused")
    _same_shape(vis, nir, fused)
    if paper_conventions:
        vis, nir, fused = quantise(vis), quantise(nir), quantise(fused)
    return {
        "en": entropy(fused),
        "std": standard_deviation(fused, paper_conventions),
        "ag": average_gradient(fused, paper_conventions),
        "sf": spatial_frequency(fused),
        "psnr": fusion_psnr(vis, nir, fused, paper_conventions),
        "mi": fusion_mi(vis, nir, fused),
        "ssim": fusion_ssim(vis, nir, fused),
        "qabf": qabf(vis, nir, fused),
    }
