"""rfnet_tf.colour against the JPEG (JFIF) full-range BT.601 formulas on the 0-255 scale.

JFIF offsets Cb and Cr by 128 on the 0-255 scale; ARCHITECTURE section 1 fixes the offset
at 0.5 on the [0, 1] scale, i.e. 127.5 on the 0-255 scale. The formulas below take the
offset as an argument and the comparisons use the spec's.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from rfnet_tf.colour import luma, rgb_to_ycbcr, ycbcr_to_rgb

# (R, G, B) 0-255 colours: primaries, secondaries, black, white, grey and arbitrary ones.
KNOWN_COLOURS = np.array(
    [
        [0, 0, 0],
        [255, 255, 255],
        [128, 128, 128],
        [255, 0, 0],
        [0, 255, 0],
        [0, 0, 255],
        [255, 255, 0],
        [0, 255, 255],
        [255, 0, 255],
        [12, 200, 77],
        [231, 96, 5],
    ],
    dtype=np.float64,
)


SPEC_CHROMA_OFFSET = 127.5  # 0.5 on the [0, 1] scale


def jfif_rgb_to_ycbcr(rgb: np.ndarray, offset: float = SPEC_CHROMA_OFFSET) -> np.ndarray:
    """JFIF 1.02 (ITU-T T.871) forward formulas, 0-255 scale (JFIF's offset is 128)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = offset - 0.168736 * r - 0.331264 * g + 0.5 * b
    cr = offset + 0.5 * r - 0.418688 * g - 0.081312 * b
    return np.stack([y, cb, cr], axis=-1)


def jfif_ycbcr_to_rgb(ycbcr: np.ndarray, offset: float = SPEC_CHROMA_OFFSET) -> np.ndarray:
    """JFIF 1.02 (ITU-T T.871) inverse formulas, 0-255 scale (JFIF's offset is 128)."""
    y, cb, cr = ycbcr[..., 0], ycbcr[..., 1] - offset, ycbcr[..., 2] - offset
    return np.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], axis=-1)


def test_known_colours_match_the_jpeg_forward_formulas():
    ours = rgb_to_ycbcr(KNOWN_COLOURS / 255.0).numpy() * 255.0
    # The JFIF constants have six decimals: agreement to 1e-3 on the 0-255 scale.
    np.testing.assert_allclose(ours, jfif_rgb_to_ycbcr(KNOWN_COLOURS), atol=1e-3)


def test_known_colours_match_the_jpeg_inverse_formulas():
    ycbcr = jfif_rgb_to_ycbcr(KNOWN_COLOURS)
    ours = ycbcr_to_rgb(ycbcr / 255.0).numpy() * 255.0
    np.testing.assert_allclose(ours, jfif_ycbcr_to_rgb(ycbcr), atol=1e-3)
    np.testing.assert_allclose(ours, KNOWN_COLOURS, atol=1e-3)


def test_grey_has_neutral_chroma():
    grey = np.linspace(0.0, 1.0, 11)[:, None] * np.ones(3)
    ycbcr = rgb_to_ycbcr(grey).numpy()
    np.testing.assert_allclose(ycbcr[:, 0], grey[:, 0], atol=1e-12)
    np.testing.assert_allclose(ycbcr[:, 1:], 0.5, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_is_the_identity(rng, dtype):
    rgb = rng.random((2, 7, 9, 3)).astype(dtype)
    back = ycbcr_to_rgb(rgb_to_ycbcr(tf.constant(rgb))).numpy()
    assert back.dtype == dtype
    np.testing.assert_allclose(back, rgb, rtol=0, atol=1e-6)
    ycbcr = rgb_to_ycbcr(rgb).numpy()
    np.testing.assert_allclose(rgb_to_ycbcr(ycbcr_to_rgb(ycbcr)).numpy(), ycbcr, rtol=0, atol=1e-6)


def test_luma_weights():
    np.testing.assert_allclose(luma(np.eye(3)).numpy()[:, 0], [0.299, 0.587, 0.114], atol=1e-12)
    np.testing.assert_allclose(luma(np.ones((1, 3))).numpy(), [[1.0]], atol=1e-12)


def test_luma_is_the_y_channel_and_keeps_one_channel_images(rng):
    rgb = rng.random((2, 5, 6, 3))
    y = luma(rgb).numpy()
    assert y.shape == (2, 5, 6, 1)
    np.testing.assert_allclose(y[..., 0], rgb_to_ycbcr(rgb).numpy()[..., 0], atol=1e-12)
    grey = rng.random((2, 5, 6, 1)).astype(np.float32)
    np.testing.assert_array_equal(luma(grey).numpy(), grey)


def test_wrong_channel_count_raises():
    with pytest.raises(ValueError, match="3 channels"):
        rgb_to_ycbcr(np.zeros((4, 4, 2)))
    # These two fail in TensorFlow's broadcasting rather than with a ValueError.
    for function in (ycbcr_to_rgb, luma):
        with pytest.raises((ValueError, tf.errors.InvalidArgumentError)):
            function(np.zeros((4, 4, 2)))
