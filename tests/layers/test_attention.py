"""GradientChannelAttention against a numpy re-computation of ARCHITECTURE section 2
with the layer's own MLP weights."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from layers import GradientChannelAttention


def _abs_laplacian(features: np.ndarray) -> np.ndarray:
    """|4-neighbour Laplacian| per channel, replicate padding; (B, H, W, C)."""
    p = np.pad(features.astype(np.float64), [(0, 0), (1, 1), (1, 1), (0, 0)], mode="edge")
    lap = p[:, :-2, 1:-1] + p[:, 2:, 1:-1] + p[:, 1:-1, :-2] + p[:, 1:-1, 2:] - 4.0 * p[:, 1:-1, 1:-1]
    return np.abs(lap)


def _mlp(layer_hidden, layer_out, v):
    """Two dense layers, no activation between."""
    hidden = v @ layer_hidden.kernel.numpy() + layer_hidden.bias.numpy()
    return hidden @ layer_out.kernel.numpy() + layer_out.bias.numpy()


def _numpy_attention(layer, fx, fy):
    gx, gy = _abs_laplacian(fx), _abs_laplacian(fy)
    a = gx.mean(axis=(1, 2)) + gy.mean(axis=(1, 2))
    m = gx.max(axis=(1, 2)) + gy.max(axis=(1, 2))
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
        GradientChannelAttention().build([(None, None, None, 8), (None, None, None, 4)])


def test_dynamic_shapes_config_and_saving(rng, layer_checks):
    channels = 16
    layer = GradientChannelAttention(reduction=4)
    spec = tf.TensorSpec([None, None, None, channels], tf.float32)
    make = lambda b, h, w: rng.normal(size=(b, h, w, channels)).astype(np.float32)
    inputs_a = [make(1, 5, 8), make(1, 5, 8)]
    inputs_b = [make(3, 9, 4), make(3, 9, 4)]
    layer(inputs_a)
    layer_checks.randomize(layer)
    layer_checks.dynamic_shapes(layer, [spec, spec], inputs_a, inputs_b)
    layer_checks.config_roundtrip(layer, inputs_b)
    layer_checks.save_load(layer, [spec, spec], inputs_b)
