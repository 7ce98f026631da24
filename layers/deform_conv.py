"""Deformable convolution (v1, optionally modulated = v2) with torchvision's semantics.

``deform_conv2d`` computes, for output pixel ``(oy, ox)`` and output channel ``o``::

    y[b, oy, ox, o] = bias[o] + sum_{i, j, c} kernel[i, j, c, o]
                      * m[b, oy, ox, k] * x~[b, oy*s - p + i*d + dy_k, ox*s - p + j*d + dx_k, c]

with ``k = i * kw + j`` (taps row-major), ``(dy_k, dx_k) = offset[b, oy, ox, 2k:2k+2]``,
``m`` the optional modulation mask (1 without one) and ``x~`` bilinear sampling in which
a corner outside the image reads zero (so padding ``p`` is symmetric zero padding). At an
integer sample position the derivative with respect to the offset is the one-sided
derivative of the cell ``[floor, floor + 1]``, as in torchvision.

Implementation. The straightforward form (sample every tap of every pixel into an
im2col matrix, multiply by the kernel, let TensorFlow differentiate the gathers) builds
several ``(B * Ho * Wo * taps, C)`` tensors and a slow serial scatter-add for the input
gradient. Here one XLA-compiled loop runs over chunks of a few output rows instead, so
that a chunk's samples stay in the cache, with a hand-written backward pass:

* forward: gather the four bilinear corners of the chunk's samples, combine them with
  the bilinear weights into the chunk's columns and multiply by the kernel (per tap);
* backward: column gradients ``dy @ kernel^T``; the kernel gradient from the recomputed
  columns; the offset gradient from the column gradients and differences of the four
  gathered corners (the derivative of bilinear sampling along ``y`` is the
  ``x``-interpolation of ``x[r + 1] - x[r]`` at row ``r = floor(y)``, which is also the
  one-sided derivative the semantics ask for); the input gradient by one scatter-add per
  chunk of the four weighted corner contributions into a corner-stacked buffer, folded
  into the image once at the end.

Inside a chunk every per-sample quantity is a vector and every gathered value a row of
``C`` channels, so that XLA vectorises the gathers, the weighting and the scatter over
the channels. The forward pass orders the samples tap-major, ``(taps, rows * Wo)``: its
matmul is then one batched ``(taps, pixels, Cin) @ (taps, Cin, Cout)``. The backward
pass orders them pixel-major, ``(rows * Wo, taps)``: the columns are then a
``(pixels, taps * Cin)`` matrix and both of its matmuls plain 2-D ones, which XLA's CPU
backend runs faster than the batched, transposed products of the tap-major order (at 32
channels the whole step measured 3-18% faster, at 16 and 64 no faster; the forward pass
measured faster tap-major).
The batch is cut into ``PARALLEL_GROUPS`` groups, each with its own forward and backward
loop, which TensorFlow runs at once on separate cores. A bfloat16 input (mixed
precision) is computed in float32, in which XLA's CPU loops are 3x faster.
``benchmarks/bench_layers.py`` measures it against ``keras.layers.Conv2D``. The first
call at a new input shape compiles the two loops (a few seconds on a small CPU); any
batch and image size works, including ``None`` dimensions inside a ``tf.function``.
"""

from __future__ import annotations

from typing import NamedTuple

import keras
import tensorflow as tf

from layers.config import ConfigFromArguments
from layers.resampler import bilinear_cell, bilinear_weights

# Output pixels times channels (the larger of Cin and Cout) per chunk of the compiled
# loops, rounded down to whole output rows (at least one). A chunk's intermediates, a
# few (taps * pixels, C) arrays, then stay near a core's L2 cache: at 384 x 384 this
# measured best, 2 rows for 32 channels, 1 row for 64, 4 rows for 16.
CHUNK_ELEMENTS = 32768
# The batch is cut into this many groups, each its own compiled loop: TensorFlow's
# executor runs independent loops at once, and XLA's CPU loops alone keep two cores
# busy only part of the time (at 192 x 192, batch 4, on 2 cores: the three AffineNet
# layers' forward and backward passes 10 % faster; docs/PERFORMANCE.md).
PARALLEL_GROUPS = 2


class _Geometry(NamedTuple):
    """Static configuration of one deformable convolution (all ints)."""

    kernel_h: int
    kernel_w: int
    stride_h: int
    stride_w: int
    pad_h: int
    pad_w: int
    dilation_h: int
    dilation_w: int


def _pair(value, name: str) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    pair = tuple(int(v) for v in value)
    if len(pair) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return pair


def deform_conv2d(
    x: tf.Tensor,
    offset: tf.Tensor,
    kernel: tf.Tensor,
    bias: tf.Tensor | None = None,
    strides=1,
    padding=0,
    dilation=1,
    mask: tf.Tensor | None = None,
) -> tf.Tensor:
    """Deformable 2-D convolution, ``torchvision.ops.deform_conv2d`` in NHWC.

    Args:
      x: ``(B, H, W, Cin)`` input.
      offset: ``(B, Ho, Wo, 2 * kh * kw)`` sampling offsets in pixels, pairs
        ``(dy, dx)`` per kernel tap, taps in row-major order.
      kernel: ``(kh, kw, Cin, Cout)``; its shape must be static.
      bias: optional ``(Cout,)``.
      strides, padding, dilation: ints or ``(h, w)`` pairs; ``padding`` is symmetric
        zero padding in pixels.
      mask: optional ``(B, Ho, Wo, kh * kw)`` modulation per tap (DCNv2).

    Returns:
      ``(B, Ho, Wo, Cout)`` with ``Ho = (H + 2p - d (kh - 1) - 1) // s + 1`` (same for W),
      in the dtype of ``x`` (computed in float32 when that is bfloat16). Differentiable
      in ``x``, ``offset``, ``kernel``, ``bias`` and ``mask`` (first derivatives only).
    """
    kernel_h, kernel_w, cin, cout = (int(size) for size in kernel.shape)
    geometry = _Geometry(
        kernel_h,
        kernel_w,
        *_pair(strides, "strides"),
        *_pair(padding, "padding"),
        *_pair(dilation, "dilation"),
    )
    x = tf.convert_to_tensor(x)
    dtype = x.dtype
    # XLA's CPU backend emulates bfloat16 arithmetic: the compiled loops ran 3x slower in
    # bfloat16 than in float32 (docs/PERFORMANCE.md), so a bfloat16 input is computed
    # in float32 and only the output is rounded.
    compute_dtype = tf.float32 if dtype == tf.bfloat16 else dtype
    inputs = [tf.cast(x, compute_dtype), tf.cast(offset, compute_dtype), tf.cast(kernel, compute_dtype)]
    if mask is not None:
        inputs.append(tf.cast(mask, compute_dtype))
    out = _deform_conv(geometry, max(cin, cout), inputs)
    if bias is not None:
        out = out + tf.cast(bias, compute_dtype)
    return tf.cast(out, dtype)


def _deform_conv(geometry: _Geometry, channels: int, inputs: list[tf.Tensor]) -> tf.Tensor:
    """``deform_conv2d`` without bias on ``[x, offset, kernel(, mask)]``, with its gradient;
    ``channels``, the larger of Cin and Cout, sets the chunk size."""

    @tf.custom_gradient
    def deform_conv(*tensors):
        # The tape records this op only: the compiled loops inside are not differentiable
        # across the XLA boundary, and the backward pass below is the gradient.
        frozen = [tf.stop_gradient(t) for t in tensors]
        x, offset, kernel, *mask = frozen
        groups = _batch_groups([x, offset, *mask])
        out = tf.concat(
            [_guarded_forward(geometry, channels, group_x, group_offset, kernel, group_mask)
             for group_x, group_offset, *group_mask in groups],
            axis=0,
        )

        def grad(out_grad):
            per_group = [
                _guarded_backward(geometry, channels, group_grad, group_x, group_offset, kernel,
                                  group_mask)
                for (group_grad,), (group_x, group_offset, *group_mask)
                in zip(_batch_groups([out_grad]), groups)
            ]
            x_grad, offset_grad, kernel_grad, mask_grad = zip(*per_group)
            grads = [tf.concat(x_grad, 0), tf.concat(offset_grad, 0), tf.add_n(kernel_grad)]
            if mask:
                grads.append(tf.concat(mask_grad, 0))
            return grads

        return out, grad

    return deform_conv(*inputs)


def _batch_groups(tensors: list[tf.Tensor]) -> list[list[tf.Tensor]]:
    """``tensors`` (equal batch sizes) cut along the batch into ``PARALLEL_GROUPS`` parts
    of near-equal size (empty parts for a smaller batch), as ``[part][tensor]``."""
    batch = tf.shape(tensors[0])[0]
    sizes = [(batch + PARALLEL_GROUPS - 1 - i) // PARALLEL_GROUPS for i in range(PARALLEL_GROUPS)]
    parts = [tf.split(t, sizes, axis=0) for t in tensors]
    return [list(group) for group in zip(*parts)]


def _guarded_forward(geometry, channels, x, offset, kernel, mask):
    """``_forward`` of one batch group; an empty output (empty group or image) skips the
    compiled loop, which needs at least one output pixel."""
    mask = mask[0] if mask else None
    out_shape = tf.concat([tf.shape(offset)[:3], tf.shape(kernel)[3:]], axis=0)
    return tf.cond(
        tf.size(offset) > 0,
        lambda: _forward(geometry, channels, x, offset, kernel, mask),
        lambda: tf.zeros(out_shape, x.dtype),
    )


def _guarded_backward(geometry, channels, out_grad, x, offset, kernel, mask):
    """``_backward`` of one batch group as ``(x, offset, kernel, mask)`` gradients (the
    mask's ``None`` without one); zeros for an empty output."""
    mask = mask[0] if mask else None
    tensors = [x, offset, kernel] + ([] if mask is None else [mask])

    def backward():
        return list(_backward(geometry, channels, out_grad, x, offset, kernel, mask)[: len(tensors)])

    grads = tf.cond(tf.size(offset) > 0, backward, lambda: [tf.zeros_like(t) for t in tensors])
    return (*grads[:3], grads[3] if mask is not None else None)


class _Chunks:
    """Sampling geometry of a deformable convolution, cut into chunks of output rows.

    A chunk holds ``rows`` output rows of one image (the last chunk of an image is
    completed with zero offsets and sliced off at the end); its ``taps * rows * Wo``
    samples are ordered pixel-major (``(rows * Wo, taps)``) or, with ``tap_major``,
    tap-major (``(taps, rows * Wo)``). Per sample: ``index`` (int32) of the top-left bilinear
    corner in ``flat``, the input zero-padded by one pixel and flattened to
    ``(B * (H + 2) * (W + 2), Cin)``; the fractional position ``frac_y, frac_x`` in the
    cell; ``valid``, 1 where the cell has a corner in the image (else every weight and
    every derivative is 0, as in torchvision); ``mask``, the modulation if any. All are
    ``(chunks, samples)``.
    """

    def __init__(
        self,
        geometry: _Geometry,
        x: tf.Tensor,
        offset: tf.Tensor,
        mask,
        channels: int,
        tap_major: bool = False,
    ):
        g = geometry
        dtype = x.dtype
        self.taps = taps = g.kernel_h * g.kernel_w
        shape = tf.shape(x)
        self.batch, self.height, self.width = batch, height, width = shape[0], shape[1], shape[2]
        out_shape = tf.shape(offset)
        self.out_h, self.out_w = out_h, out_w = out_shape[1], out_shape[2]
        self.rows = rows = tf.maximum(1, CHUNK_ELEMENTS // (channels * tf.maximum(out_w, 1)))
        self.blocks = blocks = (out_h + rows - 1) // rows  # chunks per image
        self.count = batch * blocks
        self.pixels = rows * out_w
        self.samples = taps * self.pixels
        self.pad_rows = blocks * rows - out_h
        self.padded_width = width + 2
        self.flat = tf.reshape(tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]]), [-1, shape[3]])

        offset = self._pixel_major(tf.reshape(offset, [batch, out_h, out_w, taps, 2]))
        tap_rows = tf.repeat(tf.range(g.kernel_h) * g.dilation_h, g.kernel_w)
        tap_cols = tf.tile(tf.range(g.kernel_w) * g.dilation_w, [g.kernel_h])
        out_rows = tf.reshape(tf.range(blocks * rows), [1, blocks, rows, 1, 1])
        out_cols = tf.reshape(tf.range(out_w), [1, 1, 1, out_w, 1])
        y = tf.cast(out_rows * g.stride_h - g.pad_h + tf.reshape(tap_rows, [1, 1, 1, 1, taps]), dtype)
        x_pos = tf.cast(out_cols * g.stride_w - g.pad_w + tf.reshape(tap_cols, [1, 1, 1, 1, taps]), dtype)
        y = y + offset[..., 0]
        x_pos = x_pos + offset[..., 1]
        row, col, frac_y, frac_x, valid = bilinear_cell(y, x_pos, height, width)
        image_start = tf.reshape(tf.range(batch) * ((height + 2) * self.padded_width), [-1, 1, 1, 1, 1])
        def per_chunk(t):  # (B, blocks, rows, Wo, taps) -> (chunks, samples)
            if tap_major:
                t = tf.transpose(t, [0, 1, 4, 2, 3])
            return tf.reshape(t, [self.count, self.samples])
        self.index = per_chunk(image_start + row * self.padded_width + col)
        self.frac_y = per_chunk(frac_y)
        self.frac_x = per_chunk(frac_x)
        self.valid = per_chunk(valid)
        self.mask = None
        if mask is not None:
            self.mask = per_chunk(self._pixel_major(tf.reshape(mask, [batch, out_h, out_w, taps])))

    def _pixel_major(self, t: tf.Tensor) -> tf.Tensor:
        """``(B, Ho, Wo, taps, ...)`` -> ``(B, blocks, rows, Wo, taps, ...)``."""
        extra = len(t.shape) - 4
        t = tf.pad(t, [[0, 0], [0, self.pad_rows], [0, 0], [0, 0]] + [[0, 0]] * extra)
        return tf.reshape(
            t, tf.concat([[self.batch, self.blocks, self.rows, self.out_w, self.taps], tf.shape(t)[4:]], 0)
        )

    def pixel_rows(self, t: tf.Tensor) -> tf.Tensor:
        """``(B, Ho, Wo, C)`` -> ``(chunks, pixels, C)``."""
        t = tf.pad(t, [[0, 0], [0, self.pad_rows], [0, 0], [0, 0]])
        return tf.reshape(t, [self.count, self.pixels, tf.shape(t)[3]])

    def image(self, t: tf.Tensor) -> tf.Tensor:
        """``(chunks, pixels, C)`` -> ``(B, Ho, Wo, C)``."""
        t = tf.reshape(t, [self.batch, self.blocks * self.rows, self.out_w, tf.shape(t)[2]])
        return t[:, : self.out_h]

    def per_tap(self, t: tf.Tensor) -> tf.Tensor:
        """``(chunks, samples, n)`` of pixel-major samples -> ``(B, Ho, Wo, taps, n)``."""
        t = tf.reshape(t, [self.batch, self.blocks * self.rows, self.out_w, self.taps, tf.shape(t)[2]])
        return t[:, : self.out_h]

    def corners(self, index: tf.Tensor) -> list[tf.Tensor]:
        """Rows of ``flat`` at the four corners: top-left, top-right, bottom-left, -right."""
        step = self.padded_width
        return [tf.gather(self.flat, index + shift) for shift in (0, 1, step, step + 1)]


@tf.function(jit_compile=True, reduce_retracing=True)
def _forward(geometry: _Geometry, channels: int, x, offset, kernel, mask):
    chunks = _Chunks(geometry, x, offset, mask, channels, tap_major=True)
    taps = chunks.taps
    cin, cout = tf.shape(kernel)[2], tf.shape(kernel)[3]
    kernel = tf.reshape(kernel, [taps, cin, cout])

    def body(i, outputs):
        scale = chunks.valid[i] if chunks.mask is None else chunks.valid[i] * chunks.mask[i]
        weights = bilinear_weights(chunks.frac_y[i], chunks.frac_x[i])
        corners = chunks.corners(chunks.index[i])
        columns = tf.add_n([(w * scale)[:, None] * c for w, c in zip(weights, corners)])
        columns = tf.reshape(columns, [taps, chunks.pixels, cin])
        return i + 1, outputs.write(i, tf.reduce_sum(tf.matmul(columns, kernel), axis=0))

    outputs = tf.TensorArray(x.dtype, size=chunks.count)
    _, outputs = tf.while_loop(
        lambda i, _: i < chunks.count, body, [0, outputs], maximum_iterations=chunks.count
    )
    return chunks.image(outputs.stack())


@tf.function(jit_compile=True, reduce_retracing=True)
def _backward(geometry: _Geometry, channels: int, out_grad, x, offset, kernel, mask):
    """Gradients of ``sum(out * out_grad)`` with respect to ``x, offset, kernel, mask``
    (``None`` for the mask without one)."""
    chunks = _Chunks(geometry, x, offset, mask, channels)
    taps, dtype = chunks.taps, x.dtype
    kernel_shape = tf.shape(kernel)
    cin, cout = kernel_shape[2], kernel_shape[3]
    kernel = tf.reshape(kernel, [taps * cin, cout])
    out_grad = chunks.pixel_rows(out_grad)
    flat, step = chunks.flat, chunks.padded_width

    def body(i, corner_grads, kernel_grad, sample_grads):
        index, frac_y, frac_x, valid = (
            chunks.index[i], chunks.frac_y[i], chunks.frac_x[i], chunks.valid[i]
        )
        pixel_grad = out_grad[i]
        # d out / d columns: (pixels, taps * Cin) = out_grad @ kernel^T, as (samples, Cin).
        column_grad = tf.matmul(pixel_grad, kernel, transpose_b=True)
        column_grad = tf.reshape(column_grad, [chunks.samples, cin])
        weights = bilinear_weights(frac_y, frac_x)
        top_left, top_right, bottom_left, bottom_right = corners = chunks.corners(index)
        columns = tf.add_n([(w * valid)[:, None] * c for w, c in zip(weights, corners)])
        if chunks.mask is not None:
            modulation = chunks.mask[i]
            mask_grad = tf.reduce_sum(column_grad * columns, axis=-1)
            columns = columns * modulation[:, None]
            column_grad = column_grad * modulation[:, None]
        columns = tf.reshape(columns, [chunks.pixels, taps * cin])
        kernel_grad += tf.matmul(columns, pixel_grad, transpose_a=True)
        d_sample_y = (1.0 - frac_x)[:, None] * (bottom_left - top_left) + frac_x[:, None] * (
            bottom_right - top_right
        )
        d_sample_x = (1.0 - frac_y)[:, None] * (top_right - top_left) + frac_y[:, None] * (
            bottom_right - bottom_left
        )
        per_sample = [
            tf.reduce_sum(column_grad * d_sample_y, axis=-1) * valid,
            tf.reduce_sum(column_grad * d_sample_x, axis=-1) * valid,
        ]
        if chunks.mask is not None:
            per_sample.append(mask_grad)
        sample_grads = sample_grads.write(i, tf.stack(per_sample, axis=-1))
        # The four weighted corner contributions of each sample, stacked: one row-wise
        # scatter-add at the top-left index.
        contributions = tf.stack(weights, axis=-1)[:, :, None] * (valid[:, None] * column_grad)[:, None, :]
        corner_grads = tf.tensor_scatter_nd_add(corner_grads, index[:, None], contributions)
        return i + 1, corner_grads, kernel_grad, sample_grads

    corner_grads = tf.zeros([tf.shape(flat)[0], 4, cin], dtype)
    sample_grads = tf.TensorArray(dtype, size=chunks.count)
    _, corner_grads, kernel_grad, sample_grads = tf.while_loop(
        lambda i, *_: i < chunks.count,
        body,
        [0, corner_grads, tf.zeros_like(kernel), sample_grads],
        maximum_iterations=chunks.count,
    )
    # Corner (dy, dx) of the top-left index (r, c) is the padded pixel (r + dy, c + dx).
    grads = tf.reshape(corner_grads, [chunks.batch, chunks.height + 2, step, 4, cin])
    x_grad = (
        grads[:, 1:-1, 1:-1, 0] + grads[:, 1:-1, :-2, 1] + grads[:, :-2, 1:-1, 2] + grads[:, :-2, :-2, 3]
    )
    sample_grads = chunks.per_tap(sample_grads.stack())  # (B, Ho, Wo, taps, 2 or 3)
    offset_grad = tf.reshape(sample_grads[..., :2], tf.shape(offset))
    kernel_grad = tf.reshape(kernel_grad, kernel_shape)
    mask_grad = None if mask is None else sample_grads[..., 2]
    return x_grad, offset_grad, kernel_grad, mask_grad


@keras.saving.register_keras_serializable(package="rfnet_tf")
class DeformableConv2D(ConfigFromArguments, keras.layers.Layer):
    """Deformable convolution that predicts its own offsets (and, if modulated, mask).

    The offset branch is a ``kh x kw`` convolution over the layer's input with the
    same stride, padding and dilation, giving ``2 * kh * kw`` channels of ``(dy, dx)``
    pixel offsets. It is zero-initialised, so a newly built layer is exactly a plain
    convolution. With ``modulated=True`` a mask branch of ``kh * kw`` channels gives
    ``m = 2 * sigmoid(.)``: also zero-initialised, hence ``m = 1`` at the start
    (DCNv2 uses ``sigmoid``, starting at 0.5; the factor 2 keeps the new layer a
    plain convolution). The branch variables are named ``offset_kernel``,
    ``offset_bias``, ``mask_kernel`` and ``mask_bias``.

    Args:
      filters: output channels.
      kernel_size: int or pair.
      strides: int or pair.
      padding: ``"same"`` (symmetric ``d * (k - 1) // 2``, odd kernels only),
        ``"valid"`` or an int / pair of symmetric zero padding.
      dilation_rate: int or pair.
      use_bias: add a bias to the main convolution.
      modulated: predict a modulation mask (DCNv2).

    Input ``(B, H, W, Cin)``, output ``(B, Ho, Wo, filters)``.
    """

    CONFIG_ARGUMENTS = (
        "filters", "kernel_size", "strides", "padding", "dilation_rate", "use_bias", "modulated"
    )

    def __init__(
        self,
        filters: int,
        kernel_size,
        strides=1,
        padding="same",
        dilation_rate=1,
        use_bias: bool = True,
        modulated: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.strides = _pair(strides, "strides")
        self.dilation_rate = _pair(dilation_rate, "dilation_rate")
        self.padding = padding
        self.use_bias = bool(use_bias)
        self.modulated = bool(modulated)
        self._padding_pixels = self._resolve_padding(padding)
        if max(self.strides) > 1 and max(self.dilation_rate) > 1:
            # tf.nn.conv2d (the offset branch) does not support both on the CPU.
            raise ValueError("strides > 1 together with dilation_rate > 1 is not supported")

    def _resolve_padding(self, padding) -> tuple[int, int]:
        if padding == "valid":
            return 0, 0
        if padding == "same":
            pads = []
            for k, d in zip(self.kernel_size, self.dilation_rate):
                if k % 2 == 0:
                    raise ValueError(
                        "padding='same' needs an odd kernel size (symmetric padding); "
                        f"got kernel_size={self.kernel_size}"
                    )
                pads.append(d * (k - 1) // 2)
            return tuple(pads)
        if isinstance(padding, str):
            raise ValueError(f"padding must be 'same', 'valid' or ints, got {padding!r}")
        return _pair(padding, "padding")

    @property
    def num_taps(self) -> int:
        return self.kernel_size[0] * self.kernel_size[1]

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError("DeformableConv2D needs a known number of input channels")
        kh, kw = self.kernel_size
        self.kernel = self.add_weight(
            name="kernel", shape=(kh, kw, channels, self.filters), initializer="glorot_uniform"
        )
        self.bias = (
            self.add_weight(name="bias", shape=(self.filters,), initializer="zeros")
            if self.use_bias
            else None
        )
        self.offset_kernel = self.add_weight(
            name="offset_kernel", shape=(kh, kw, channels, 2 * self.num_taps), initializer="zeros"
        )
        self.offset_bias = self.add_weight(
            name="offset_bias", shape=(2 * self.num_taps,), initializer="zeros"
        )
        if self.modulated:
            self.mask_kernel = self.add_weight(
                name="mask_kernel", shape=(kh, kw, channels, self.num_taps), initializer="zeros"
            )
            self.mask_bias = self.add_weight(
                name="mask_bias", shape=(self.num_taps,), initializer="zeros"
            )

    def _branch(self, padded, kernel, bias):
        out = tf.nn.conv2d(
            padded, kernel, strides=self.strides, padding="VALID", dilations=self.dilation_rate
        )
        return out + bias

    def call(self, inputs):
        ph, pw = self._padding_pixels
        padded = tf.pad(inputs, [[0, 0], [ph, ph], [pw, pw], [0, 0]])
        offset = self._branch(padded, self.offset_kernel, self.offset_bias)
        mask = None
        if self.modulated:
            mask = 2.0 * tf.sigmoid(self._branch(padded, self.mask_kernel, self.mask_bias))
        return deform_conv2d(
            inputs,
            offset,
            self.kernel,
            self.bias,
            strides=self.strides,
            padding=self._padding_pixels,
            dilation=self.dilation_rate,
            mask=mask,
        )

    def compute_output_shape(self, input_shape):
        def out(size, k, s, p, d):
            return None if size is None else (size + 2 * p - d * (k - 1) - 1) // s + 1

        b, h, w, _ = input_shape
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (
            self.kernel_size,
            self.strides,
            self._padding_pixels,
            self.dilation_rate,
        )
        return (b, out(h, kh, sh, ph, dh), out(w, kw, sw, pw, dw), self.filters)
