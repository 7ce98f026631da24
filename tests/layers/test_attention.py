"""GradientChannelAttention against a numpy re-computation of ARCHITECTURE section 2
with the layer's own MLP weights."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from layers import GradientChannelAttention, windowed_max


def _abs_laplacian(features: np.ndarray) -> np.ndarray:
    """|4-neighbour Laplacian| per channel, replicate padding; (B, H, W, C)."""
    p = np.pad(features.astype(np.float64), [(0, 0), (1, 1), (1, 1), (0, 0)], mode="edge")
    lap = p[:, :-2, 1:-1] + p[:, 2:, 1:-1] + p[:, 1:-1, :-2] + p[:, 1:-1, 2:] - 4.0 * p[:, 1:-1, 1:-1]
    return np.abs(lap)


def _mlp(layer_hidden, layer_out, v):
    """Two dense layers, no activation between."""
    hidden = v @ layer_hidden.kernel.numpy() + layer_hidden.bias.numpy()
    return hidden @ layer_out.kernel.numpy() + layer_out.bias.numpy()


def _numpy_windowed_max(values: np.ndarray, window: int) -> np.ndarray:
    """Brute force over explicit window corners: windows of min(window, n) pixels, as
    many as cover the axis, the first at 0 and the last ending at n, evenly spread."""

    def starts(n):
        size = min(window, n)
        count = -(-n // size)
        return size, [0] if count == 1 else [i * (n - size) // (count - 1) for i in range(count)]

    height_window, row_starts = starts(values.shape[1])
    width_window, col_starts = starts(values.shape[2])
    maxima = [
        values[:, r : r + height_window, c : c + width_window].max(axis=(1, 2))
        for r in row_starts
        for c in col_starts
    ]
    return np.mean(maxima, axis=0)


def _numpy_attention(layer, fx, fy):
    gx, gy = _abs_laplacian(fx), _abs_laplacian(fy)
    a = gx.mean(axis=(1, 2)) + gy.mean(axis=(1, 2))
    if layer.max_pool_window is None:
        m = gx.max(axis=(1, 2)) + gy.max(axis=(1, 2))
    else:
        m = _numpy_windowed_max(gx, layer.max_pool_window) + _numpy_windowed_max(gy, layer.max_pool_window)
    logits = _mlp(layer.avg_hidden, layer.avg_out, a) + _mlp(layer.max_hidden, layer.max_out, m)
    w = 1.0 / (1.0 + np.exp(-logits))
    return w[:, None, None, :]


@pytest.mark.parametrize("channels, reduction, hidden", [(16, 8, 2), (32, 8, 4), (6, 2, 3), (4, 8, 1)])
def test_matches_numpy_recomputation(rng, layer_checks, channels, reduction, hidden):
    fx = rng.normal(size=(2, 6, 7, channels)).astype(np.float32)
    fy = rng.uniform(size=(2, 6, 7, channels)).astype(np.float32)
    layer = GradientChannelAttention(reduction=reduction)
    layer.build([fx.shape, fy.shape])
    layer_checks.randomize(layer, scale=0.5)  # non-zero biases, so that "bias on" is tested
    assert layer.avg_hidden.kernel.shape == (channels, hidden)
    assert layer.max_out.kernel.shape == (hidden, channels)

    out_x, out_y = layer([fx, fy])
    weights = _numpy_attention(layer, fx, fy)
    assert weights.std() > 0.01  # the channels really get different weights
    np.testing.assert_allclose(out_x.numpy(), fx * weights, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(out_y.numpy(), fy * weights, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(
        layer.channel_weights(tf.constant(fx), tf.constant(fy)).numpy(), weights, atol=1e-6, rtol=1e-5
    )


@pytest.mark.parametrize(
    "height, width, window", [(12, 8, 4), (13, 7, 4), (9, 20, 6), (5, 5, 8), (7, 30, 7), (16, 3, 5)]
)
def test_windowed_max_matches_brute_force(rng, height, width, window):
    values = rng.normal(size=(2, height, width, 3)).astype(np.float32)
    np.testing.assert_allclose(
        windowed_max(values, window).numpy(), _numpy_windowed_max(values, window), rtol=1e-6
    )


def test_windowed_max_of_a_small_image_is_the_global_max(rng):
    values = rng.normal(size=(2, 9, 6, 4)).astype(np.float32)
    np.testing.assert_array_equal(windowed_max(values, 9).numpy(), values.max(axis=(1, 2)))
    np.testing.assert_array_equal(windowed_max(values, 100).numpy(), values.max(axis=(1, 2)))


def test_windowed_max_does_not_grow_with_the_image():
    """The reason for the option: a 4x4 mosaic of tiles, each holding one peak, has the
    global max of its highest peak, but windows of a tile see each tile's own peak."""
    tile = 8
    peaks = np.arange(1.0, 17.0, dtype=np.float32).reshape(4, 4)
    mosaic = np.zeros((1, 4 * tile, 4 * tile, 1), np.float32)
    mosaic[0, 3::tile, 5::tile, 0] = peaks
    assert windowed_max(mosaic, tile).numpy()[0, 0] == pytest.approx(peaks.mean())
    assert windowed_max(mosaic, 4 * tile).numpy()[0, 0] == 16.0


@pytest.mark.parametrize("window", [3, 5, 40])
def test_windowed_attention_matches_numpy_recomputation(rng, layer_checks, window):
    fx = rng.normal(size=(2, 11, 13, 8)).astype(np.float32)
    fy = rng.uniform(size=(2, 11, 13, 8)).astype(np.float32)
    layer = GradientChannelAttention(reduction=4, max_pool_window=window)
    layer.build([fx.shape, fy.shape])
    layer_checks.randomize(layer, scale=0.5)
    np.testing.assert_allclose(
        layer.channel_weights(tf.constant(fx), tf.constant(fy)).numpy(),
        _numpy_attention(layer, fx, fy),
        atol=1e-6,
        rtol=1e-5,
    )


def test_weights_are_symmetric_in_the_two_maps(rng):
    fx = rng.normal(size=(1, 5, 5, 8)).astype(np.float32)
    fy = rng.normal(size=(1, 5, 5, 8)).astype(np.float32)
    layer = GradientChannelAttention()
    layer([fx, fy])
    np.testing.assert_allclose(
        layer.channel_weights(fx, fy).numpy(), layer.channel_weights(fy, fx).numpy(), atol=1e-6
    )


def test_rejects_bad_arguments():
    with pytest.raises(ValueError):
        GradientChannelAttention(reduction=0)
    with pytest.raises(ValueError):
        GradientChannelAttention(max_pool_window=0)
    with pytest.raises(ValueError):
        GradientChannelAttention().build([(None, None, None, 8), (None, None, None, 4)])


@pytest.mark.parametrize("window", [None, 4])
def test_dynamic_shapes_config_and_saving(rng, layer_checks, window):
    channels = 16
    layer = GradientChannelAttention(reduction=4, max_pool_window=window)
    spec = tf.TensorSpec([None, None, None, channels], tf.float32)
    make = lambda b, h, w: rng.normal(size=(b, h, w, channels)).astype(np.float32)
    inputs_a = [make(1, 5, 8), make(1, 5, 8)]
    inputs_b = [make(3, 9, 4), make(3, 9, 4)]
    layer(inputs_a)
    layer_checks.randomize(layer)
    layer_checks.dynamic_shapes(layer, [spec, spec], inputs_a, inputs_b)
    layer_checks.config_roundtrip(layer, inputs_b)
    layer_checks.save_load(layer, [spec, spec], inputs_b)
