"""Deformation losses of F2M, phase 2 (paper Sec. 3.2, Eqs. 9-10).

``I_f`` is the fused luma ``(B, H, W, 1)`` in ``[0, 1]``, ``I_y`` the NIR image, and
``phi_f`` the fine displacement field ``(B, H, W, 2)``: ``(dy, dx)`` in pixels
(ARCHITECTURE section 1), as F2M predicts it.

Units of Eq. 10 (decision): ``L_smooth`` measures ``phi_f`` in the normalised units of
the affines (``layers.normalised_flow``: ``2 dy / (H - 1)``, ``2 dx / (W - 1)``, the
image spanning ``[-1, 1]`` on each axis), not in pixels. The paper leaves the units
open, and only these make its ``lambda = 0.1`` and ``alpha = 0.5`` (intensities on
``[0, 1]``) a loss whose minimum lies at the misalignment rather than at zero flow.
Measured with the shipped F2M on real Country crops of 256 px under a synthetic local
field of up to about 9 px, along ``phi = s * phi_true``: with ``phi`` in pixels the
total of Eq. 9 is 0.0776 at ``s = 0`` and 0.1247 at ``s = 1``, because
``0.1 * L_smooth`` of a pixel field (0.62 at ``s = 1``) dwarfs what the image terms gain
(0.0776 to 0.0629), so training is pushed to zero flow; in normalised units it is
0.0776, 0.0656, 0.0634 and 0.0651 at ``s = 0, 0.5, 1, 1.5``. Alpha on 0-255
intensities with pixel flows still put the minimum at ``s = 0`` or ``0.5``. In pixel
terms the normalised smoothness is the pixel one with ``lambda`` scaled by
``2 / (size - 1)`` per axis (about 0.0016 at crops of 128, 0.0008 at 256): the
regularisation weakens as the crop grows.

What the units do not change: much of the image terms' gain comes from the blur of
bilinear resampling rather than from registration. On 4 batches of 4 such crops
(fields of 2-9 px), the negated field scores only 1-3 % above the true one, and a
constant half-pixel flow, pure blur with no smoothness cost in any units, 5-9 % below
it.
"""

from __future__ import annotations

import tensorflow as tf

from layers import normalised_flow
from losses.common import laplacian_valid_mask, masked_mean, matching_tensors
from losses.fusion import image_gradient
from losses.weights import PAPER, LossWeights


def _neighbour_differences(x: tf.Tensor) -> list[tf.Tensor]:
    """``x(p_n) - x(p)`` for the neighbours right, down, down-right and down-left.

    Only pairs with both positions inside the image (no wrap-around): the differences
    have shapes ``(B, H, W-1, C)``, ``(B, H-1, W, C)``, ``(B, H-1, W-1, C)`` twice.
    Each unordered pair of 8-neighbours appears exactly once.
    """
    return [
        x[:, :, 1:] - x[:, :, :-1],  # p = (y, x), p_n = (y, x + 1)
        x[:, 1:, :] - x[:, :-1, :],  # p_n = (y + 1, x)
        x[:, 1:, 1:] - x[:, :-1, :-1],  # p_n = (y + 1, x + 1)
        x[:, 1:, :-1] - x[:, :-1, 1:],  # p_n = (y + 1, x - 1)
    ]


def bilateral_smoothness(flow: tf.Tensor, fused: tf.Tensor, alpha: float = PAPER.alpha) -> tf.Tensor:
    """Edge-aware smoothness ``L_smooth`` of the fine deformation field (paper Eq. 10).

    ``sum over p_n in {right, down, down-right, down-left} of
    mean_p(exp(-alpha * |I_f(p) - I_f(p_n)|) * |phi(p) - phi(p_n)|_1)``, where
    ``|phi(p) - phi(p_n)|_1 = |dy(p) - dy(p_n)| + |dx(p) - dx(p_n)|`` (L1 norm over the
    two flow channels, in the units of ``flow``: ``deformation_loss`` passes normalised
    units, module docstring) and each mean runs over the pairs with both positions
    inside the image (no wrap-around, no padding), over the whole batch. The four
    directions cover every pair of 8-neighbours once. Intensities are on ``[0, 1]``,
    so with ``alpha = 0.5`` an edge of full contrast weighs ``exp(-0.5) = 0.61``.

    The bilateral weights are a guide, not an objective: they are held constant
    (``tf.stop_gradient``), so the loss cannot be lowered by creating intensity edges
    in ``I_f`` where the field varies (in phase 2 ``I_f`` depends on ``phi_f``).

    Args:
      flow: ``(B, H, W, 2)``, ``phi_f`` as ``(dy, dx)`` in any units; ``H, W >= 2``.
      fused: ``(B, H, W, 1)``, ``I_f`` in ``[0, 1]`` (several channels would enter the
        weight by the L1 norm of their differences).
      alpha: bilateral coefficient (paper: 0.5).

    Returns:
      Scalar, ``>= 0``, in the units of ``flow``; 0 for a constant field.
    """
    flow = tf.convert_to_tensor(flow)
    fused = tf.cast(fused, flow.dtype)
    intensity_steps = _neighbour_differences(tf.stop_gradient(fused))
    flow_steps = _neighbour_differences(flow)
    total = 0.0
    for intensity_step, flow_step in zip(intensity_steps, flow_steps):
        weight = tf.exp(-alpha * tf.reduce_sum(tf.abs(intensity_step), axis=-1))
        total += tf.reduce_mean(weight * tf.reduce_sum(tf.abs(flow_step), axis=-1))
    return total


def deformation_loss(
    fused: tf.Tensor, nir: tf.Tensor, flow: tf.Tensor, weights: LossWeights = PAPER, mask: tf.Tensor | None = None
) -> dict[str, tf.Tensor]:
    """``L_defor = mean|∇I_f - ∇I_y| + mean|∇I_f| + lambda * L_smooth`` (paper Eq. 9).

    ``∇`` is ``image_gradient`` (the 4-neighbour Laplacian). The first term asks the
    gradients of the fused image to agree with the fixed image's, the second (sparsity)
    penalises the doubled edges that a misalignment leaves in ``I_f``. ``L_smooth`` is
    ``bilateral_smoothness`` of the field in normalised units,
    ``layers.normalised_flow(flow)`` (module docstring: why).

    Args:
      fused: ``(B, H, W, 1)``, ``I_f``.
      nir: ``(B, H, W, 1)``, ``I_y``.
      flow: ``(B, H, W, 2)``, ``phi_f`` as ``(dy, dx)`` pixels (converted here).
      weights: the loss weights; this loss reads ``weights.lambda_smooth``, the
        ``lambda`` weighing ``L_smooth`` (paper: 0.1), and ``weights.alpha``, the
        bilateral coefficient of ``bilateral_smoothness`` (paper: 0.5).
      mask: ``(B, H, W, 1)`` valid pixels or ``None``. The two gradient terms are
        means over ``laplacian_valid_mask(mask)``; ``L_smooth`` always runs over the
        whole field (it is a regulariser, and outside the valid region nothing else
        constrains the field).

    Returns:
      ``{"total", "consistency", "sparsity", "smooth"}`` scalars, the three terms
      unweighted (``smooth`` in normalised units):
      ``total = consistency + sparsity + weights.lambda_smooth * smooth``.
    """
    fused, nir = matching_tensors(fused, nir)
    gradient_mask = None if mask is None else laplacian_valid_mask(mask)
    fused_gradient = image_gradient(fused)
    consistency = masked_mean(tf.abs(fused_gradient - image_gradient(nir)), gradient_mask)
    sparsity = masked_mean(tf.abs(fused_gradient), gradient_mask)
    smooth = bilateral_smoothness(normalised_flow(flow), fused, alpha=weights.alpha)
    return {
        "total": consistency + sparsity + weights.lambda_smooth * smooth,
        "consistency": consistency,
        "sparsity": sparsity,
        "smooth": smooth,
    }
