"""Test-time refinement of the coarse affine by optimising the paper's coarse loss.

An extension, not part of the paper: AffineNet predicts the affine in one pass, and a
network trained with a short CPU schedule predicts it poorly (see ``weights/README.md``).
Eq. 4, ``L_coarse = -NCC(I_x->y^C, I_y)``, is a differentiable function of the six
affine numbers alone, so the prediction can be improved for each pair at inference by
gradient descent on it, the way instance optimisation refines learned registrations.
TransNet's translation is what makes NCC meaningful across the two modalities.

The search runs coarse to fine on a pyramid of the coarse input (2x2 average pooling):

1. at the coarsest level it starts from ``len(START_OFFSETS)`` (225) affines, the predicted
   one composed with small similarity transforms, and keeps, per image, the one that
   ends with the highest NCC (a single descent from one start can stop in a local
   optimum when the misalignment is large);
2. the kept affine descends further at each finer level.

Descent is Adam on the loss of each image (the images of a batch are independent).
Everything is TensorFlow graph code: it runs inside ``tf.function`` and a SavedModel.
"""

from __future__ import annotations

import math

import tensorflow as tf

from layers import affine_grid, resample
from losses import ncc

# Similarity transforms composed with the prediction at the coarsest level: (rotation
# in degrees, isotropic scale, shift y, shift x) of the normalised frame (a shift of
# 0.2 is 10 % of the image). They span the spec's misalignments, which reach 10
# degrees, scales 0.8-1.25 and shifts of 10 % per axis (ARCHITECTURE section 5); a
# grid of shifts up to 6 % only (81 starts) left one of the 7 real pairs of the
# README's evaluation unregistered, while 28 pair-misalignments of other seeds all
# converged either way.
SHIFTS = (-0.24, -0.12, 0.0, 0.12, 0.24)
START_OFFSETS = tuple(
    (rotation, scale, shift_y, shift_x)
    for rotation in (-6.0, 0.0, 6.0)
    for scale in (0.87, 1.0, 1.15)
    for shift_y in SHIFTS
    for shift_x in SHIFTS
)
ADAM_BETA_1 = 0.9
ADAM_BETA_2 = 0.999
ADAM_EPSILON = 1e-8


def similarity_offsets(offsets=START_OFFSETS, dtype=tf.float32) -> tf.Tensor:
    """``(K, 3, 3)`` homogeneous similarity transforms of the normalised frame.

    ``offsets``: ``(rotation_deg, scale, shift_y, shift_x)`` each; the transform is
    ``p -> scale * R(rotation) p + (shift_x, shift_y)`` on ``p = (u, v)``.
    """
    matrices = []
    for rotation, scale, shift_y, shift_x in offsets:
        c = scale * math.cos(math.radians(rotation))
        s = scale * math.sin(math.radians(rotation))
        matrices.append([[c, -s, shift_x], [s, c, shift_y], [0.0, 0.0, 1.0]])
    return tf.constant(matrices, dtype)


def compose_affines(outer: tf.Tensor, inner: tf.Tensor) -> tf.Tensor:
    """``(N, 2, 3)`` affine of ``p -> outer(inner(p))`` for ``(N, 2, 3)`` and ``(N, 3, 3)``."""
    bottom = tf.tile(tf.constant([[[0.0, 0.0, 1.0]]], outer.dtype), [tf.shape(outer)[0], 1, 1])
    return tf.matmul(tf.concat([outer, bottom], axis=1), inner)[:, :2, :]


def affine_ncc(theta: tf.Tensor, moving: tf.Tensor, fixed: tf.Tensor) -> tf.Tensor:
    """``(N,)`` masked NCC (Eq. 5) of ``moving`` warped by ``theta (N, 2, 3)`` and ``fixed``.

    ``moving``, ``fixed``: ``(N, h, w, 1)``; pixels sampled outside ``moving`` are
    excluded through the warp's mask.
    """
    shape = tf.shape(fixed)
    warped, mask = resample(moving, affine_grid(theta, shape[1], shape[2]))
    return ncc(warped, fixed, mask)


def descend(theta: tf.Tensor, moving: tf.Tensor, fixed: tf.Tensor, steps: int, learning_rate: float):
    """``steps`` Adam steps on ``-affine_ncc`` of each image; returns ``(theta, ncc)``.

    ``theta (N, 2, 3)``; ``moving``, ``fixed`` ``(N, h, w, 1)``. Each image's loss is
    summed, not averaged, into the objective, so its gradient is its own.
    """

    def step(index, theta, first_moment, second_moment):
        with tf.GradientTape() as tape:
            tape.watch(theta)
            loss = -tf.reduce_sum(affine_ncc(theta, moving, fixed))
        gradient = tape.gradient(loss, theta)
        first_moment = ADAM_BETA_1 * first_moment + (1.0 - ADAM_BETA_1) * gradient
        second_moment = ADAM_BETA_2 * second_moment + (1.0 - ADAM_BETA_2) * tf.square(gradient)
        t = tf.cast(index + 1, theta.dtype)
        corrected_first = first_moment / (1.0 - ADAM_BETA_1**t)
        corrected_second = second_moment / (1.0 - ADAM_BETA_2**t)
        theta = theta - learning_rate * corrected_first / (tf.sqrt(corrected_second) + ADAM_EPSILON)
        return index + 1, theta, first_moment, second_moment

    zeros = tf.zeros_like(theta)
    _, theta, _, _ = tf.while_loop(
        lambda index, *_: index < steps, step, (tf.constant(0), theta, zeros, zeros)
    )
    return theta, affine_ncc(theta, moving, fixed)


def refine_affine(
    theta: tf.Tensor,
    moving: tf.Tensor,
    fixed: tf.Tensor,
    steps: int = 60,
    levels: int = 3,
    learning_rate: float = 0.01,
    offsets=START_OFFSETS,
) -> tf.Tensor:
    """Refines a backward normalised affine by descending Eq. 4 coarse to fine.

    Args:
      theta: ``(B, 2, 3)`` the starting affine (AffineNet's prediction), normalised
        align-corners convention, ``registered[q] = moving[theta(q)]``.
      moving: ``(B, h, w, 1)`` the translated VIS ``I_x->y`` at the coarse input size.
      fixed: ``(B, h, w, 1)`` the NIR ``I_y`` at the same size.
      steps: Adam steps per pyramid level (0 returns ``theta`` unchanged).
      levels: pyramid levels; level ``l`` is ``levels - 1 - l`` rounds of 2x2 average
        pooling, so ``h`` and ``w`` should be at least ``8 * 2 ** (levels - 1)``.
      learning_rate: Adam's step size, in normalised units (1 = half the image).
      offsets: ``(rotation_deg, scale, shift_y, shift_x)`` start transforms of the
        coarsest level (see ``similarity_offsets``).

    Returns:
      ``(B, 2, 3)`` the refined affine, same convention.
    """
    if steps <= 0:
        return theta
    batch = tf.shape(theta)[0]
    starts = similarity_offsets(offsets, theta.dtype)  # (K, 3, 3)
    count = len(offsets)
    # (K * B, ...) candidates, start-major: candidate k of image b at k * B + b.
    candidates = compose_affines(
        tf.tile(theta, [count, 1, 1]), tf.repeat(starts, batch, axis=0)
    )
    for level in range(levels):
        factor = 2 ** (levels - 1 - level)
        moving_level = tf.nn.avg_pool2d(moving, factor, factor, "VALID") if factor > 1 else moving
        fixed_level = tf.nn.avg_pool2d(fixed, factor, factor, "VALID") if factor > 1 else fixed
        if level == 0:
            candidates, scores = descend(
                candidates,
                tf.tile(moving_level, [count, 1, 1, 1]),
                tf.tile(fixed_level, [count, 1, 1, 1]),
                steps,
                learning_rate,
            )
            best = tf.argmax(tf.reshape(scores, [count, batch]), axis=0, output_type=tf.int32)
            theta = tf.gather(candidates, best * batch + tf.range(batch))
        else:
            theta, _ = descend(theta, moving_level, fixed_level, steps, learning_rate)
    return theta
