"""Test-time refinement of the coarse affine: a guarded coarse-to-fine search.

An extension, not part of the paper: AffineNet predicts the affine in one pass, and a
network trained with a short CPU schedule predicts it poorly (``weights/README.md``).
Eq. 4, ``L_coarse = -NCC(I_x->y^C, I_y)``, is a differentiable function of the six
affine numbers alone, so the prediction can be improved for each pair at inference by
maximising a similarity between TransNet's translation of the VIS and the NIR, the way
instance optimisation refines learned registrations. The similarity
(:data:`SIMILARITIES`) is Eq. 5's NCC of the intensities (``"ncc"``, the paper's
loss) or of their gradient magnitudes (``"gradient_ncc"``, shipped): on real pairs the
global NCC of the intensities ranks wrong affines above the true one (ARCHITECTURE
section 7, ``weights/README.md``).

The search (:func:`refine_affine`) runs on a pyramid: the coarse input (``h x w``,
RFNet's ``affine_input_size``), ``levels - 1`` rounds of 2x2 average pooling below it,
and optionally a finer pair above it (TransNet's translation of a larger copy of the
VIS, for sub-pixel precision at full resolution).

1. *Starts* (coarsest level): the identity, the prediction, any extra starts (e.g. a
   feature-based estimate), and every similarity of :data:`START_GRID` (rotations to
   15 degrees in 2.5 degree steps, scales 0.8-1.25, built in the image's own pixel
   frame so that a rotation is a rotation of the scene whatever the aspect ratio;
   about the identity, so that a poor prediction cannot move the grid away from the
   truth), each at its best integer shift of the level up to ``START_MAX_SHIFT`` of
   each side: :func:`shift_search` scores every shift at once by FFT.
2. The ``top_k`` best starts of each image descend ``steps`` Adam steps at the
   coarsest level; the ``carry`` best of them (guarded similarity) go on.
3. Those descend ``steps`` steps at each finer level (``fine_steps`` at the fine
   pair), and the finest level keeps the best. Adam's step is about ``STEP_PX`` pixels
   of the level, decaying linearly to a tenth within the level, so every level
   converges at its own precision.
4. *Decision* (finest level): the best-scoring of the refined affine, the prediction
   and the extra starts (each only if it passes the guards and scores at least the
   similarity's ``low_confidence``) and the identity, which always counts and starts
   ``min_gain`` (the similarity's) ahead: moving a pair at all needs that much evidence.

Guards (:class:`Guards`): the warp must sample at least ``min_overlap`` of the fixed
image inside the moving image, and its linear part, read in the image's pixel frame,
must be a plausible misalignment: a rotation within ``max_rotation_deg``, a scale
(``sqrt |det|``) within ``scale_range``, an anisotropy (ratio of singular values, which
shear and unequal scales raise) within ``max_anisotropy``, and no reflection. The
defaults are the training ranges (15 degrees, scales 0.8-1.25, shear 0.15) with margin.

Each image's result carries its *confidence* (:class:`Confidence`): the similarity of
the returned affine at the finest level, its overlap (the share of fixed pixels sampled
inside the moving image) and whether either is below its threshold. Descent is Adam on
each image's own loss. Everything is TensorFlow graph code: it runs inside
``tf.function`` and a SavedModel.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Callable, NamedTuple

import tensorflow as tf

from layers import affine_grid, resample
from losses import feature_ncc, fully_valid, gradient_magnitude
from rfnet_tf.data.synthetic import affine_matrix

# The start search (coarsest level): similarity transforms of the image's pixel frame,
# every rotation (degrees) with every isotropic scale, each with every integer shift of
# the level up to START_MAX_SHIFT of each side (0.2 = 20 %), scored at once by FFT.
# They span the training misalignments (rotations to 15 degrees, scales 0.8-1.25, shifts
# to 15 % of each side; undoing a scale of 0.8 shifts by up to 0.15 / 0.8 = 19 %).
START_ROTATIONS_DEG = tuple(2.5 * step for step in range(-6, 7))
START_SCALES = (0.8, 0.89, 1.0, 1.12, 1.25)
START_GRID = tuple(itertools.product(START_ROTATIONS_DEG, START_SCALES))
START_MAX_SHIFT = 0.2
# Adam's step at the start of each level, in pixels of that level.
STEP_PX = 0.5
# The smallest side a pyramid level may have.
MIN_LEVEL_SIZE = 8
ADAM_BETA_1 = 0.9
ADAM_BETA_2 = 0.999
ADAM_EPSILON = 1e-8
# The score of a candidate that fails a guard: below every NCC.
FAILED_SCORE = -2.0
# Eq. 5's epsilon (losses.ncc), also in the FFT form of the start search.
NCC_EPSILON = 1e-5


class Similarity(NamedTuple):
    """What the search maximises: Eq. 5's NCC of ``feature(warped)`` and
    ``feature(fixed)`` over the pixels whose ``window x window`` neighbourhood is valid
    (the pixels ``feature`` reads), with the margins its scale calls for.

    Attributes:
      feature: ``(N, h, w, 1) -> (N, h, w, 1)``.
      window: the side of the neighbourhood ``feature`` reads at a pixel.
      min_gain: how much higher than the identity's an affine's score must be to be
        returned (the identity's head start in the decision).
      low_confidence: a result scoring below it is flagged as unsure.
    """

    feature: Callable[[tf.Tensor], tf.Tensor]
    window: int
    min_gain: float
    low_confidence: float


# "ncc": the paper's Eq. 4 on the intensities. "gradient_ncc": on the gradient
# magnitudes (losses.similarity), which ranks the true alignment above the wrong optima
# of the global NCC (ARCHITECTURE section 7). The margins were measured on the
# validation pairs (weights/README.md): an affine fitted to a pair misaligned only
# locally gained at most 0.015 NCC (0.024 gradient NCC) over the identity, a correct
# registration of an affine misalignment at least 0.09 (0.25); correct results scored
# at least 0.258 gradient NCC and wrong ones at most 0.253 (with the NCC, wrong optima
# scored as high as correct ones: its flag is a weak signal).
SIMILARITIES = {
    "ncc": Similarity(lambda image: image, 1, min_gain=0.03, low_confidence=0.3),
    "gradient_ncc": Similarity(gradient_magnitude, 3, min_gain=0.08, low_confidence=0.26),
}


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
      min_gain: how much higher than the identity's an affine's score must be to be
        returned; ``None``: the similarity's (:class:`Similarity`). An affine fitted
        to a pair misaligned only locally moved its landmarks by up to 11 px: the
        margin keeps such pairs as they are.
    """

    min_overlap: float = 0.55
    max_rotation_deg: float = 20.0
    scale_range: tuple[float, float] = (0.7, 1.43)
    max_anisotropy: float = 1.35
    min_gain: float | None = None


class Confidence(NamedTuple):
    """How far a coarse registration can be trusted, per image: ``ncc``, the search's
    similarity (an NCC) of TransNet's translation warped by the affine with the NIR;
    ``overlap``, the share of the NIR that the warp covers with VIS content; ``unsure``,
    either below its threshold (``Similarity.low_confidence``, ``LOW_CONFIDENCE_OVERLAP``)."""

    ncc: tf.Tensor
    overlap: tf.Tensor
    unsure: tf.Tensor


# A coarse registration covering less of the NIR than this is flagged as unsure.
LOW_CONFIDENCE_OVERLAP = 0.5


def confidence_of(correlation: tf.Tensor, overlap: tf.Tensor, measure: Similarity) -> Confidence:
    """The :class:`Confidence` of a result: unsure below ``measure.low_confidence`` or
    ``LOW_CONFIDENCE_OVERLAP`` (and where the similarity is not a number)."""
    sure = (correlation >= measure.low_confidence) & (overlap >= LOW_CONFIDENCE_OVERLAP)
    return Confidence(correlation, overlap, tf.logical_not(sure))


def start_transforms(aspect, grid=START_GRID, dtype=tf.float32) -> tf.Tensor:
    """``(K, 3, 3)`` homogeneous normalised affines of the pixel-frame similarities.

    ``grid``: ``(rotation_deg, scale)`` each, about the image centre; ``aspect``:
    ``(H - 1) / (W - 1)`` of the image (a scalar).
    """
    rotation = tf.constant([row[0] for row in grid], dtype)
    scale = tf.constant([row[1] for row in grid], dtype)
    zeros = tf.zeros_like(scale)
    aspect = tf.cast(aspect, dtype)
    # affine_matrix reads the frame only through its aspect (H - 1) / (W - 1).
    matrices = affine_matrix(rotation, scale, zeros, zeros, zeros, height=aspect + 1.0, width=2.0)
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


def affine_similarity(
    theta: tf.Tensor, moving: tf.Tensor, fixed: tf.Tensor, measure: Similarity = SIMILARITIES["ncc"]
):
    """``(similarity, overlap)``, each ``(N,)``: the masked ``measure`` (by default Eq.
    5 on the intensities) of ``moving`` warped by ``theta (N, 2, 3)`` and ``fixed``,
    and the share of ``fixed``'s pixels whose sample point lies inside ``moving``.
    ``moving``, ``fixed``: ``(N, h, w, 1)``."""
    shape = tf.shape(fixed)
    coords = affine_grid(theta, shape[1], shape[2])
    warped, mask = resample(moving, coords)
    value = feature_ncc(warped, fixed, mask, measure.feature, measure.window)
    return value, tf.reduce_mean(mask, axis=[1, 2, 3])


def guarded_scores(
    theta, moving, fixed, aspect, guards: Guards, measure: Similarity = SIMILARITIES["ncc"]
):
    """``(score, similarity, overlap)``, each ``(N,)``: the score is the similarity
    (``measure``) where the guards hold and ``FAILED_SCORE`` where they do not."""
    correlation, overlap = affine_similarity(theta, moving, fixed, measure)
    passes = within_bounds(theta, aspect, guards) & (overlap >= guards.min_overlap)
    return tf.where(passes, correlation, FAILED_SCORE), correlation, overlap


def shift_correlation(fixed, fixed_valid, canvas, canvas_valid, canvas_inside):
    """Eq. 5's masked NCC of ``fixed`` with ``canvas`` at every integer shift, by FFT.

    ``score[n, d_y, d_x]`` is the NCC over the pixels ``q`` where ``fixed_valid[q]`` and
    ``canvas_valid[q + d]`` are 1 of ``fixed[q]`` and ``canvas[q + d]`` (the masked
    correlation of Padfield, IEEE TIP 2012: six correlations of the masked images, their
    squares and the masks give the sums of every shift's means, variances and
    covariance); ``overlap[n, d_y, d_x]`` is the share of ``fixed``'s pixels whose
    ``canvas_inside[q + d]`` is 1. Sums are in float64, so a map equals the direct NCC
    to about 1e-6.

    Args:
      fixed, fixed_valid: ``(N, h, w)``.
      canvas, canvas_valid, canvas_inside: ``(N, h + 2 p_y, w + 2 p_x)``.

    Returns:
      ``(score, overlap)``, each ``(N, 2 p_y + 1, 2 p_x + 1)``, float64; the score is 0
      where no pixel is valid.
    """
    fixed_shape = tf.shape(fixed)[1:3]
    canvas_shape = tf.shape(canvas)[1:3]
    # Zero padding to the sum of the sizes keeps every correlation free of wrap-around.
    size = canvas_shape + fixed_shape
    shifts = canvas_shape - fixed_shape + 1

    def spectrum(image):
        return tf.signal.rfft2d(tf.cast(image, tf.float64), fft_length=size)

    def correlation(fixed_spectrum, canvas_spectrum):
        full = tf.signal.irfft2d(tf.math.conj(fixed_spectrum) * canvas_spectrum, fft_length=size)
        return full[:, : shifts[0], : shifts[1]]

    fixed_valid = tf.cast(fixed_valid, tf.float64)
    fixed = tf.cast(fixed, tf.float64) * fixed_valid
    canvas_valid = tf.cast(canvas_valid, tf.float64)
    canvas = tf.cast(canvas, tf.float64) * canvas_valid
    fixed_spectra = [spectrum(fixed_valid), spectrum(fixed), spectrum(fixed * fixed)]
    canvas_spectra = [spectrum(canvas_valid), spectrum(canvas), spectrum(canvas * canvas)]
    count = correlation(fixed_spectra[0], canvas_spectra[0])
    # Rounding leaves about 1e-12 where nothing overlaps: counts below a pixel are none.
    safe_count = tf.where(count > 0.5, count, 1.0)
    mean_fixed = correlation(fixed_spectra[1], canvas_spectra[0]) / safe_count
    mean_canvas = correlation(fixed_spectra[0], canvas_spectra[1]) / safe_count
    variance_fixed = correlation(fixed_spectra[2], canvas_spectra[0]) / safe_count - mean_fixed**2
    variance_canvas = correlation(fixed_spectra[0], canvas_spectra[2]) / safe_count - mean_canvas**2
    covariance = (
        correlation(fixed_spectra[1], canvas_spectra[1]) / safe_count - mean_fixed * mean_canvas
    )
    score = covariance / (
        tf.sqrt(tf.maximum(variance_fixed, 0.0) + NCC_EPSILON)
        * tf.sqrt(tf.maximum(variance_canvas, 0.0) + NCC_EPSILON)
    )
    score = tf.where(count > 0.5, score, 0.0)
    inside = correlation(spectrum(tf.ones_like(fixed)), spectrum(canvas_inside))
    return score, inside / tf.cast(fixed_shape[0] * fixed_shape[1], tf.float64)


def shift_search(
    moving: tf.Tensor,
    fixed: tf.Tensor,
    aspect,
    grid=START_GRID,
    max_shift: float = START_MAX_SHIFT,
    measure: Similarity = SIMILARITIES["ncc"],
    guards: Guards = Guards(),
) -> tuple[tf.Tensor, tf.Tensor]:
    """The best shift of every start similarity: ``(theta, score)``.

    Each similarity ``S`` of ``grid`` warps ``moving`` onto a canvas that extends the
    fixed frame by ``max_shift`` of each side, and :func:`shift_correlation` scores
    every integer shift ``u`` of the level (pixels) at once. The best guarded shift gives
    ``theta(q) = S(q + u)``: ``registered[q] = moving[S(q + u)]``.

    Args:
      moving, fixed: ``(B, h, w, 1)`` one pyramid level.
      aspect: ``(H - 1) / (W - 1)`` of the full-size image.
      grid: ``(rotation_deg, scale)`` pairs (:func:`start_transforms`).
      max_shift: the largest shift, a fraction of each side.
      measure: the similarity measure.
      guards: a shift counts only with at least ``guards.min_overlap`` overlap.

    Returns:
      ``theta (K * B, 2, 3)`` candidate-major (similarity ``k`` of image ``b`` at
      ``k * B + b``) and its ``score (K * B,)`` (``FAILED_SCORE`` where no shift passes).
    """
    dtype = moving.dtype
    count = len(grid)
    batch = tf.shape(moving)[0]
    height, width = tf.shape(fixed)[1], tf.shape(fixed)[2]
    extent_y = tf.cast(tf.maximum(height - 1, 1), dtype)
    extent_x = tf.cast(tf.maximum(width - 1, 1), dtype)
    pad_y = tf.cast(tf.math.ceil(max_shift * extent_y), tf.int32)
    pad_x = tf.cast(tf.math.ceil(max_shift * extent_x), tf.int32)
    # The canvas in normalised coordinates of the fixed frame, then through each S.
    v = 2.0 * tf.cast(tf.range(-pad_y, height + pad_y), dtype) / extent_y - 1.0
    u = 2.0 * tf.cast(tf.range(-pad_x, width + pad_x), dtype) / extent_x - 1.0
    vv, uu = tf.meshgrid(v, u, indexing="ij")
    points = tf.stack([uu, vv, tf.ones_like(uu)], axis=-1)
    similarities = start_transforms(aspect, grid, dtype)[:, :2, :]
    sample = tf.einsum("kij,hwj->khwi", similarities, points)
    moving_shape = tf.shape(moving)
    coords = tf.stack(
        [
            (sample[..., 1] + 1.0) * 0.5 * tf.cast(moving_shape[1] - 1, dtype),
            (sample[..., 0] + 1.0) * 0.5 * tf.cast(moving_shape[2] - 1, dtype),
        ],
        axis=-1,
    )
    coords = tf.repeat(coords, batch, axis=0)  # (K * B, canvas h, canvas w, 2)
    canvas, inside = resample(tf.tile(moving, [count, 1, 1, 1]), coords)
    feature, window = measure.feature, measure.window
    fixed_features = feature(fixed)
    fixed_valid = fully_valid(tf.ones_like(fixed), window)
    score, overlap = shift_correlation(
        tf.tile(fixed_features, [count, 1, 1, 1])[..., 0],
        tf.tile(fixed_valid, [count, 1, 1, 1])[..., 0],
        feature(canvas)[..., 0],
        fully_valid(inside, window)[..., 0],
        inside[..., 0],
    )
    score = tf.where(overlap >= guards.min_overlap, score, FAILED_SCORE)
    shifts_x = 2 * pad_x + 1
    flat = tf.reshape(score, [count * batch, -1])
    best = tf.argmax(flat, axis=1, output_type=tf.int32)
    shift_y = tf.cast(best // shifts_x - pad_y, dtype)
    shift_x = tf.cast(best % shifts_x - pad_x, dtype)
    # theta(q) = S(q + t), t the shift in normalised units, [u, v] order.
    shift = tf.stack([2.0 * shift_x / extent_x, 2.0 * shift_y / extent_y], axis=-1)
    linear = tf.repeat(similarities[:, :, :2], batch, axis=0)
    translation = tf.repeat(similarities[:, :, 2], batch, axis=0)
    translation += tf.einsum("nij,nj->ni", linear, shift)
    theta = tf.concat([linear, translation[..., None]], axis=-1)
    passes = within_bounds(theta, aspect, guards)
    return theta, tf.where(passes, tf.cast(tf.reduce_max(flat, axis=1), dtype), FAILED_SCORE)


# XLA fuses the many small element-wise operations of a step (warp, gradient, NCC and
# their gradients): the coarse module ran 1.6 times faster on 2 CPU cores. It compiles
# once per level shape, which is why RFNet's fine level is a fixed square.
@tf.function(jit_compile=True)
def descend(
    theta: tf.Tensor,
    moving: tf.Tensor,
    fixed: tf.Tensor,
    steps: int,
    learning_rate,
    measure: Similarity = SIMILARITIES["ncc"],
):
    """``steps`` Adam steps on each image's negated ``measure``; returns ``theta``.

    ``theta (N, 2, 3)``; ``moving``, ``fixed`` ``(N, h, w, 1)``. Each image's loss is
    summed, not averaged, into the objective, so its gradient is its own. The step
    size decays linearly from ``learning_rate`` to a tenth of it.
    """
    if steps <= 0:
        return theta

    def step(index, theta, first_moment, second_moment):
        with tf.GradientTape() as tape:
            tape.watch(theta)
            loss = -tf.reduce_sum(affine_similarity(theta, moving, fixed, measure)[0])
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
    top_k: int = 8,
    carry: int = 3,
    grid=START_GRID,
    guards: Guards = Guards(),
    similarity: str = "ncc",
) -> tuple[tf.Tensor, Confidence]:
    """Refines a backward normalised affine by a guarded search (module docstring).

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
      carry: of those, how many descend at every finer level (the finest decides).
      grid: the start similarities, ``(rotation_deg, scale)`` pairs, each searched
        over every shift (:func:`shift_search`); empty: the fallbacks are the only
        starts.
      guards: see :class:`Guards`.
      similarity: what the search maximises, a key of :data:`SIMILARITIES`.

    Returns:
      ``(theta, confidence)``: ``(B, 2, 3)`` the chosen affine (same convention) and
      its :class:`Confidence` at the finest level.
    """
    measure = SIMILARITIES[similarity]
    finest_moving, finest_fixed = fine if fine is not None else (moving, fixed)
    if steps <= 0:
        correlation, overlap = affine_similarity(theta, finest_moving, finest_fixed, measure)
        return theta, confidence_of(correlation, overlap, measure)
    dtype = theta.dtype
    batch = tf.shape(theta)[0]
    identity = tf.tile(tf.constant([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]], dtype), [batch, 1, 1])
    # Fallbacks: candidate-major (count * B, 2, 3).
    fallbacks = [identity, theta]
    if extra_starts is not None:
        fallbacks += tf.unstack(tf.transpose(extra_starts, [1, 0, 2, 3]))
    fallback_count = len(fallbacks)
    fallbacks = tf.concat(fallbacks, axis=0)

    def tiled(image, count):
        return tf.tile(image, [count, 1, 1, 1])

    coarsest = 2 ** (levels - 1)
    moving_level, fixed_level = _pooled(moving, coarsest), _pooled(fixed, coarsest)
    starts = fallbacks
    scores, _, _ = guarded_scores(
        fallbacks, tiled(moving_level, fallback_count), tiled(fixed_level, fallback_count),
        aspect, guards, measure,
    )
    count = fallback_count
    if grid:
        # The grid spans the misalignments about the identity, not about the prediction:
        # a poor prediction would move the whole grid away from the truth.
        searched, searched_scores = shift_search(
            moving_level, fixed_level, aspect, grid, START_MAX_SHIFT, measure, guards
        )
        starts = tf.concat([fallbacks, searched], axis=0)
        scores = tf.concat([scores, searched_scores], axis=0)
        count += len(grid)

    def best_of(candidates, scores, count, keep):
        """Each image's ``keep`` best candidates, candidate-major: ``(keep * B, 2, 3)``."""
        top = tf.math.top_k(tf.transpose(_per_image(scores, count, batch)), k=keep).indices
        return tf.gather(candidates, tf.reshape(tf.transpose(top) * batch + tf.range(batch), [-1]))

    # The top_k starts of each image descend at the coarsest level; the best `carry`
    # descend at every finer level, and the finest level decides between them.
    k = min(top_k, count)
    chosen = descend(
        best_of(starts, scores, count, k), tiled(moving_level, k), tiled(fixed_level, k),
        steps, _level_rate(moving_level, dtype), measure,
    )
    scores, _, _ = guarded_scores(
        chosen, tiled(moving_level, k), tiled(fixed_level, k), aspect, guards, measure
    )
    kept = min(carry, k)
    chosen = best_of(chosen, scores, k, kept)
    factors = [2 ** (levels - 1 - level) for level in range(1, levels)]
    schedule = [(_pooled(moving, factor), _pooled(fixed, factor), steps) for factor in factors]
    if fine is not None:
        schedule.append((finest_moving, finest_fixed, steps if fine_steps is None else fine_steps))
    for moving_level, fixed_level, level_steps in schedule:
        chosen = descend(
            chosen, tiled(moving_level, kept), tiled(fixed_level, kept), level_steps,
            _level_rate(moving_level, dtype), measure,
        )
    scores, _, _ = guarded_scores(
        chosen, tiled(finest_moving, kept), tiled(finest_fixed, kept), aspect, guards, measure
    )
    refined = best_of(chosen, scores, kept, 1)

    # The decision, at the finest level, between the refined affine and the fallbacks.
    # The identity is always valid (it adds no misalignment) and starts min_gain ahead:
    # moving a pair at all needs that much evidence, and an affine scoring below the
    # similarity's low_confidence is no evidence (two unrelated images reach 0.12).
    candidates = tf.concat([fallbacks, refined], axis=0)
    count = fallback_count + 1
    scores, correlation, overlap = guarded_scores(
        candidates, tiled(finest_moving, count), tiled(finest_fixed, count), aspect, guards, measure
    )
    min_gain = measure.min_gain if guards.min_gain is None else guards.min_gain
    sure = correlation[batch:] >= measure.low_confidence
    confident = tf.where(sure, scores[batch:], FAILED_SCORE)
    scores = tf.concat([correlation[:batch] + min_gain, confident], axis=0)
    best = tf.argmax(_per_image(scores, count, batch), axis=0, output_type=tf.int32)
    index = best * batch + tf.range(batch)
    confidence = confidence_of(tf.gather(correlation, index), tf.gather(overlap, index), measure)
    return tf.gather(candidates, index), confidence
