"""Differentiable bilinear resampling and spatial transforms.

Conventions (ARCHITECTURE.md section 1):

* Images are NHWC, ``float32``.
* Pixel coordinates are ``(y, x)``: row, column, zero-based, pixel centres on integers.
* A dense flow ``(B, H, W, 2)`` holds ``(dy, dx)`` in pixels and warps backward:
  ``out[p] = in[p + flow[p]]``.
* An affine ``(B, 2, 3)`` matrix ``A`` acts on normalised coordinates
  ``u = 2x / (W - 1) - 1``, ``v = 2y / (H - 1) - 1`` (align-corners, ``[u, v, 1]``
  order) and warps backward: the output pixel at ``(u, v)`` samples the input at
  ``A @ [u, v, 1]``. The same units measure a flow where a loss needs them
  (:func:`normalised_flow`).
* Sampling is bilinear; with ``padding_mode="zeros"`` a bilinear corner outside the
  image contributes zero (the torchvision / DCN rule), with ``"border"`` the sample
  point is clamped into the image, with ``"reflect"`` it is mirrored about the border
  pixels (``numpy.pad(mode="reflect")``: the edge is not repeated).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from layers.config import ConfigFromArguments
from rfnet_tf.conventions import MASK_TOLERANCE_PX

PADDING_MODES = ("zeros", "border", "reflect")


def _check_padding_mode(padding_mode: str) -> None:
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")


def reflect_coordinates(coords: tf.Tensor, height, width) -> tf.Tensor:
    """``(..., 2)`` ``(y, x)`` coordinates mirrored into ``[0, H-1] x [0, W-1]``.

    Each axis is folded with period ``2 (n - 1)`` about the border pixels, so that
    ``-1`` becomes ``1`` and ``n`` becomes ``n - 2`` (as ``numpy.pad(mode="reflect")``);
    inside the image the coordinates are unchanged. A one-pixel axis maps to 0.
    """

    def fold(values, size):
        last = tf.cast(size, values.dtype) - 1.0
        period = tf.maximum(2.0 * last, 1.0)
        folded = tf.math.floormod(values, period)
        return tf.where(last > 0.0, tf.minimum(folded, period - folded), tf.zeros_like(values))

    return tf.stack([fold(coords[..., 0], height), fold(coords[..., 1], width)], axis=-1)


def bilinear_cell(y: tf.Tensor, x: tf.Tensor, height, width):
    """Bilinear cell of zero-padded sampling at ``(y, x)``: ``(row, col, frac_y, frac_x,
    valid)``; shared by the resampler and the deformable convolution.

    ``row``/``col`` (int32) index the top-left corner in the image padded by one pixel
    on every side; ``frac_y``/``frac_x`` are the position inside the cell; ``valid`` is
    1 for cells with at least one corner in the image and 0 beyond (where the clamped
    index is harmless and every weight is 0). The floor is a constant of the cell: at
    an integer position the derivative is the one of the cell ``[floor, floor + 1]``.
    """
    y0 = tf.stop_gradient(tf.floor(y))
    x0 = tf.stop_gradient(tf.floor(x))
    h = tf.cast(height, y.dtype)
    w = tf.cast(width, x.dtype)
    # (A whole-point cut-off at y <= -1 would differ from torchvision, whose gradient
    # at y = -1 is the one-sided derivative of the cell [-1, 0].)
    valid = tf.cast((y0 >= -1.0) & (y0 <= h - 1.0) & (x0 >= -1.0) & (x0 <= w - 1.0), y.dtype)
    # +1: index into the padded image.
    row = tf.cast(tf.clip_by_value(y0, -1.0, h - 1.0), tf.int32) + 1
    col = tf.cast(tf.clip_by_value(x0, -1.0, w - 1.0), tf.int32) + 1
    return row, col, y - y0, x - x0, valid


def bilinear_weights(frac_y: tf.Tensor, frac_x: tf.Tensor) -> list[tf.Tensor]:
    """Weights of the cell's corners top-left, top-right, bottom-left, bottom-right."""
    return [
        (1.0 - frac_y) * (1.0 - frac_x),
        (1.0 - frac_y) * frac_x,
        frac_y * (1.0 - frac_x),
        frac_y * frac_x,
    ]


def bilinear_corners(coords: tf.Tensor, height: tf.Tensor, width: tf.Tensor):
    """Top-left corner indices and bilinear weights of zero-padded sampling.

    The image is thought of as padded by one zero pixel on every side, so that the
    four corners of any point with ``-1 <= y < H`` and ``-1 <= x < W`` exist in the
    padded image and a corner outside the image reads zero. Points further out get
    all-zero weights (and a clamped, harmless index), which also zeroes their
    gradient, as in torchvision.

    The floor is held constant under differentiation, so at an integer coordinate
    the derivative is the one-sided derivative of the cell ``[floor, floor + 1]``.

    Args:
      coords: ``(..., 2)`` float pixel coordinates ``(y, x)``.
      height, width: scalar int tensors, the unpadded image size.

    Returns:
      ``(row, col, weights)``: ``row``/``col`` ``(...)`` int32 indices of the top-left
      corner in the padded image; ``weights`` ``(..., 4)`` for the corners
      (top-left, top-right, bottom-left, bottom-right).
    """
    row, col, fy, fx, valid = bilinear_cell(coords[..., 0], coords[..., 1], height, width)
    weights = tf.stack(bilinear_weights(fy, fx), axis=-1) * valid[..., None]
    return row, col, weights


def inside_mask(coords: tf.Tensor, height, width) -> tf.Tensor:
    """``(..., 1)`` float mask: 1 where ``(y, x)`` lies in ``[0, H-1] x [0, W-1]``."""
    y = coords[..., 0]
    x = coords[..., 1]
    h = tf.cast(height, y.dtype)
    w = tf.cast(width, x.dtype)
    tol = MASK_TOLERANCE_PX
    inside = (y >= -tol) & (y <= h - 1.0 + tol) & (x >= -tol) & (x <= w - 1.0 + tol)
    return tf.cast(inside, coords.dtype)[..., None]


def resample(image: tf.Tensor, coords: tf.Tensor, padding_mode: str = "zeros"):
    """Bilinear sampling of ``image`` at pixel coordinates ``coords``.

    Args:
      image: ``(B, H, W, C)`` float.
      coords: ``(B, H', W', 2)`` float pixel coordinates ``(y, x)`` into ``image``.
      padding_mode: ``"zeros"`` (a corner outside the image contributes 0),
        ``"border"`` (coordinates are clamped to the image) or ``"reflect"``
        (coordinates are mirrored into the image, :func:`reflect_coordinates`).

    Returns:
      ``(sampled, mask)``: ``sampled (B, H', W', C)``; ``mask (B, H', W', 1)``, 1 where
      the sample point lies inside ``[0, H-1] x [0, W-1]`` (before any clamping).
      Differentiable in ``image`` and ``coords``.
    """
    _check_padding_mode(padding_mode)
    image = tf.convert_to_tensor(image)
    coords = tf.cast(coords, image.dtype)
    shape = tf.shape(image)
    height, width = shape[1], shape[2]
    mask = inside_mask(coords, height, width)

    if padding_mode == "reflect":
        coords = reflect_coordinates(coords, height, width)
    if padding_mode in ("border", "reflect"):
        h = tf.cast(height, coords.dtype)
        w = tf.cast(width, coords.dtype)
        coords = tf.stack(
            [
                tf.clip_by_value(coords[..., 0], 0.0, h - 1.0),
                tf.clip_by_value(coords[..., 1], 0.0, w - 1.0),
            ],
            axis=-1,
        )
        # A one-pixel symmetric pad repeats the edge pixel, so the corner beyond the
        # last row or column (weight 0 after clamping, but read) is the edge value.
        padded = tf.pad(image, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="SYMMETRIC")
    else:
        padded = tf.pad(image, [[0, 0], [1, 1], [1, 1], [0, 0]])
    return _sample_padded(padded, coords), mask


@tf.custom_gradient
def _sample_padded(padded: tf.Tensor, coords: tf.Tensor):
    """Bilinear samples of the image inside ``padded`` (one pixel of padding on every
    side) at ``coords`` (pixels of the unpadded image), with a hand-written gradient:
    TensorFlow's own one turns each of the four corner gathers into a serial scatter-add.
    """
    shape = tf.shape(padded)
    batch, padded_height, padded_width, channels = shape[0], shape[1], shape[2], shape[3]
    row, col, weights = bilinear_corners(coords, padded_height - 2, padded_width - 2)
    flat = tf.reshape(padded, [-1, channels])
    batch_offset = tf.reshape(tf.range(batch) * padded_height * padded_width, [-1, 1, 1])
    top_left = batch_offset + row * padded_width + col
    corner_offsets = (0, 1, padded_width, padded_width + 1)
    sampled = tf.add_n(
        [
            tf.gather(flat, top_left + offset) * weights[..., k : k + 1]
            for k, offset in enumerate(corner_offsets)
        ]
    )

    def grad(sampled_grad):
        frozen = [tf.stop_gradient(t) for t in (padded, coords, sampled_grad)]
        return _sample_padded_grad(*frozen)

    return sampled, grad


@tf.function(jit_compile=True, reduce_retracing=True)
def _sample_padded_grad(padded: tf.Tensor, coords: tf.Tensor, sampled_grad: tf.Tensor):
    """Gradients of ``sum(_sample_padded(padded, coords) * sampled_grad)`` with respect
    to ``padded`` and ``coords``, in one XLA-compiled function (compiled once per shape;
    only training differentiates, at fixed shapes, so the forward stays uncompiled).

    The image gradient is one row-wise scatter-add per sample of its four weighted corner
    contributions, stacked, into a corner-stacked buffer that is folded into the image
    afterwards. The coordinate gradient is the derivative of the bilinear interpolation
    inside the cell (the one-sided derivative of ``[floor, floor + 1]`` at integers).
    """
    shape = tf.shape(padded)
    batch, padded_height, padded_width, channels = shape[0], shape[1], shape[2], shape[3]
    row, col, fy, fx, valid = bilinear_cell(
        coords[..., 0], coords[..., 1], padded_height - 2, padded_width - 2
    )
    batch_offset = tf.reshape(tf.range(batch) * padded_height * padded_width, [-1, 1, 1])
    top_left = tf.reshape(batch_offset + row * padded_width + col, [-1])
    fy, fx, valid = (tf.reshape(t, [-1, 1]) for t in (fy, fx, valid))
    out_grad = tf.reshape(sampled_grad, [-1, channels]) * valid
    flat = tf.reshape(padded, [-1, channels])
    g00, g01, g10, g11 = (
        tf.gather(flat, top_left + offset)
        for offset in (0, 1, padded_width, padded_width + 1)
    )
    coords_grad = tf.stack(
        [
            tf.reduce_sum(out_grad * ((1.0 - fx) * (g10 - g00) + fx * (g11 - g01)), axis=-1),
            tf.reduce_sum(out_grad * ((1.0 - fy) * (g01 - g00) + fy * (g11 - g10)), axis=-1),
        ],
        axis=-1,
    )
    weights = tf.stack([(1.0 - fy) * (1.0 - fx), (1.0 - fy) * fx, fy * (1.0 - fx), fy * fx], axis=1)
    corner_grads = tf.tensor_scatter_nd_add(
        tf.zeros([tf.shape(flat)[0], 4, channels], padded.dtype),
        top_left[:, None],
        weights * out_grad[:, None, :],
    )
    # Corner (dy, dx) of the top-left pixel (r, c) is the padded pixel (r + dy, c + dx).
    grads = tf.reshape(corner_grads, [batch, padded_height, padded_width, 4, channels])
    padded_grad = (
        grads[..., 0, :]
        + tf.pad(grads[:, :, :-1, 1], [[0, 0], [0, 0], [1, 0], [0, 0]])
        + tf.pad(grads[:, :-1, :, 2], [[0, 0], [1, 0], [0, 0], [0, 0]])
        + tf.pad(grads[:, :-1, :-1, 3], [[0, 0], [1, 0], [1, 0], [0, 0]])
    )
    return padded_grad, tf.reshape(coords_grad, tf.shape(coords))


def identity_grid(batch, height, width, dtype=tf.float32) -> tf.Tensor:
    """``(B, H, W, 2)`` pixel coordinates ``(y, x)`` of every pixel."""
    ys = tf.cast(tf.range(height), dtype)
    xs = tf.cast(tf.range(width), dtype)
    grid = tf.stack(tf.meshgrid(ys, xs, indexing="ij"), axis=-1)
    return tf.tile(grid[None], [batch, 1, 1, 1])


def _normalising_extents(height, width, dtype) -> tuple[tf.Tensor, tf.Tensor]:
    """``(H - 1, W - 1)`` as ``dtype``, each at least 1: the pixel extents that span two
    normalised units. A one-pixel axis has no extent to normalise; it maps to ``u = -1``
    and back to 0."""
    h = tf.cast(height, dtype)
    w = tf.cast(width, dtype)
    return tf.maximum(h - 1.0, 1.0), tf.maximum(w - 1.0, 1.0)


def normalised_flow(flow: tf.Tensor) -> tf.Tensor:
    """A pixel flow in the normalised units of the affines (align-corners convention).

    ``(dy, dx)`` px becomes ``(2 dy / (H - 1), 2 dx / (W - 1))`` (each extent at least
    1, as in :func:`affine_grid`): the displacement ``(dv, du)`` of the normalised
    coordinates ``v, u``, for which the image spans ``[-1, 1]`` on each axis. Pure
    scaling per axis, differentiable.

    Args:
      flow: ``(B, H, W, 2)`` ``(dy, dx)`` pixels; ``H, W`` are the image's size.

    Returns:
      ``(B, H, W, 2)`` ``(dv, du)`` normalised units, the dtype of ``flow``.
    """
    flow = tf.convert_to_tensor(flow)
    shape = tf.shape(flow)
    extent_y, extent_x = _normalising_extents(shape[1], shape[2], flow.dtype)
    return flow * tf.stack([2.0 / extent_y, 2.0 / extent_x])


def affine_grid(theta: tf.Tensor, height, width) -> tf.Tensor:
    """Pixel sample coordinates of a backward affine warp.

    Args:
      theta: ``(B, 2, 3)`` affine in the normalised align-corners convention
        (``[u, v, 1]`` order, see the module docstring).
      height, width: output (and input) size in pixels; ints or scalar tensors.

    Returns:
      ``(B, H, W, 2)`` pixel coordinates ``(y, x)`` at which the output samples.
    """
    theta = tf.convert_to_tensor(theta)
    dtype = theta.dtype
    h = tf.cast(height, dtype)
    w = tf.cast(width, dtype)
    sy, sx = _normalising_extents(height, width, dtype)
    v = 2.0 * tf.cast(tf.range(height), dtype) / sy - 1.0
    u = 2.0 * tf.cast(tf.range(width), dtype) / sx - 1.0
    vv, uu = tf.meshgrid(v, u, indexing="ij")
    homogeneous = tf.stack([uu, vv, tf.ones_like(uu)], axis=-1)  # (H, W, 3)
    sample = tf.einsum("bij,hwj->bhwi", theta, homogeneous)  # (B, H, W, 2) as (u, v)
    x = (sample[..., 0] + 1.0) * 0.5 * (w - 1.0)
    y = (sample[..., 1] + 1.0) * 0.5 * (h - 1.0)
    return tf.stack([y, x], axis=-1)


def warp_affine(image: tf.Tensor, theta: tf.Tensor, padding_mode: str = "zeros"):
    """Backward affine warp of ``image (B, H, W, C)`` by ``theta (B, 2, 3)``.

    Returns ``(warped (B, H, W, C), mask (B, H, W, 1))``.
    """
    shape = tf.shape(image)
    coords = affine_grid(tf.cast(theta, image.dtype), shape[1], shape[2])
    return resample(image, coords, padding_mode)


def warp_flow(image: tf.Tensor, flow: tf.Tensor, padding_mode: str = "zeros"):
    """Backward warp ``out[p] = image[p + flow[p]]``.

    Args:
      image: ``(B, H, W, C)``.
      flow: ``(B, H, W, 2)`` displacement ``(dy, dx)`` in pixels.

    Returns ``(warped (B, H, W, C), mask (B, H, W, 1))``.
    """
    flow = tf.cast(flow, image.dtype)
    shape = tf.shape(flow)
    coords = identity_grid(shape[0], shape[1], shape[2], flow.dtype) + flow
    return resample(image, coords, padding_mode)


@keras.saving.register_keras_serializable(package="rfnet_tf")
class SpatialTransformer(ConfigFromArguments, keras.layers.Layer):
    """Warps an image by an affine matrix or a dense flow.

    Called as ``layer([image, transform])`` with ``image (B, H, W, C)`` and either
    ``transform (B, 2, 3)`` (normalised affine) or ``(B, H, W, 2)`` (flow ``(dy, dx)``
    in pixels); the transform's rank decides which. Returns
    ``[warped (B, H, W, C), mask (B, H, W, 1)]``.
    """

    CONFIG_ARGUMENTS = ("padding_mode",)

    def __init__(self, padding_mode: str = "zeros", **kwargs):
        super().__init__(**kwargs)
        _check_padding_mode(padding_mode)
        self.padding_mode = padding_mode

    def call(self, inputs):
        image, transform = inputs
        if len(transform.shape) == 3:
            return list(warp_affine(image, transform, self.padding_mode))
        if len(transform.shape) == 4:
            return list(warp_flow(image, transform, self.padding_mode))
        raise ValueError(
            "transform must be an affine (B, 2, 3) or a flow (B, H, W, 2), "
            f"got shape {transform.shape}"
        )

    def compute_output_shape(self, input_shape):
        image_shape = input_shape[0]
        return [tuple(image_shape), tuple(image_shape[:-1]) + (1,)]
