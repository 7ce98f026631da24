"""Test-time refinement of the coarse affine: a guarded coarse-to-fine search on Eq. 4.

An extension, not part of the paper: AffineNet predicts the affine in one pass, and a
network trained with a short CPU schedule predicts it poorly (``weights/README.md``).
Eq. 4, ``L_coarse = -NCC(I_x->y^C, I_y)``, is a differentiable function of the six
affine numbers alone, so the prediction can be improved for each pair at inference by
maximising the NCC between TransNet's translation of the VIS and the NIR, the way
instance optimisation refines learned registrations.

The search (:func:`refine_affine`) runs on a pyramid: the coarse input (``h x w``,
RFNet's ``affine_input_size``), ``levels - 1`` rounds of 2x2 average pooling below it,
and optionally a finer pair above it (TransNet's translation of a larger copy of the
VIS, for sub-pixel precision at full resolution).

1. *Starts* (coarsest level): the identity, the prediction, every similarity of
   :data:`START_GRID` (rotations to 15 degrees, scales 0.8-1.25, shifts to 15 % of
   each side, built in the image's own pixel frame so that a rotation is a rotation of
   the scene whatever the aspect ratio; about the identity, so that a poor prediction
   cannot move the grid away from the truth) and any extra starts (e.g. a
   feature-based estimate). Each is scored by its guarded NCC, without
   descent: many cheap starts where they cost least.
2. The ``top_k`` best starts of each image descend ``steps`` Adam steps at the
   coarsest level; the best by guarded NCC goes on.
3. That one descends ``steps`` steps at each finer level (``fine_steps`` at the fine
   pair). Adam's step is about ``STEP_PX`` pixels of the level, decaying linearly to a
   tenth within the level, so every level converges at its own precision.
4. *Decision* (finest level): the refined affine is returned only if it passes the
   guards and its NCC is higher, by ``Guards.min_gain``, than that of the prediction
   and of the identity (and of the extra starts); otherwise the best of those (the prediction and extra starts
   only if they pass the guards themselves; the identity always counts).

Guards (:class:`Guards`): the warp must sample at least ``min_overlap`` of the fixed
image inside the moving image, and its linear part, read in the image's pixel frame,
must be a plausible misalignment: a rotation within ``max_rotation_deg``, a scale
(``sqrt |det|``) within ``scale_range``, an anisotropy (ratio of singular values, which
shear and unequal scales raise) within ``max_anisotropy``, and no reflection. The
defaults are the training ranges (15 degrees, scales 0.8-1.25, shear 0.15) with margin.

Each image's result carries its *confidence*: the NCC of the returned affine at the
finest level and its overlap (the share of fixed pixels sampled inside the moving
image). Descent is Adam on each image's own loss. Everything is TensorFlow graph code:
it runs inside ``tf.function`` and a SavedModel.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import NamedTuple

import tensorflow as tf

from layers import affine_grid, resample
from layers.resampler import inside_mask
from losses import ncc
from rfnet_tf.data.synthetic import affine_matrix

# Similarity transforms of the image's pixel frame composed with the prediction at the
# coarsest level: rotations (degrees), isotropic scales and shifts (fractions of the
# side; 0.15 = 15 %) spanning the training misalignments (rotations to 15 degrees,
# scales 0.8-1.25, shifts to 15 % of each side).
START_ROTATIONS_DEG = (-15.0, -10.0, -5.0, 0.0, 5.0, 10.0, 15.0)
START_SCALES = (0.8, 0.89, 1.0, 1.12, 1.25)
START_SHIFTS = (-0.15, -0.1, -0.05, 0.0, 0.05, 0.1, 0.15)
START_GRID = tuple(
    itertools.product(START_ROTATIONS_DEG, START_SCALES, START_SHIFTS, START_SHIFTS)
)
# Adam's step at the start of each level, in pixels of that level.
STEP_PX = 0.5
# The smallest side a pyramid level may have.
MIN_LEVEL_SIZE = 8
ADAM_BETA_1 = 0.9
ADAM_BETA_2 = 0.999
ADAM_EPSILON = 1e-8
# The score of a candidate that fails a guard: below every NCC.
FAILED_SCORE = -2.0


@dataclasses.dataclass(frozen=True)
class Guards:
    """What a refined affine must satisfy to be returned (module docstring).

    Attributes:
      min_overlap: the least share of fixed pixels that must sample inside the moving
        image (the real benchmark's misalignments leave at least about 0.6; wrong
        optima of the search often had about 0.5).
      max_rotation_deg: the largest rotation, degrees (training: 15).
      scale_range: the scales allowed (training: 0.8-1.25).
      max_anisotropy: the largest ratio of the singular values of the linear part
        (training: a shear of 0.15 gives 1.16).
      min_gain: how much higher the refined affine's NCC must be than the best
        fallback's. On the validation pairs a correct registration of an affine
        misalignment gained at least 0.09 over the identity, while an affine fitted to
        a pair misaligned only locally gained at most 0.015 and moved its landmarks by
        up to 11 px: the margin keeps such pairs as they are.
    """

    min_overlap: float = 0.55
    max_rotation_deg: float = 20.0
    scale_range: tuple[float, float] = (0.7, 1.43)
    max_anisotropy: float = 1.35
    min_gain: float = 0.03


class Confidence(NamedTuple):
    """How far a coarse registration can be trusted: per image, the NCC of TransNet's
    translation warped by the affine with the NIR, and the share of the NIR that the
    warp covers with VIS content. (Low values: see ``LOW_CONFIDENCE_NCC``.)"""

    ncc: tf.Tensor
    overlap: tf.Tensor


# A coarse registration whose final NCC or overlap is below these is flagged as unsure
# (evaluate.py's results and warnings): measured on the validation pairs (README), a
# correct registration of a real pair scores well above them.
LOW_CONFIDENCE_NCC = 0.3
LOW_CONFIDENCE_OVERLAP = 0.5


def start_transforms(aspect, grid=START_GRID, dtype=tf.float32) -> tf.Tensor:
    """``(K, 3, 3)`` homogeneous normalised affines of the pixel-frame similarities.

    ``grid``: ``(rotation_deg, scale, shift_y, shift_x)`` each, shifts as fractions of
    the side; ``aspect``: ``(H - 1) / (W - 1)`` of the image (a scalar).
    """
    columns = [tf.constant([row[index] for row in grid], dtype) for index in range(4)]
    rotation, scale, shift_y, shift_x = columns
    aspect = tf.cast(aspect, dtype)
    # affine_matrix reads the frame only through its aspect (H - 1) / (W - 1).
    matrices = affine_matrix(
        rotation, scale, tf.zeros_like(scale), shift_y, shift_x, height=aspect + 1.0, width=2.0
    )
    bottom = tf.tile(tf.constant([[[0.0, 0.0, 1.0]]], dtype), [len(grid), 1, 1])
    return tf.concat([matrices, bottom], axis=1)


def pixel_linear_part(theta: tf.Tensor, aspect) -> tf.Tensor:
    """``(N, 2, 2)`` linear part of normalised affines, read in the pixel frame on
    ``[x, y]`` of an image with ``aspect = (H - 1) / (W - 1)``."""
    aspect = tf.cast(aspect, theta.dtype)
    return tf.stack(
        [
            tf.stack([theta[:, 0, 0], theta[:, 0, 1] / aspect], axis=-1),
            tf.stack([theta[:, 1, 0] * aspect, theta[:, 1, 1]], axis=-1),
        ],
        axis=-2,
    )


def linear_parameters(theta: tf.Tensor, aspect) -> dict[str, tf.Tensor]:
    """``(N,)`` tensors describing each affine's pixel-frame linear part ``L``:
    ``rotation_deg`` (of the closest similarity), ``scale = sqrt |det L|``,
    ``anisotropy`` (larger over smaller singular value) and ``determinant``."""
    linear = pixel_linear_part(theta, aspect)
    a, b, c, d = linear[:, 0, 0], linear[:, 0, 1], linear[:, 1, 0], linear[:, 1, 1]
    determinant = a * d - b * c
    # Singular values of [[a, b], [c, d]] in closed form.
    frobenius = a * a + b * b + c * c + d * d
    root = tf.sqrt(tf.maximum(frobenius * frobenius - 4.0 * determinant * determinant, 0.0))
    largest = tf.sqrt(0.5 * (frobenius + root))
    smallest = tf.sqrt(tf.maximum(0.5 * (frobenius - root), 0.0))
    return {
        "rotation_deg": tf.atan2(c - b, a + d) * (180.0 / math.pi),
        "scale": tf.sqrt(tf.abs(determinant)),
        "anisotropy": largest / tf.maximum(smallest, 1e-12),
        "determinant": determinant,
    }


def within_bounds(theta: tf.Tensor, aspect, guards: Guards = Guards()) -> tf.Tensor:
    """``(N,)`` bool: the affine's linear part is a plausible misalignment (``Guards``)."""
    parameters = linear_parameters(theta, aspect)
    low, high = guards.scale_range
    return (
        (parameters["determinant"] > 0.0)
        & (tf.abs(parameters["rotation_deg"]) <= guards.max_rotation_deg)
        & (parameters["scale"] >= low)
        & (parameters["scale"] <= high)
        & (parameters["anisotropy"] <= guards.max_anisotropy)
    )


def affine_ncc(theta: tf.Tensor, moving: tf.Tensor, fixed: tf.Tensor):
    """``(ncc, overlap)``, each ``(N,)``: the masked NCC (Eq. 5) of ``moving`` warped by
    ``theta (N, 2, 3)`` and ``fixed``, and the share of ``fixed``'s pixels whose sample
    point lies inside ``moving``. ``moving``, ``fixed``: ``(N, h, w, 1)``."""
    shape = tf.shape(fixed)
    coords = affine_grid(theta, shape[1], shape[2])
    warped, mask = resample(moving, coords)
    return ncc(warped, fixed, mask), tf.reduce_mean(mask, axis=[1, 2, 3])


def guarded_scores(theta, moving, fixed, aspect, guards: Guards):
    """``(score, ncc, overlap)``, each ``(N,)``: the score is the NCC where the guards
    hold and ``FAILED_SCORE`` where they do not."""
    correlation, overlap = affine_ncc(theta, moving, fixed)
    passes = within_bounds(theta, aspect, guards) & (overlap >= guards.min_overlap)
    return tf.where(passes, correlation, FAILED_SCORE), correlation, overlap


def descend(theta: tf.Tensor, moving: tf.Tensor, fixed: tf.Tensor, steps: int, learning_rate):
    """``steps`` Adam steps on each image's ``-NCC``; returns ``theta``.

    ``theta (N, 2, 3)``; ``moving``, ``fixed`` ``(N, h, w, 1)``. Each image's loss is
    summed, not averaged, into the objective, so its gradient is its own. The step
    size decays linearly from ``learning_rate`` to a tenth of it.
    """
    if steps <= 0:
        return theta

    def step(index, theta, first_moment, second_moment):
        with tf.GradientTape() as tape:
            tape.watch(theta)
            loss = -tf.reduce_sum(affine_ncc(theta, moving, fixed)[0])
        gradient = tape.gradient(loss, theta)
        first_moment = ADAM_BETA_1 * first_moment + (1.0 - ADAM_BETA_1) * gradient
        second_moment = ADAM_BETA_2 * second_moment + (1.0 - ADAM_BETA_2) * tf.square(gradient)
        t = tf.cast(index + 1, theta.dtype)
        corrected_first = first_moment / (1.0 - ADAM_BETA_1**t)
        corrected_second = second_moment / (1.0 - ADAM_BETA_2**t)
        rate = learning_rate * (1.0 - 0.9 * tf.cast(index, theta.dtype) / steps)
        theta = theta - rate * corrected_first / (tf.sqrt(corrected_second) + ADAM_EPSILON)
        return index + 1, theta, first_moment, second_moment

    zeros = tf.zeros_like(theta)
    _, theta, _, _ = tf.while_loop(
        lambda index, *_: index < steps, step, (tf.constant(0), theta, zeros, zeros)
    )
    return theta


def _level_rate(image: tf.Tensor, dtype) -> tf.Tensor:
    """Adam's first step at a level: ``STEP_PX`` pixels in normalised units."""
    size = tf.cast(tf.reduce_max(tf.shape(image)[1:3]) - 1, dtype)
    return 2.0 * STEP_PX / size


def _pooled(image: tf.Tensor, factor: int) -> tf.Tensor:
    return tf.nn.avg_pool2d(image, factor, factor, "VALID") if factor > 1 else image


def _per_image(values: tf.Tensor, count: int, batch) -> tf.Tensor:
    """``(count * B, ...)`` candidate-major values -> ``(count, B, ...)``."""
    return tf.reshape(values, tf.concat([[count, batch], tf.shape(values)[1:]], axis=0))


def _best(candidates: tf.Tensor, scores: tf.Tensor, count: int, batch) -> tf.Tensor:
    """Each image's best-scoring candidate: ``(count * B, 2, 3)`` -> ``(B, 2, 3)``."""
    best = tf.argmax(_per_image(scores, count, batch), axis=0, output_type=tf.int32)
    return tf.gather(candidates, best * batch + tf.range(batch))


def refine_affine(
    theta: tf.Tensor,
    moving: tf.Tensor,
    fixed: tf.Tensor,
    steps: int = 60,
    levels: int = 3,
    aspect=1.0,
    fine: tuple[tf.Tensor, tf.Tensor] | None = None,
    fine_steps: int | None = None,
    extra_starts: tf.Tensor | None = None,
    top_k: int = 4,
    grid=START_GRID,
    guards: Guards = Guards(),
) -> tuple[tf.Tensor, Confidence]:
    """Refines a backward normalised affine by a guarded search on Eq. 4 (module docstring).

    Args:
      theta: ``(B, 2, 3)`` the prediction (AffineNet's), normalised align-corners
        convention, ``registered[q] = moving[theta(q)]``.
      moving: ``(B, h, w, 1)`` the translated VIS ``I_x->y`` at the coarse input size.
      fixed: ``(B, h, w, 1)`` the NIR ``I_y`` at the same size.
      steps: Adam steps per level (0: no search; ``theta`` is returned with its
        confidence).
      levels: pyramid levels at and below the coarse input; the coarsest is
        ``levels - 1`` rounds of 2x2 average pooling (``h``, ``w`` at least
        ``MIN_LEVEL_SIZE * 2 ** (levels - 1)``).
      aspect: ``(H - 1) / (W - 1)`` of the full-size images (the coarse input may be
        squashed to a square; rotations and guards are read in the real frame).
      fine: ``(moving, fixed)`` of a finer level (any size, e.g. TransNet's translation
        of a larger copy of the VIS and the NIR at that size), or ``None``.
      fine_steps: Adam steps at the fine level (default ``steps``).
      extra_starts: ``(B, E, 2, 3)`` more starts (and fallbacks), or ``None``.
      top_k: starts of each image that descend at the coarsest level.
      grid: the start similarities (see :func:`start_transforms`); empty: the
        fallbacks are the only starts.
      guards: see :class:`Guards`.

    Returns:
      ``(theta, confidence)``: ``(B, 2, 3)`` the chosen affine (same convention) and
      its :class:`Confidence` at the finest level.
    """
    finest_moving, finest_fixed = fine if fine is not None else (moving, fixed)
    if steps <= 0:
        correlation, overlap = affine_ncc(theta, finest_moving, finest_fixed)
        return theta, Confidence(correlation, overlap)
    dtype = theta.dtype
    batch = tf.shape(theta)[0]
    identity = tf.tile(tf.constant([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]], dtype), [batch, 1, 1])
    # Fallbacks: candidate-major (count * B, 2, 3).
    fallbacks = [identity, theta]
    if extra_starts is not None:
        fallbacks += tf.unstack(tf.transpose(extra_starts, [1, 0, 2, 3]))
    fallback_count = len(fallbacks)
    fallbacks = tf.concat(fallbacks, axis=0)

    starts = fallbacks
    if grid:
        # The grid spans the misalignments about the identity, not about the prediction:
        # a poor prediction would move the whole grid away from the truth.
        transforms = start_transforms(aspect, grid, dtype)[:, :2, :]
        starts = tf.concat([fallbacks, tf.repeat(transforms, batch, axis=0)], axis=0)
    count = fallback_count + len(grid)

    coarsest = 2 ** (levels - 1)
    moving_level, fixed_level = _pooled(moving, coarsest), _pooled(fixed, coarsest)
    scores, _, _ = guarded_scores(
        starts,
        tf.tile(moving_level, [count, 1, 1, 1]),
        tf.tile(fixed_level, [count, 1, 1, 1]),
        aspect,
        guards,
    )
    # The top_k starts of each image, candidate-major again.
    k = min(top_k, count)
    top = tf.math.top_k(tf.transpose(_per_image(scores, count, batch)), k=k).indices  # (B, k)
    chosen = tf.gather(starts, tf.reshape(tf.transpose(top) * batch + tf.range(batch), [-1]))
    tiled_moving = tf.tile(moving_level, [k, 1, 1, 1])
    tiled_fixed = tf.tile(fixed_level, [k, 1, 1, 1])
    chosen = descend(chosen, tiled_moving, tiled_fixed, steps, _level_rate(moving_level, dtype))
    scores, _, _ = guarded_scores(chosen, tiled_moving, tiled_fixed, aspect, guards)
    refined = _best(chosen, scores, k, batch)

    for level in range(1, levels):
        factor = 2 ** (levels - 1 - level)
        moving_level, fixed_level = _pooled(moving, factor), _pooled(fixed, factor)
        refined = descend(refined, moving_level, fixed_level, steps, _level_rate(moving_level, dtype))
    if fine is not None:
        fine_steps = steps if fine_steps is None else fine_steps
        refined = descend(
            refined, finest_moving, finest_fixed, fine_steps, _level_rate(finest_moving, dtype)
        )

    # The decision, at the finest level.
    refined_score, refined_ncc, refined_overlap = guarded_scores(
        refined, finest_moving, finest_fixed, aspect, guards
    )
    tiled_moving = tf.tile(finest_moving, [fallback_count, 1, 1, 1])
    tiled_fixed = tf.tile(finest_fixed, [fallback_count, 1, 1, 1])
    fallback_scores, fallback_ncc, fallback_overlap = guarded_scores(
        fallbacks, tiled_moving, tiled_fixed, aspect, guards
    )
    # The identity is always a valid fallback (it adds no misalignment).
    fallback_scores = tf.concat([fallback_ncc[:batch], fallback_scores[batch:]], axis=0)
    best = tf.argmax(_per_image(fallback_scores, fallback_count, batch), axis=0, output_type=tf.int32)
    index = best * batch + tf.range(batch)
    best_score = tf.gather(fallback_scores, index)
    keep = refined_score > best_score + guards.min_gain
    chosen_theta = tf.where(keep[:, None, None], refined, tf.gather(fallbacks, index))
    confidence = Confidence(
        tf.where(keep, refined_ncc, tf.gather(fallback_ncc, index)),
        tf.where(keep, refined_overlap, tf.gather(fallback_overlap, index)),
    )
    return chosen_theta, confidence
