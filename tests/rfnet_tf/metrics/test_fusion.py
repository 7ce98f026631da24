"""Fusion metrics against hand cases, loop re-implementations and scikit-image."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage, signal
from skimage.measure import shannon_entropy
from skimage.metrics import mean_squared_error, structural_similarity

from rfnet_tf.metrics import fusion


def grey_image(rng: np.random.Generator, shape=(24, 32)) -> np.ndarray:
    """Textured integer-valued 0-255 image."""
    smooth = ndimage.gaussian_filter(rng.uniform(0, 255, shape), 1.5)
    return np.clip(np.round((smooth - smooth.mean()) * 4 + 128 + rng.normal(0, 8, shape)), 0, 255)


def skimage_ssim(a: np.ndarray, b: np.ndarray) -> float:
    return structural_similarity(
        a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
    )


def matlab_uint8(value: float) -> int:
    """MATLAB's double -> uint8: round half away from zero, saturate to [0, 255]."""
    rounded = math.floor(abs(value) + 0.5) * (1 if value >= 0 else -1)
    return min(255, max(0, rounded))


def test_entropy_of_two_level_image_is_one_bit():
    image = np.zeros((8, 8))
    image[:, 4:] = 255.0
    assert fusion.entropy(image) == pytest.approx(1.0)


def test_entropy_matches_skimage(rng):
    image = grey_image(rng)
    assert fusion.entropy(image) == pytest.approx(shannon_entropy(image.astype(np.uint8), base=2))


def test_standard_deviation_hand_case():
    assert fusion.standard_deviation(np.array([[0.0, 2.0], [0.0, 2.0]])) == pytest.approx(1.0)


def test_paper_standard_deviation_saturates_like_matlab_uint8():
    # mean 25; uint8(F - 25) = [0, 0, 0, 75]; uint8(75^2) = 255.
    image = np.array([[0.0, 0.0], [0.0, 100.0]])
    paper_std = fusion.standard_deviation(image, paper_conventions=True)
    assert paper_std == pytest.approx(np.sqrt(255 / 4))


def test_paper_standard_deviation_matches_elementwise_matlab_emulation(rng):
    image = grey_image(rng, (12, 15))
    mean = image.mean()
    total = sum(matlab_uint8(matlab_uint8(v - mean) ** 2) for v in image.ravel())
    expected = math.sqrt(total / image.size)
    assert fusion.standard_deviation(image, paper_conventions=True) == pytest.approx(expected)
    assert expected <= math.sqrt(255)


def test_average_gradient_of_a_ramp():
    rows, cols = np.meshgrid(np.arange(10.0), np.arange(14.0), indexing="ij")
    ramp = 4.0 * rows + 3.0 * cols  # gy = 4, gx = 3 everywhere, borders included
    assert fusion.average_gradient(ramp) == pytest.approx(np.sqrt(12.5))
    assert fusion.average_gradient(ramp, paper_conventions=True) == pytest.approx(
        np.sqrt(12.5) * 10 * 14 / (9 * 13)
    )


def test_average_gradient_matches_loop_differences(rng):
    image = grey_image(rng, (9, 11))
    height, width = image.shape
    total = 0.0
    for i in range(height):
        for j in range(width):
            left, right = max(j - 1, 0), min(j + 1, width - 1)
            up, down = max(i - 1, 0), min(i + 1, height - 1)
            gx = (image[i, right] - image[i, left]) / (right - left)
            gy = (image[down, j] - image[up, j]) / (down - up)
            total += math.sqrt((gx * gx + gy * gy) / 2)
    assert fusion.average_gradient(image) == pytest.approx(total / image.size)


def test_spatial_frequency_hand_cases():
    ramp = np.arange(1.0, 10.0).reshape(3, 3)  # horizontal differences 1, vertical 3
    assert fusion.spatial_frequency(ramp) == pytest.approx(np.sqrt(1 + 9))
    spike = np.zeros((3, 3))
    spike[1, 1] = 9.0
    # Horizontal differences: row 1 holds 9, -9 among 6 values -> RF^2 = 162 / 6 = 27;
    # CF^2 likewise.
    assert fusion.spatial_frequency(spike) == pytest.approx(np.sqrt(54))


def test_psnr_of_known_additive_noise_and_paper_offset(rng):
    a = grey_image(rng).clip(10, 245)
    fused = a.copy()
    psnr = fusion.fusion_psnr(a + 5.0, a - 5.0, fused)
    assert psnr == pytest.approx(10 * np.log10(255**2 / 25.0))
    paper = fusion.fusion_psnr(a + 5.0, a - 5.0, fused, paper_conventions=True)
    assert paper == pytest.approx(20 * np.log10(255 / np.sqrt(25.0 / 255**2)))
    assert paper - psnr == pytest.approx(20 * np.log10(255)) == pytest.approx(48.1308, abs=1e-4)


def test_psnr_matches_skimage_mse(rng):
    vis, nir, fused = grey_image(rng), grey_image(rng), grey_image(rng)
    mse = (mean_squared_error(vis, fused) + mean_squared_error(nir, fused)) / 2
    assert fusion.fusion_psnr(vis, nir, fused) == pytest.approx(10 * np.log10(255**2 / mse))


def test_mutual_information_of_an_image_with_itself_is_its_entropy(rng):
    image = grey_image(rng)
    assert fusion.mutual_information(image, image) == pytest.approx(fusion.entropy(image))


def test_mutual_information_matches_histogram2d(rng):
    a = grey_image(rng)
    b = np.clip(a * 0.5 + rng.normal(0, 20, a.shape) + 40, 0, 255).round()
    edges = np.arange(257) - 0.5
    joint, _, _ = np.histogram2d(a.ravel(), b.ravel(), bins=[edges, edges])
    p = joint / joint.sum()
    pa, pb = p.sum(1), p.sum(0)
    expected = sum(
        p[i, j] * math.log2(p[i, j] / (pa[i] * pb[j])) for i, j in zip(*np.nonzero(p))
    )
    assert fusion.mutual_information(a, b) == pytest.approx(expected)
    assert fusion.fusion_mi(a, b, b) == pytest.approx(expected + fusion.entropy(b))


def test_fusion_ssim_is_the_sum_of_skimage_ssims(rng):
    vis, nir = grey_image(rng), grey_image(rng)
    fused = (vis + nir) / 2
    assert fusion.fusion_ssim(vis, nir, fused) == pytest.approx(
        skimage_ssim(vis, fused) + skimage_ssim(nir, fused), abs=1e-10
    )


def qabf_reference(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> float:
    """Per-pixel loop port of Xydeas & Petrovic with MATLAB-style conv2 Sobel filtering."""
    h1 = np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], float)
    h3 = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], float)

    def strength_angle(image):
        sx = signal.convolve2d(image, h3, mode="same")
        sy = signal.convolve2d(image, h1, mode="same")
        return np.sqrt(sx**2 + sy**2), sx, sy

    numerator = denominator = 0.0
    g_f, fx, fy = strength_angle(f)
    for source in (a, b):
        g_s, sx, sy = strength_angle(source)
        for i in range(a.shape[0]):
            for j in range(a.shape[1]):
                alpha_s = math.pi / 2 if sx[i, j] == 0 else math.atan(sy[i, j] / sx[i, j])
                alpha_f = math.pi / 2 if fx[i, j] == 0 else math.atan(fy[i, j] / fx[i, j])
                gs, gf = g_s[i, j], g_f[i, j]
                ratio = 1.0 if gs == gf else min(gs, gf) / max(gs, gf)
                orientation = 1 - abs(alpha_s - alpha_f) / (math.pi / 2)
                q_g = 0.9994 / (1 + math.exp(-15 * (ratio - 0.5)))
                q_a = 0.9879 / (1 + math.exp(-22 * (orientation - 0.8)))
                q = q_g * q_a
                numerator += q * gs
                denominator += gs
    return numerator / denominator


def test_qabf_matches_loop_reference(rng):
    vis, nir = grey_image(rng, (10, 12)), grey_image(rng, (10, 12))
    fused = np.maximum(vis, nir)
    assert fusion.qabf(vis, nir, fused) == pytest.approx(qabf_reference(vis, nir, fused), rel=1e-10)
    assert fusion.qabf(vis, nir, fused) == pytest.approx(fusion.qabf(nir, vis, fused))


def test_qabf_of_an_image_fused_with_itself(rng):
    # G = 1 and A = 1 everywhere, so every pixel scores Q_g(1) * Q_a(1) and so does the
    # weighted mean: 0.9994 / (1 + e^-7.5) * 0.9879 / (1 + e^-4.4) = 0.97479.
    expected = 0.9994 / (1 + math.exp(-7.5)) * 0.9879 / (1 + math.exp(-4.4))
    image = grey_image(rng)
    assert fusion.qabf(image, image, image) == pytest.approx(expected, rel=1e-12)
    # A source without edges has zero weight: only the other source counts. (Black, as
    # the zero-padded Sobel sees an edge along the border of any other constant.)
    flat = np.zeros_like(image)
    assert fusion.qabf(image, flat, image) == pytest.approx(expected, rel=1e-12)


def test_fusion_metrics_keys_and_paper_switch(rng):
    vis, nir = grey_image(rng), grey_image(rng)
    fused = np.round((vis + nir) / 2)
    standard = fusion.fusion_metrics(vis, nir, fused)
    paper = fusion.fusion_metrics(vis, nir, fused, paper_conventions=True)
    assert set(standard) == set(paper) == {"en", "std", "ag", "sf", "psnr", "mi", "ssim", "qabf"}
    for key in ("en", "sf", "mi", "ssim", "qabf"):
        assert paper[key] == pytest.approx(standard[key])
    assert paper["psnr"] - standard["psnr"] == pytest.approx(fusion.PAPER_PSNR_OFFSET_DB)
    assert paper["std"] == pytest.approx(fusion.standard_deviation(fused, paper_conventions=True))
    assert paper["ag"] == pytest.approx(standard["ag"] * fused.size / ((24 - 1) * (32 - 1)))
