"""RFNet: TransNet -> AffineNet -> affine warp -> F2M, composed for inference."""

from __future__ import annotations

import keras
import tensorflow as tf

from layers import affine_grid, identity_grid, resample, warp_flow
from layers.config import ConfigFromArguments
from layers.resampler import inside_mask
from losses import gradient_ncc
from rfnet_tf.colour import luma, rgb_to_ycbcr, ycbcr_to_rgb
from rfnet_tf.networks.affinenet import AffineNet
from rfnet_tf.networks.f2m import F2M, MIN_IMAGE_SIZE
from rfnet_tf.networks.refine import SIMILARITIES, refine_affine
from rfnet_tf.networks.transnet import TransNet

AFFINE_INPUT_SIZE = 384
# The shipped weights' fine_min_gain: how much F2M's flow must raise the gradient NCC of
# the registered VIS with the NIR to be applied. Chosen on 8 Country training pairs
# (weights/README.md, F2M item 11): the true field of a local misalignment gained at
# least 0.021, the shipped flow at most 0.004 (and lost up to 0.059 on aligned pairs).
FINE_MIN_GAIN = 0.01


def resize_for_affine(image: tf.Tensor, size: int = AFFINE_INPUT_SIZE) -> tf.Tensor:
    """Bilinear (antialiased when shrinking) resize of ``(B, H, W, C)`` to ``size x size``.

    The aspect ratio is not kept: the affine is normalised per axis, so one predicted
    on the squashed copy applies unchanged to the full-resolution image.
    """
    return tf.image.resize(image, [size, size], method="bilinear", antialias=True)


def checked_inputs(vis: tf.Tensor, nir: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """``vis, nir``, to be used only if they share batch size, height and width and both
    sides are at least ``MIN_IMAGE_SIZE`` pixels; otherwise ``tf.errors.InvalidArgumentError``
    naming both shapes (also inside a ``tf.function`` or a SavedModel)."""
    vis_shape, nir_shape = tf.shape(vis), tf.shape(nir)
    fits = tf.reduce_all(tf.equal(vis_shape[:3], nir_shape[:3])) & tf.reduce_all(
        nir_shape[1:3] >= MIN_IMAGE_SIZE
    )
    message = tf.strings.format(
        "RFNet needs a VIS and a NIR of the same batch size, height and width, each side at "
        f"least {MIN_IMAGE_SIZE} px; got vis shape {{}} and nir shape {{}}",
        [vis_shape, nir_shape],
    )
    check = tf.debugging.Assert(fits, [message])
    with tf.control_dependencies([check]):
        return tf.identity(vis), tf.identity(nir)


def flow_gain(
    before: tf.Tensor, after: tf.Tensor, nir: tf.Tensor, before_mask: tf.Tensor, after_mask: tf.Tensor
) -> tf.Tensor:
    """``(B,)``: how much a flow raises the NCC of gradient magnitudes
    (``losses.gradient_ncc``, the coarse search's similarity) of the VIS luma with the
    NIR: ``gradient_ncc(after, nir, after_mask) - gradient_ncc(before, nir, before_mask)``,
    in ``[-2, 2]``.

    Args:
      before, after: ``(B, H, W, 1)`` VIS luma without and with the flow.
      nir: ``(B, H, W, 1)``.
      before_mask, after_mask: ``(B, H, W, 1)``, 1 where each shows VIS content.
    """
    return gradient_ncc(after, nir, after_mask) - gradient_ncc(before, nir, before_mask)


def chroma(rgb: tf.Tensor) -> tf.Tensor:
    """``(B, H, W, 2)`` Cb, Cr of an RGB image (0.5 = no colour)."""
    return rgb_to_ycbcr(rgb)[..., 1:]


def colour_fusion(fused: tf.Tensor, registered: tf.Tensor) -> tf.Tensor:
    """``(B, H, W, 3)`` RGB: the fused luma ``(B, H, W, 1)`` with the Cb, Cr of the
    registered VIS ``(B, H, W, C)``, clipped to ``[0, 1]``; a grey VIS (``C = 1``) gives
    the fused luma repeated."""
    if registered.shape[-1] == 3:
        rgb = ycbcr_to_rgb(tf.concat([fused, chroma(registered)], axis=-1))
    else:
        rgb = tf.tile(fused, [1, 1, 1, 3])
    return tf.clip_by_value(rgb, 0.0, 1.0)


@keras.saving.register_keras_serializable(package="rfnet_tf")
class RFNet(ConfigFromArguments, keras.Model):
    """The whole RFNet pipeline for inference.

    Called as ``model([vis, nir])`` with ``vis (B, H, W, 3)`` RGB (or ``(B, H, W, 1)``
    grey) and ``nir (B, H, W, 1)``, floats in ``[0, 1]``, any size of at least
    ``MIN_IMAGE_SIZE`` (5) pixels a side (:func:`checked_inputs`). Steps:

    1. TransNet translates the VIS luma to the NIR domain on a 384x384 resized copy.
    2. AffineNet predicts the normalised backward affine ``A`` from
       ``concat(I_x->y, I_y)`` at 384x384. With ``coarse_refinement_steps > 0``
       (an extension, off by default), ``A`` is then refined for the pair by a guarded
       search on the coarse loss, Eq. 4 (``rfnet_tf.networks.refine``), on the coarse
       input and, with ``coarse_refinement_fine_size > 0``, on a copy whose longer side
       has that many pixels (never enlarged), which TransNet translates too.
    3. The full-resolution VIS is warped by ``A``: ``I_x^C``.
    4. F2M fuses ``Y(I_x^C)`` and ``I_y`` at full resolution and predicts the residual
       flow ``phi_f``. ``attention_window`` (``None`` by default) is F2M's: the window of
       its attention's max pooling, the fusion's training crop size in trained weights.
       ``affine_head`` is AffineNet's ``head``: ``"pooled"`` (the spec's, by default) or
       ``"matching"`` (the shipped weights', ``rfnet_tf.networks.affinenet``), and
       ``correlation_radius`` the matching head's (cells of 8 px).
       ``affinenet_input_size`` (``None``: ``affine_input_size``) is the side of the
       square copy AffineNet alone sees, TransNet translating that copy too; the search
       stays on ``affine_input_size``. The matching head, trained at 192 px, is more
       precise on a larger copy, with a radius grown to cover the same displacements
       (``weights/README.md``, AffineNet item 15).

    The final registered VIS samples the original VIS once, at the composed coordinates
    ``A(p + phi_f(p))`` (one interpolation, not two). Returns a dict:

    - ``registered_coarse (B, H, W, C)``: VIS warped by ``A``;
    - ``registered (B, H, W, C)``: VIS warped by ``A`` and ``phi_f``;
    - ``fused (B, H, W, 1)``: fused luma ``I_f``;
    - ``fused_rgb (B, H, W, 3)``: ``I_f`` with the registered VIS's Cb, Cr, clipped to
      ``[0, 1]`` (grey VIS: ``I_f`` repeated);
    - ``affine (B, 2, 3)``, ``flow (B, H, W, 2)`` (``(dy, dx)`` px);
    - ``mask (B, H, W, 1)``: 1 where ``registered`` samples inside the VIS image;
    - ``coarse_ncc (B,)``, ``coarse_overlap (B,)``, ``coarse_unsure (B,)`` bool: the
      coarse registration's confidence (``rfnet_tf.networks.refine.Confidence``);
    - ``fine_gain (B,)``: how much F2M's flow raised the gradient NCC of the registered VIS
      with the NIR (:func:`flow_gain`); ``fine_kept (B,)`` bool: whether the flow was
      applied.

    ``fine_min_gain`` (``None`` by default: the paper's F2M, whose flow is always applied)
    guards the flow, an extension like the coarse search: F2M's flow is applied to an
    image only if it raises the gradient NCC by at least that much; otherwise the flow
    is zero and F2M fuses the pair as the coarse module left it (``fine_kept`` false).
    The shipped block's flow lowers the similarity on real pairs (a half-pixel blur,
    ``weights/README.md``, F2M items 3 and 11), so the guard keeps it from making a
    registration worse unnoticed.

    ``deformation_block_type`` is F2M's: ``"unet"`` (the paper's block, by default) or
    ``"correlation"`` (an option that compares the two images' descriptors explicitly,
    ``rfnet_tf.networks.correlation_flow``).

    :meth:`coarse` runs the coarse module alone, :meth:`fine` F2M alone.
    """

    CONFIG_ARGUMENTS = (
        "deformable", "max_displacement", "affine_input_size", "coarse_refinement_steps",
        "coarse_refinement_levels", "coarse_refinement_fine_size",
        "coarse_refinement_similarity", "attention_window", "affine_head",
        "correlation_radius", "affinenet_input_size", "fine_min_gain", "deformation_block_type",
    )

    def __init__(
        self,
        deformable: bool = True,
        max_displacement: float = 16.0,
        affine_input_size: int = AFFINE_INPUT_SIZE,
        coarse_refinement_steps: int = 0,
        coarse_refinement_levels: int = 3,
        coarse_refinement_fine_size: int = 0,
        coarse_refinement_similarity: str = "ncc",
        attention_window: int | None = None,
        affine_head: str = "pooled",
        correlation_radius: int = 8,
        affinenet_input_size: int | None = None,
        fine_min_gain: float | None = None,
        deformation_block_type: str = "unet",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.deformable = bool(deformable)
        self.max_displacement = float(max_displacement)
        self.affine_input_size = int(affine_input_size)
        if coarse_refinement_steps < 0 or coarse_refinement_levels < 1 or coarse_refinement_fine_size < 0:
            raise ValueError(
                "coarse_refinement_steps and coarse_refinement_fine_size must be >= 0 and "
                f"coarse_refinement_levels >= 1, got {coarse_refinement_steps}, "
                f"{coarse_refinement_fine_size} and {coarse_refinement_levels}"
            )
        self.coarse_refinement_steps = int(coarse_refinement_steps)
        self.coarse_refinement_levels = int(coarse_refinement_levels)
        self.coarse_refinement_fine_size = int(coarse_refinement_fine_size)
        if coarse_refinement_similarity not in SIMILARITIES:
            raise ValueError(
                f"coarse_refinement_similarity must be one of {sorted(SIMILARITIES)}, "
                f"got {coarse_refinement_similarity!r}"
            )
        self.coarse_refinement_similarity = coarse_refinement_similarity
        self.attention_window = None if attention_window is None else int(attention_window)
        if fine_min_gain is not None and not -2.0 <= fine_min_gain <= 2.0:
            raise ValueError(f"fine_min_gain must be None or in [-2, 2], got {fine_min_gain}")
        self.fine_min_gain = None if fine_min_gain is None else float(fine_min_gain)
        self.transnet = TransNet(name="transnet")
        if affinenet_input_size is not None and affinenet_input_size < 8:
            raise ValueError(f"affinenet_input_size must be None or >= 8, got {affinenet_input_size}")
        self.affinenet_input_size = None if affinenet_input_size is None else int(affinenet_input_size)
        self.affine_head = affine_head
        self.correlation_radius = int(correlation_radius)
        self.affinenet = AffineNet(
            deformable=self.deformable,
            head=affine_head,
            correlation_radius=self.correlation_radius,
            name="affinenet",
        )
        self.f2m = F2M(
            max_displacement=self.max_displacement,
            attention_window=self.attention_window,
            deformation_block_type=deformation_block_type,
            name="f2m",
        )
        self.deformation_block_type = deformation_block_type
        # Every input's channel count is fixed, so the variables can exist from the start
        # (a checkpoint restores into them before any call).
        self.build()

    def build(self, input_shape=None):
        self.built = True

    @property
    def random_states(self) -> list:
        """Random-generator states of the training-time randomness (AffineNet's dropout)."""
        return self.affinenet.random_states

    def _fine_level(self, vis_luma: tf.Tensor, nir: tf.Tensor):
        """``(translated, nir)`` at the refinement's fine level: both resized to a square
        of ``coarse_refinement_fine_size`` px a side (the longer side if that is
        smaller: never enlarged), squashed like the coarse input, so that every large
        pair gives one shape (the search compiles once per shape)."""
        side = tf.minimum(self.coarse_refinement_fine_size, tf.reduce_max(tf.shape(nir)[1:3]))
        size = tf.stack([side, side])
        fine_vis = tf.image.resize(vis_luma, size, method="bilinear", antialias=True)
        fine_nir = tf.image.resize(nir, size, method="bilinear", antialias=True)
        return self.transnet.translate_vis(fine_vis), fine_nir

    def register_coarse(self, vis: tf.Tensor, nir: tf.Tensor, extra_starts=None) -> dict:
        """The coarse registration of ``vis`` onto ``nir`` and its confidence.

        AffineNet's single pass on the coarse input (or on its own copy of
        ``affinenet_input_size``), then (with
        ``coarse_refinement_steps > 0``) the guarded search of
        ``rfnet_tf.networks.refine``, on the coarse input and, with
        ``coarse_refinement_fine_size > 0``, on a finer copy.

        Args:
          vis, nir: as :meth:`call`.
          extra_starts: ``(B, E, 2, 3)`` estimates to start the search from too (e.g. a
            feature-based one), besides its grid, AffineNet's prediction and the
            identity; ``None``: none.

        Returns:
          ``{"affine": (B, 2, 3), "ncc": (B,), "overlap": (B,), "unsure": (B,) bool}``:
          the affine, the search's similarity (an NCC) of TransNet's translation warped
          by it with the NIR at the finest level of the search, the share of the NIR it
          covers and whether either is below its threshold (``refine.Confidence``).
        """
        vis_luma = luma(vis)
        small_vis = resize_for_affine(vis_luma, self.affine_input_size)
        small_nir = resize_for_affine(nir, self.affine_input_size)
        translated = self.transnet.translate_vis(small_vis)
        if self.affinenet_input_size in (None, self.affine_input_size):
            affine = self.affinenet(tf.concat([translated, small_nir], axis=-1))
        else:
            net_vis = resize_for_affine(vis_luma, self.affinenet_input_size)
            net_nir = resize_for_affine(nir, self.affinenet_input_size)
            affine = self.affinenet(
                tf.concat([self.transnet.translate_vis(net_vis), net_nir], axis=-1)
            )
        shape = tf.cast(tf.shape(vis)[1:3], affine.dtype)
        fine = None
        if self.coarse_refinement_steps and self.coarse_refinement_fine_size:
            fine = self._fine_level(vis_luma, nir)
        affine, confidence = refine_affine(
            affine,
            translated,
            small_nir,
            steps=self.coarse_refinement_steps,
            levels=self.coarse_refinement_levels,
            aspect=(shape[0] - 1.0) / tf.maximum(shape[1] - 1.0, 1.0),
            fine=fine,
            extra_starts=extra_starts,
            similarity=self.coarse_refinement_similarity,
        )
        return {
            "affine": affine,
            "ncc": confidence.ncc,
            "overlap": confidence.overlap,
            "unsure": confidence.unsure,
        }

    def predict_affine(self, vis: tf.Tensor, nir: tf.Tensor) -> tf.Tensor:
        """``(B, 2, 3)`` coarse registration affine of ``vis`` onto ``nir``."""
        return self.register_coarse(vis, nir)["affine"]

    def coarse(self, vis: tf.Tensor, nir: tf.Tensor, extra_starts=None) -> dict:
        """The coarse module alone: ``{"affine", "registered", "mask", "coarse_ncc",
        "coarse_overlap", "coarse_unsure"}`` (see :meth:`register_coarse` for ``extra_starts`` and the
        confidence)."""
        vis, nir = checked_inputs(vis, nir)
        registration = self.register_coarse(vis, nir, extra_starts)
        shape = tf.shape(vis)
        coords = affine_grid(registration["affine"], shape[1], shape[2])
        registered, mask = resample(vis, coords)
        return {
            "affine": registration["affine"],
            "registered": registered,
            "mask": mask,
            "coarse_ncc": registration["ncc"],
            "coarse_overlap": registration["overlap"],
            "coarse_unsure": registration["unsure"],
        }

    def fine(self, vis: tf.Tensor, nir: tf.Tensor) -> dict:
        """F2M alone on the pair as given, the coarse module skipped (paper Fig. 10(a)).

        Takes what the model's call takes. Returns ``{"registered", "fused",
        "fused_rgb", "flow", "mask"}`` as the call does, with ``vis`` in place of the
        coarse-registered VIS: ``registered[p] = vis[p + flow[p]]`` (all channels,
        bilinear, zero outside), ``flow (B, H, W, 2)`` ``(dy, dx)`` px.
        """
        vis, nir = checked_inputs(vis, nir)
        vis_luma = luma(vis)
        fine = self._guarded_f2m(vis_luma, nir, tf.ones_like(vis_luma))
        registered, mask = warp_flow(vis, fine["flow"])
        return {
            "registered": registered,
            "fused": fine["fused"],
            "fused_rgb": colour_fusion(fine["fused"], registered),
            "flow": fine["flow"],
            "mask": mask,
            "fine_gain": fine["gain"],
            "fine_kept": fine["kept"],
        }

    def _guarded_f2m(self, vis_luma: tf.Tensor, nir: tf.Tensor, vis_mask: tf.Tensor) -> dict:
        """F2M on ``[vis_luma, nir]`` (``vis_mask``: 1 where ``vis_luma`` shows VIS
        content), its flow guarded by ``fine_min_gain``: ``{"fused", "flow", "gain",
        "kept"}``. Unguarded, F2M runs once as the paper's; guarded, its block predicts
        the flow, then F2M fuses with the flow the guard keeps (zero where it refuses)."""
        if self.fine_min_gain is None:
            fine = self.f2m([vis_luma, nir])
            flow, fused = fine["flow"], fine["fused"]
        else:
            flow = self.f2m.predict_flow([vis_luma, nir])
        registered, inside = warp_flow(vis_luma, flow)
        moved_mask, _ = warp_flow(vis_mask, flow)
        content = inside * tf.cast(moved_mask > 0.999, inside.dtype)
        gain = flow_gain(vis_luma, registered, nir, vis_mask, content)
        if self.fine_min_gain is None:
            kept = tf.ones_like(gain, tf.bool)
        else:
            kept = gain >= self.fine_min_gain
            flow = flow * tf.cast(kept, flow.dtype)[:, None, None, None]
            fused = self.f2m([vis_luma, nir], flow=flow)["fused"]
        return {"fused": fused, "flow": flow, "gain": gain, "kept": kept}

    def call(self, inputs, training=None):
        vis, nir = checked_inputs(*inputs)
        shape = tf.shape(vis)
        batch, height, width = shape[0], shape[1], shape[2]
        registration = self.register_coarse(vis, nir)
        affine = registration["affine"]
        affine_coords = affine_grid(affine, height, width)  # (B, H, W, 2)
        registered_coarse, coarse_mask = resample(vis, affine_coords)

        fine = self._guarded_f2m(luma(registered_coarse), nir, coarse_mask)
        flow = fine["flow"]
        # Bilinear interpolation reproduces the affine's (linear) coordinates exactly,
        # so this is A(p + flow(p)) without approximation inside the image.
        composed, _ = resample(
            affine_coords, identity_grid(batch, height, width) + flow, padding_mode="border"
        )
        registered, _ = resample(vis, composed)
        mask = inside_mask(composed, height, width)

        return {
            "registered_coarse": registered_coarse,
            "registered": registered,
            "fused": fine["fused"],
            "fused_rgb": colour_fusion(fine["fused"], registered),
            "affine": affine,
            "flow": flow,
            "mask": mask,
            "coarse_ncc": registration["ncc"],
            "coarse_overlap": registration["overlap"],
            "coarse_unsure": registration["unsure"],
            "fine_gain": fine["gain"],
            "fine_kept": fine["kept"],
        }
