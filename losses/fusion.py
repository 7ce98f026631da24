"""Fusion losses of F2M, phase 1 (paper Sec. 3.2, Eqs. 6-8).

Images are NHWC ``(B, H, W, 1)`` lumas with intensities in ``[0, 1]``: the fused luma
``I_f``, the coarse-registered visible luma ``Y(I_x^C)`` and the NIR image ``I_y``.
With a validity mask (the valid region of the warped visible image), every term is a
masked mean (``losses.common``): the intensity terms over the valid pixels, the
gradient terms over the pixels whose Laplacian reads valid pixels only
(``laplacian_valid_mask``), so the black border of the warp never counts.
"""

from __future__ import annotations

import tensorflow as tf

from layers.gradients import laplacian
from losses.common import laplacian_valid_mask, masked_mean, matching_tensors
from losses.weights import PAPER, LossWeights


def image_gradient(image: tf.Tensor) -> tf.Tensor:
    """The image gradient ``∇`` of Eqs. 8-9: ``layers.laplacian``.

    ARCHITECTURE section 4 (decision, from the authors' code): the 4-neighbour
    Laplacian ``[[0, 1, 0], [1, -4, 1], [0, 1, 0]]`` per channel, replicate padding.

    Args:
      image: ``(B, H, W, C)``.

    Returns:
      ``(B, H, W, C)``; for intensities in ``[0, 1]`` values lie in ``[-4, 4]``.
    """
    return laplacian(image)


def content_loss(
    fused: tf.Tensor,
    vis_luma: tf.Tensor,
    nir: tf.Tensor,
    gamma: float = PAPER.gamma,
    mask: tf.Tensor | None = None,
) -> tf.Tensor:
    """``L_content = (1 - gamma) mean|I_f - Y(I_x^C)| + gamma mean|I_f - I_y|`` (Eq. 7).

    Args:
      fused: ``(B, H, W, 1)``, ``I_f``.
      vis_luma: ``(B, H, W, 1)``, ``Y(I_x^C)``.
      nir: ``(B, H, W, 1)``, ``I_y``.
      gamma: weight of the NIR term (paper: 0.7, in ``[0.5, 1]``).
      mask: ``(B, H, W, 1)`` valid pixels or ``None``; both terms are masked means.

    Returns:
      Scalar in ``[0, 1]``.
    """
    fused, vis_luma, nir = matching_tensors(fused, vis_luma, nir)
    vis_term = masked_mean(tf.abs(fused - vis_luma), mask)
    nir_term = masked_mean(tf.abs(fused - nir), mask)
    return (1.0 - gamma) * vis_term + gamma * nir_term


def gradient_target(grad_a: tf.Tensor, grad_b: tf.Tensor) -> tf.Tensor:
    """Target of Eq. 8: the signed gradient of larger magnitude, without gradient.

    The paper writes ``(∇a + ∇b) / |∇a + ∇b| * max(|∇a|, |∇b|)``; where
    ``|∇a| != |∇b|`` this is exactly the one of larger magnitude, which is how it is
    computed (by selection: no division, no epsilon; ARCHITECTURE section 4). Ties
    ``|∇a| == |∇b|``, where the paper's formula is ``0 / 0`` if ``∇a = -∇b``, take the
    average ``(∇a + ∇b) / 2``: ``∇a`` when the two are equal, 0 when they are opposite.
    So the target is ``sign(∇a + ∇b) * max(|∇a|, |∇b|)`` everywhere (with
    ``sign(0) = 0``), and symmetric in its arguments.

    The target is a constant of the loss (``tf.stop_gradient``): no gradient flows into
    the source images through it.

    Args:
      grad_a, grad_b: gradients of the two source images, same shape.

    Returns:
      Same shape as the inputs.
    """
    grad_a, grad_b = matching_tensors(grad_a, grad_b)
    magnitude_a = tf.abs(grad_a)
    magnitude_b = tf.abs(grad_b)
    tie = 0.5 * (grad_a + grad_b)
    target = tf.where(magnitude_a > magnitude_b, grad_a, tf.where(magnitude_b > magnitude_a, grad_b, tie))
    return tf.stop_gradient(target)


def gradient_loss(
    fused: tf.Tensor,
    vis_luma: tf.Tensor,
    nir: tf.Tensor,
    mask: tf.Tensor | None = None,
) -> tf.Tensor:
    """``L_gradient = mean((∇I_f - target)^2)`` (Eq. 8).

    ``target = gradient_target(∇Y(I_x^C), ∇I_y)`` (no gradient through it); ``∇`` is
    ``image_gradient``. The paper writes a 2-norm; ARCHITECTURE section 4 fixes the
    mean of squares.

    Args:
      fused, vis_luma, nir: ``(B, H, W, 1)``, as in ``content_loss``.
      mask: ``(B, H, W, 1)`` valid pixels or ``None``; the mean runs over
        ``laplacian_valid_mask(mask)``.

    Returns:
      Scalar, ``>= 0``.
    """
    fused, vis_luma, nir = matching_tensors(fused, vis_luma, nir)
    target = gradient_target(image_gradient(vis_luma), image_gradient(nir))
    gradient_mask = None if mask is None else laplacian_valid_mask(mask)
    return masked_mean(tf.square(image_gradient(fused) - target), gradient_mask)


def fusion_loss(
    fused: tf.Tensor, vis_luma: tf.Tensor, nir: tf.Tensor, weights: LossWeights = PAPER, mask: tf.Tensor | None = None
) -> dict[str, tf.Tensor]:
    """``L_fus = L_content + delta * L_gradient`` (Eq. 6).

    Args:
      fused, vis_luma, nir, mask: as in ``content_loss``.
      weights: the loss weights; this loss reads ``weights.gamma``, the Eq. 7 weight
        (paper: 0.7), and ``weights.delta``, the weight of the gradient term (paper:
        100).

    Returns:
      ``{"total", "content", "gradient"}`` scalars; ``content`` and ``gradient`` are
      unweighted, ``total = content + weights.delta * gradient``.
    """
    content = content_loss(fused, vis_luma, nir, gamma=weights.gamma, mask=mask)
    gradient = gradient_loss(fused, vis_luma, nir, mask=mask)
    return {"total": content + weights.delta * gradient, "content": content, "gradient": gradient}
