"""PaddedConv2D, ResidualBlock and make_norm against numpy padding, convolution and
instance normalisation."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from layers import PaddedConv2D, ResidualBlock, make_norm


def _conv_valid(x: np.ndarray, kernel: np.ndarray, bias, stride: int) -> np.ndarray:
    """Plain valid cross-correlation, ``x (B, H, W, Cin)``, ``kernel (k, k, Cin, Cout)``."""
    k = kernel.shape[0]
    out_h = (x.shape[1] - k) // stride + 1
    out_w = (x.shape[2] - k) // stride + 1
    out = np.zeros((x.shape[0], out_h, out_w, kernel.shape[-1]))
    for i in range(k):
        for j in range(k):
            rows = slice(i, i + stride * (out_h - 1) + 1, stride)
            cols = slice(j, j + stride * (out_w - 1) + 1, stride)
            window = x[:, rows, cols]
            out += window.astype(np.float64) @ kernel[i, j]
    return out if bias is None else out + bias


def _padded_conv(x, kernel, bias, stride, mode):
    """np.pad by k - s pixels in total (the extra one after) + valid convolution."""
    total = kernel.shape[0] - stride
    before, after = total // 2, total - total // 2
    padded = np.pad(x, [(0, 0), (before, after), (before, after), (0, 0)], mode=mode)
    return _conv_valid(padded, kernel, bias, stride)


def _instance_norm(h, gamma, beta, epsilon=1e-5):
    mean = h.mean(axis=(1, 2), keepdims=True)
    var = h.var(axis=(1, 2), keepdims=True)
    return (h - mean) / np.sqrt(var + epsilon) * gamma + beta


def _leaky_relu(h, slope):
    return np.where(h >= 0, h, slope * h)


@pytest.mark.parametrize(
    "kernel_size, strides, size, expected",
    [(4, 2, (10, 12), (5, 6)), (7, 1, (9, 11), (9, 11)), (3, 1, (5, 8), (5, 8)), (1, 1, (4, 3), (4, 3))],
)
def test_padded_conv_shapes(rng, kernel_size, strides, size, expected):
    layer = PaddedConv2D(5, kernel_size, strides=strides)
    x = rng.normal(size=(2, *size, 3)).astype(np.float32)
    assert tuple(layer(x).shape) == (2, *expected, 5)
    assert layer.compute_output_shape((2, *size, 3)) == (2, *expected, 5)


@pytest.mark.parametrize("pad_mode, np_mode", [("reflect", "reflect"), ("zeros", "constant")])
@pytest.mark.parametrize("kernel_size, strides", [(4, 2), (7, 1), (3, 1), (4, 1)])
def test_padded_conv_matches_numpy(rng, layer_checks, pad_mode, np_mode, kernel_size, strides):
    x = rng.normal(size=(2, 8, 10, 3)).astype(np.float32)
    layer = PaddedConv2D(4, kernel_size, strides=strides, pad_mode=pad_mode)
    layer.build(x.shape)
    layer_checks.randomize(layer)
    expected = _padded_conv(x, layer.conv.kernel.numpy(), layer.conv.bias.numpy(), strides, np_mode)
    np.testing.assert_allclose(layer(x).numpy(), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kernel_size, strides, size", [(7, 1, (6, 4)), (4, 2, (2, 2)), (3, 1, (2, 3))])
def test_padded_conv_first_call_on_an_input_smaller_than_the_kernel(rng, kernel_size, strides, size):
    """Padding makes these sizes valid (reflect needs a pad smaller than the size)."""
    layer = PaddedConv2D(2, kernel_size, strides=strides)
    x = rng.normal(size=(1, *size, 3)).astype(np.float32)
    layer.build(x.shape)
    expected = _padded_conv(x, layer.conv.kernel.numpy(), layer.conv.bias.numpy(), strides, "reflect")
    np.testing.assert_allclose(layer(x).numpy(), expected, atol=1e-5, rtol=0)


def test_padded_conv_without_bias_and_custom_initializer(rng):
    layer = PaddedConv2D(2, 3, kernel_initializer="zeros", use_bias=False)
    x = rng.normal(size=(1, 5, 5, 2)).astype(np.float32)
    np.testing.assert_array_equal(layer(x).numpy(), 0.0)
    assert [v.name for v in layer.weights] == ["kernel"]


@pytest.mark.parametrize("pad_mode, np_mode", [("reflect", "reflect"), ("zeros", "constant")])
def test_residual_block_matches_numpy(rng, layer_checks, pad_mode, np_mode):
    x = rng.normal(size=(2, 6, 7, 4)).astype(np.float32)
    block = ResidualBlock(4, norm="instance", pad_mode=pad_mode, negative_slope=0.1)
    block.build(x.shape)
    layer_checks.randomize(block)
    # Before a norm the convolutions have no bias (the norm's offset replaces it).
    assert block.conv1.conv.bias is None and block.conv2.conv.bias is None
    conv = lambda c, h: _padded_conv(h, c.conv.kernel.numpy(), 0.0, 1, np_mode)
    norm = lambda n, h: _instance_norm(h, n.gamma.numpy(), n.beta.numpy())
    h = _leaky_relu(norm(block.norm1, conv(block.conv1, x)), 0.1)
    expected = x + norm(block.norm2, conv(block.conv2, h))
    np.testing.assert_allclose(block(x).numpy(), expected, atol=1e-4, rtol=0)


def test_residual_block_without_norm_matches_numpy(rng, layer_checks):
    x = rng.normal(size=(1, 5, 6, 3)).astype(np.float32)
    block = ResidualBlock(3, norm="none")
    block.build(x.shape)
    layer_checks.randomize(block)
    conv = lambda c, h: _padded_conv(h, c.conv.kernel.numpy(), c.conv.bias.numpy(), 1, "reflect")
    expected = x + conv(block.conv2, _leaky_relu(conv(block.conv1, x), 0.2))
    np.testing.assert_allclose(block(x).numpy(), expected, atol=1e-5, rtol=0)


def test_residual_block_with_batch_norm_keeps_shape(rng):
    x = rng.normal(size=(2, 6, 8, 4)).astype(np.float32)
    block = ResidualBlock(4, norm="batch")
    assert tuple(block(x, training=True).shape) == x.shape
    assert tuple(block(x, training=False).shape) == x.shape
    assert block.compute_output_shape(x.shape) == x.shape


def test_residual_block_rejects_other_channel_counts(rng):
    with pytest.raises(ValueError):
        ResidualBlock(4)(rng.normal(size=(1, 5, 5, 3)).astype(np.float32))


def test_make_norm(rng):
    x = rng.normal(size=(2, 5, 6, 3)).astype(np.float32)
    instance = make_norm("instance", "n")
    assert isinstance(instance, keras.layers.GroupNormalization) and instance.name == "n"
    instance.build(x.shape)
    instance.gamma.assign(np.float32([0.5, 1.0, 2.0]))
    instance.beta.assign(np.float32([0.1, -0.2, 0.3]))
    np.testing.assert_allclose(
        instance(x).numpy(), _instance_norm(x, instance.gamma.numpy(), instance.beta.numpy()), atol=1e-5
    )
    assert isinstance(make_norm("batch", "b"), keras.layers.BatchNormalization)
    assert make_norm("none", "x") is None
    with pytest.raises(ValueError):
        make_norm("layer", "x")
    with pytest.raises(ValueError):
        PaddedConv2D(2, 3, pad_mode="symmetric")


@pytest.mark.parametrize(
    "make_layer, channels",
    [
        (lambda: PaddedConv2D(3, 4, strides=2), 2),
        (lambda: PaddedConv2D(3, 7, pad_mode="zeros", use_bias=False), 2),
        (lambda: ResidualBlock(4, norm="instance"), 4),
        (lambda: ResidualBlock(4, norm="none", pad_mode="zeros", negative_slope=0.1), 4),
    ],
)
def test_dynamic_shapes_config_and_saving(rng, layer_checks, make_layer, channels):
    layer = make_layer()
    specs = [tf.TensorSpec([None, None, None, channels], tf.float32)]
    inputs_a = [rng.normal(size=(1, 8, 10, channels)).astype(np.float32)]
    inputs_b = [rng.normal(size=(3, 12, 8, channels)).astype(np.float32)]
    layer(inputs_a[0])
    layer_checks.randomize(layer)
    layer_checks.dynamic_shapes(layer, specs, inputs_a, inputs_b)
    layer_checks.config_roundtrip(layer, inputs_b)
    layer_checks.save_load(layer, specs, inputs_b)
