"""Synthetic misalignment with exact ground truth (ARCHITECTURE section 5).

A misaligned pair is made from an aligned one by warping the VIS (the moving image)
backward with a known transform; the fixed NIR is left as it is. Two directions of
every transform are kept:

* the *misalignment*, which made the moving image from the aligned VIS:
  ``moving[p] = aligned_vis[M(p)]`` (affine) or ``moving[p] = aligned_vis[p + f(p)]``
  (local field ``f``);
* the *registration*, which undoes it and is what a registration network should
  predict: ``registered[q] = moving[A(q)]`` with ``A = M^-1`` (exact), or
  ``registered[q] = moving[q + g(q)]`` with ``g`` the inverse field of ``f``:
  ``g(q) + f(q + g(q)) = 0``. ``g`` is numerical: computed per pixel by iteration
  (Newton steps on that fixed-point equation) until the residual is below 1e-4 px
  (see :func:`invert_flow`).

Affine ranges (:class:`AffineRanges`): rotation ``U(-15, 15)`` degrees, isotropic scale
log-uniform on ``[0.8, 1.25]`` (log-uniform, so that zooming in by ``s`` and out by
``1/s`` are equally likely; ``0.8 = 1/1.25``), horizontal shear ``U(-0.15, 0.15)``,
translation ``U(-0.15, 0.15)`` of the image extent in each axis. The spec's rotation
and translation (10 degrees, 10 %) are widened to cover the real misalignments of the
public VIS-NIR registration benchmark on the same data (up to about 15 degrees and 13 %
of the width; docs/ARCHITECTURE.md). The
transform is built in pixel coordinates about the image centre, so that the rotation
is a true rotation of the scene whatever the aspect ratio:
``M_px(p) = c + R(rotation) Sh(shear) (scale * (p - c)) + t`` on ``[x, y]`` pixels,
``Sh = [[1, shear], [0, 1]]``, ``t = (t_x (W - 1), t_y (H - 1))``; a positive rotation
turns the sampling grid clockwise on screen (the y axis points down).

Local field ranges (:class:`LocalFieldRanges`): uniform noise ``U(-1, 1)`` per
component on a coarse control grid (spacing 64 px at 384 x 384), upsampled bicubically
(the smoothing), scaled so that its maximum magnitude ``max_p |f(p)|`` is
``U(2, 10)`` px at 384 x 384. For other sizes the amplitude and the control spacing
both scale with ``min(H, W) / 384``, so a field on a larger image is the same smooth
deformation, resampled (its gradients, hence its invertibility, do not change). Between
pixels the field is its bilinear interpolant (clamped at the border): that defines the
exact correspondence of sub-pixel points.

Pixel affines here act on ``[x, y, 1]`` (the order of the normalised ``[u, v, 1]`` and
of OpenCV's ``warpAffine``), while points and flows are ``(y, x)`` as everywhere else.
"""

from __future__ import annotations

import dataclasses
import math
import zlib

import numpy as np
import tensorflow as tf

from layers import identity_grid, resample, warp_affine, warp_flow
from rfnet_tf.data.io import Pair
from rfnet_tf.metrics.registration import affine_to_pixel_matrix

MISALIGNMENT_KINDS = ("affine", "local", "both")
# How the moving image is filled where it samples beyond the aligned VIS: mirrored, not
# black, because a real misaligned VIS shows real (if non-corresponding) content there,
# and a black border skews what TransNet makes of the rest of the image (its instance
# norms see it). The content mask still marks those pixels.
OUTSIDE_FILL = "reflect"
INVERSION_TOLERANCE_PX = 1e-4
MAX_INVERSION_ITERATIONS = 30
# The affine parameters are drawn from this many independent U(0, 1) samples.
NUM_AFFINE_SAMPLES = 5

# The streams of :func:`pair_rng`, one per purpose.
NOISE_STREAM = 0
MISALIGNMENT_STREAM = 1


def pair_rng(seed: int, name: str, stream: int = MISALIGNMENT_STREAM) -> np.random.Generator:
    """The generator of one pair's draws for one purpose (``stream``): keyed on the seed,
    the pair's name and the stream only, so a pair's draws do not depend on the other
    pairs (the demo's simulated NIR noise, the evaluation's synthetic misalignments)."""
    return np.random.default_rng([seed, zlib.crc32(name.encode()), stream])


@dataclasses.dataclass(frozen=True)
class AffineRanges:
    """Ranges of a random affine misalignment (module docstring).

    Attributes:
      max_rotation_deg: rotation ``U(-max, max)`` degrees.
      scale_range: isotropic scale, log-uniform on ``[low, high]``.
      max_shear: horizontal shear ``U(-max, max)``.
      max_translation: translation ``U(-max, max)`` as a fraction of the image extent,
        drawn separately for y and x.

    Raises:
      ValueError: a range that cannot be drawn from or that folds the image.
    """

    max_rotation_deg: float = 15.0
    scale_range: tuple[float, float] = (0.8, 1.25)
    max_shear: float = 0.15
    max_translation: float = 0.15

    def __post_init__(self):
        low, high = self.scale_range
        checks = (
            (0 <= self.max_rotation_deg <= 90, "max_rotation_deg must be in [0, 90]"),
            (0 < low <= high, "scale_range must be 0 < low <= high"),
            (0 <= self.max_shear < 1, "max_shear must be in [0, 1)"),
            (0 <= self.max_translation <= 0.5, "max_translation must be in [0, 0.5]"),
        )
        for holds, message in checks:
            if not holds:
                raise ValueError(f"{message}, got {self}")


@dataclasses.dataclass(frozen=True)
class LocalFieldRanges:
    """Ranges of a random smooth local misalignment (ARCHITECTURE section 5 defaults).

    Attributes:
      max_displacement_range: the field's maximum magnitude is ``U(low, high)`` px at
        ``reference_size``.
      control_spacing: spacing in px of the noise control grid at ``reference_size``.
      reference_size: the size the pixel values refer to; both scale with
        ``min(H, W) / reference_size``. ``None``: use the pixel values at any size.
    """

    max_displacement_range: tuple[float, float] = (2.0, 10.0)
    control_spacing: float = 64.0
    reference_size: int | None = 384

    def __post_init__(self):
        low, high = self.max_displacement_range
        if not 0 <= low <= high:
            raise ValueError(f"max_displacement_range must be 0 <= low <= high, got {self}")
        if not self.control_spacing > 0:
            raise ValueError(f"control_spacing must be positive, got {self}")

    def size_factor(self, height: int, width: int) -> float:
        """How much the pixel values scale for an image of this size."""
        return float(self.image_factor(min(height, width)))

    def control_grid_shape(self, height: int, width: int) -> tuple[int, int]:
        """``(rows, cols)`` of the noise control grid for an image of this size."""
        rows, cols = self.window_grid_shape(height, width, min(height, width)).numpy()
        return int(rows), int(cols)

    def image_factor(self, image_side) -> tf.Tensor:
        """The scale of the pixel values for an image whose smaller side is ``image_side``
        px (a number or a scalar tensor); float32 scalar."""
        if self.reference_size is None:
            return tf.constant(1.0)
        return tf.cast(image_side, tf.float32) / self.reference_size

    def window_grid_shape(self, height, width, image_side) -> tf.Tensor:
        """``(rows, cols)`` int32 of the control grid over a ``height x width`` window of
        an image whose smaller side is ``image_side`` px: the spacing is the image's,
        whatever the window's size (a training crop is part of its image, not a smaller
        image)."""
        spacing = self.control_spacing * self.image_factor(image_side)
        sides = tf.cast(tf.stack([height, width]), tf.float32)
        return tf.maximum(2, tf.cast(tf.round((sides - 1.0) / spacing), tf.int32) + 1)


@dataclasses.dataclass(frozen=True)
class Curriculum:
    """Misalignments that grow with the training step (an option; off by default).

    ``magnitude(step) = min(1, start + (1 - start) * max(0, step - first_step) / steps)``
    scales every range: the rotation, shear and translation, the logarithm of the scale
    and the local field's amplitude. ``steps = 0`` is no curriculum (magnitude 1 from the
    start). ``first_step`` is the training step at which the ranges start to grow: a run
    forked from another run's checkpoint at step ``k`` counts its steps on from ``k``,
    so its curriculum starts there.
    """

    steps: int = 0
    start: float = 0.25
    first_step: int = 0

    def __post_init__(self):
        if self.steps < 0 or not 0 <= self.start <= 1 or self.first_step < 0:
            raise ValueError(
                f"Curriculum needs steps >= 0, start in [0, 1] and first_step >= 0, got {self}"
            )

    def magnitude(self, step) -> tf.Tensor:
        """The factor of the ranges at ``step`` (a scalar tensor or number)."""
        step = tf.cast(step, tf.float32)
        if not self.steps:
            return tf.ones_like(step)
        progress = tf.maximum(0.0, step - float(self.first_step)) / self.steps
        return tf.minimum(1.0, self.start + (1.0 - self.start) * progress)


@dataclasses.dataclass(eq=False)
class SyntheticAffine:
    """A random affine misalignment and its exact inverse.

    Attributes:
      misalignment: ``(2, 3)`` normalised backward affine ``M`` that made the moving
        image: ``moving[p] = aligned_vis[M(p)]``.
      registration: ``(2, 3)`` its exact inverse ``A``, registering moving onto fixed:
        ``registered[q] = moving[A(q)]``. The ground truth a network should predict.
      height, width: the image size the normalised matrices refer to.
      rotation_deg, scale, shear, translation_y, translation_x: the parameters of
        ``M`` (translations as fractions of the image extent).
    """

    misalignment: np.ndarray
    registration: np.ndarray
    height: int
    width: int
    rotation_deg: float
    scale: float
    shear: float
    translation_y: float
    translation_x: float

    def misalignment_pixels(self) -> np.ndarray:
        """``(2, 3)`` ``M`` acting on ``[x, y, 1]`` pixel coordinates."""
        return affine_to_pixel_matrix(self.misalignment, (self.height, self.width))

    def registration_pixels(self) -> np.ndarray:
        """``(2, 3)`` ``A`` acting on ``[x, y, 1]`` pixel coordinates."""
        return affine_to_pixel_matrix(self.registration, (self.height, self.width))


@dataclasses.dataclass(eq=False)
class LocalField:
    """A random smooth local misalignment and its numerical inverse.

    Attributes:
      misalignment: ``(H, W, 2)`` float64 flow ``f`` (``(dy, dx)`` px) that made the
        moving image: ``moving[p] = aligned_vis[p + f(p)]``.
      registration: ``(H, W, 2)`` float64 inverse flow ``g``:
        ``registered[q] = moving[q + g(q)]``, ``g(q) + f(q + g(q)) = 0`` (``f``
        bilinearly interpolated) to ``residual``.
      max_displacement: ``max_p |f(p)|`` in px (the drawn amplitude).
      residual: ``max_q |g(q) + f(q + g(q))|`` in px, below the inversion tolerance.
    """

    misalignment: np.ndarray
    registration: np.ndarray
    max_displacement: float
    residual: float


@dataclasses.dataclass(eq=False)
class MisalignedPair:
    """A pair with a synthetic misalignment, its ground truth and landmarks.

    Attributes:
      pair: ``vis`` is the misaligned moving VIS (zero outside the warped image),
        ``nir`` the unchanged fixed NIR; ``nir_points`` are fixed landmarks ``q`` and
        ``vis_points`` the exact moving positions of the same scene points, both
        ``(N, 2)`` ``(y, x)`` zero-based px (see :func:`make_misaligned_pair`).
      aligned_vis: the VIS before misalignment, ``(H, W, C)``.
      mask: ``(H, W, 1)`` float32, 1 where the moving image shows VIS content.
      kind: ``"affine"``, ``"local"`` or ``"both"``.
      affine: the affine part (``None`` for ``"local"``).
      field: the local part (``None`` for ``"affine"``). With ``"both"`` the field
        acts in the fixed frame, before the affine: ``moving[p] =
        aligned_vis[M(p) + f(M(p))]``, so that registering by ``A`` and then by ``g``
        (RFNet's coarse-then-fine order) restores the aligned VIS exactly.
    """

    pair: Pair
    aligned_vis: np.ndarray
    mask: np.ndarray
    kind: str
    affine: SyntheticAffine | None
    field: LocalField | None

    def registration_coordinates(self) -> np.ndarray:
        """``(H, W, 2)`` float64: where each fixed pixel's content sits in the moving image.

        ``registered[q] = moving[coords[q]]`` with ``coords[q] = A(q + g(q))`` (the
        identity stands in for a missing part), in ``(y, x)`` px.
        """
        grid = _pixel_grid(self.pair.height, self.pair.width)
        coords = grid if self.field is None else grid + self.field.registration
        if self.affine is not None:
            flat = transform_points(
                self.affine.registration, coords.reshape(-1, 2), self.pair.height, self.pair.width
            )
            coords = flat.reshape(coords.shape)
        return coords

    def registration_flow(self) -> np.ndarray:
        """``(H, W, 2)`` the whole registration as one flow: ``registration_coordinates - p``."""
        return self.registration_coordinates() - _pixel_grid(self.pair.height, self.pair.width)


def invert_affine(theta: tf.Tensor) -> tf.Tensor:
    """The exact inverse of ``(..., 2, 3)`` affines (tensor in, tensor out; numpy accepted)."""
    theta = tf.convert_to_tensor(theta)
    inverse_linear = tf.linalg.inv(theta[..., :2])
    return tf.concat([inverse_linear, -tf.matmul(inverse_linear, theta[..., 2:])], axis=-1)


def transform_points(theta: np.ndarray, points: np.ndarray, height: int, width: int) -> np.ndarray:
    """Applies a ``(2, 3)`` normalised affine to ``(N, 2)`` ``(y, x)`` pixel points."""
    points = np.asarray(points, dtype=np.float64)
    pixel = affine_to_pixel_matrix(theta, (height, width))
    xy1 = np.stack([points[:, 1], points[:, 0], np.ones(len(points))], axis=0)
    x, y = pixel @ xy1
    return np.stack([y, x], axis=-1)


def affine_from_unit_samples(
    unit: tf.Tensor, height, width, ranges: AffineRanges = AffineRanges(), magnitude=1.0
) -> tf.Tensor:
    """The misalignment ``M`` for ``NUM_AFFINE_SAMPLES`` ``U(0, 1)`` samples.

    Maps the samples onto the ranges (see the module docstring) and builds the
    normalised ``M``. Shared by :func:`random_affine` and the tf.data pipelines.

    Args:
      unit: ``(..., 5)`` samples in ``[0, 1)``: rotation, scale, shear, t_y, t_x.
      height, width: the image size (ints or scalar tensors), at least 2 each.
      ranges: the parameter ranges.
      magnitude: scales every range (``Curriculum.magnitude``; 1 = the ranges).

    Returns:
      ``(..., 2, 3)`` normalised misalignment, the dtype of ``unit``.
    """
    unit = tf.convert_to_tensor(unit)
    rotation_deg, scale, shear, translation_y, translation_x = _affine_parameters(
        unit, ranges, tf.cast(magnitude, unit.dtype)
    )
    return affine_matrix(rotation_deg, scale, shear, translation_y, translation_x, height, width)


def affine_matrix(
    rotation_deg, scale, shear, translation_y, translation_x, height, width
) -> tf.Tensor:
    """``(..., 2, 3)`` normalised ``M`` of ``M_px(p) = c + R Sh (scale (p - c)) + t``.

    All parameters are ``(...)`` tensors of one float dtype (see the module docstring
    for their meaning); ``height``/``width`` the image size.
    """
    rotation_deg = tf.convert_to_tensor(rotation_deg)
    dtype = rotation_deg.dtype
    angle = rotation_deg * (math.pi / 180.0)
    cos, sin = tf.cos(angle), tf.sin(angle)
    # Pixel linear part L = R(angle) @ [[1, shear], [0, 1]] * scale on [x, y].
    l00, l01 = scale * cos, scale * (cos * shear - sin)
    l10, l11 = scale * sin, scale * (sin * shear + cos)
    # Normalised u = x~ / a, v = y~ / b about the centre, with a = (W-1)/2, b = (H-1)/2.
    aspect = (tf.cast(height, dtype) - 1.0) / (tf.cast(width, dtype) - 1.0)  # b / a
    rows = [
        tf.stack([l00, l01 * aspect, 2.0 * translation_x], axis=-1),
        tf.stack([l10 / aspect, l11, 2.0 * translation_y], axis=-1),
    ]
    return tf.stack(rows, axis=-2)


def random_affine(
    rng: np.random.Generator | int | None,
    height: int,
    width: int,
    ranges: AffineRanges = AffineRanges(),
) -> SyntheticAffine:
    """A random affine misalignment of an ``height x width`` image and its inverse.

    Args:
      rng: a numpy Generator or an int seed.
      height, width: the image size (the normalised matrices refer to it).
      ranges: the parameter ranges (defaults: the spec's).
    """
    if height < 2 or width < 2:
        raise ValueError(
            f"an affine needs an image of at least 2 x 2 pixels, got {height} x {width}"
        )
    rng = np.random.default_rng(rng)
    unit = tf.constant(rng.random(NUM_AFFINE_SAMPLES), tf.float64)
    parameters = [float(value) for value in _affine_parameters(unit, ranges)]
    misalignment = affine_matrix(
        *(tf.constant(value, tf.float64) for value in parameters), height, width
    )
    return SyntheticAffine(
        misalignment.numpy(),
        invert_affine(misalignment).numpy(),
        height,
        width,
        *parameters,
    )


def smooth_field(noise: tf.Tensor, height, width, max_displacement) -> tf.Tensor:
    """A smooth ``(H, W, 2)`` flow from control-grid noise, scaled to a maximum magnitude.

    Args:
      noise: ``(rows, cols, 2)`` control values (``U(-1, 1)`` in this package).
      height, width: the output size.
      max_displacement: the flow's maximum magnitude ``max_p |f(p)|`` in px.

    Returns:
      ``(H, W, 2)`` ``(dy, dx)`` px, the dtype of ``noise``.
    """
    noise = tf.convert_to_tensor(noise)
    field = tf.cast(
        tf.image.resize(noise, tf.stack([height, width]), method="bicubic"), noise.dtype
    )
    magnitude = tf.sqrt(tf.reduce_sum(tf.square(field), axis=-1))
    # dtype_hint: a Python float must not pass through float32 on its way to float64.
    max_displacement = tf.cast(
        tf.convert_to_tensor(max_displacement, dtype_hint=noise.dtype), noise.dtype
    )
    return field * (max_displacement / tf.reduce_max(magnitude))


def invert_flow(
    flow: tf.Tensor,
    tolerance: float = INVERSION_TOLERANCE_PX,
    max_iterations: int = MAX_INVERSION_ITERATIONS,
) -> tuple[tf.Tensor, tf.Tensor]:
    """The inverse ``g`` of a backward flow ``f``: ``g(q) + f(q + g(q)) = 0`` at every pixel.

    Solves ``r(g) = g + f(q + g) = 0`` per pixel by iteration from ``g = -f``, each
    step a Newton step ``g <- g - (I + J)^-1 r(g)`` with ``J`` the Jacobian of ``f``
    estimated by central differences and interpolated like ``f`` (bilinear, clamped
    at the border). The smooth fields made here converge in about four steps. Stops
    when ``max |r(g)|`` is below ``tolerance`` px or after ``max_iterations``; the
    returned residual is that of the returned ``g``, so it says which. The inverse
    is numerical: exact only to the residual.

    Args:
      flow: ``(H, W, 2)`` ``(dy, dx)`` px; it must not fold (``det(I + J) > 0``).
      tolerance: the residual to reach, px.
      max_iterations: the most Newton steps to take.

    Returns:
      ``(inverse (H, W, 2), residual ())``, the dtype of ``flow``.
    """
    flow = tf.convert_to_tensor(flow)
    shape = tf.shape(flow)
    grid = identity_grid(1, shape[0], shape[1], flow.dtype)
    # (1, H, W, 6): f, then df_y/dy, df_y/dx, df_x/dy, df_x/dx, sampled together.
    flow_and_jacobian = tf.concat([flow, _jacobian(flow)], axis=-1)[None]

    def evaluate(inverse):
        sampled, _ = resample(flow_and_jacobian, grid + inverse[None], padding_mode="border")
        return inverse + sampled[0, ..., :2], sampled[0, ..., 2:]

    def not_done(iteration, inverse, error, jacobian):
        return (tf.reduce_max(tf.abs(error)) >= tolerance) & (iteration < max_iterations)

    def newton_step(iteration, inverse, error, jacobian):
        a, b = 1.0 + jacobian[..., 0], jacobian[..., 1]
        c, d = jacobian[..., 2], 1.0 + jacobian[..., 3]
        determinant = a * d - b * c
        step = tf.stack(
            [
                (d * error[..., 0] - b * error[..., 1]) / determinant,
                (a * error[..., 1] - c * error[..., 0]) / determinant,
            ],
            axis=-1,
        )
        inverse = inverse - step
        return (iteration + 1, inverse, *evaluate(inverse))

    initial = -flow
    _, inverse, error, _ = tf.while_loop(
        not_done, newton_step, (tf.constant(0), initial, *evaluate(initial))
    )
    return inverse, tf.reduce_max(tf.abs(error))


def random_local_field(
    rng: np.random.Generator | int | None,
    height: int,
    width: int,
    ranges: LocalFieldRanges = LocalFieldRanges(),
    tolerance: float = INVERSION_TOLERANCE_PX,
) -> LocalField:
    """A random smooth local misalignment ``f`` and its numerical inverse ``g`` (float64).

    Raises ``RuntimeError`` if the inversion does not reach ``tolerance``.
    """
    if height < 2 or width < 2:
        raise ValueError(
            f"a local field needs an image of at least 2 x 2 pixels, got {height} x {width}"
        )
    rng = np.random.default_rng(rng)
    factor = ranges.size_factor(height, width)
    noise = rng.uniform(-1.0, 1.0, size=(*ranges.control_grid_shape(height, width), 2))
    max_displacement = rng.uniform(*ranges.max_displacement_range) * factor
    flow = smooth_field(tf.constant(noise, tf.float64), height, width, max_displacement)
    inverse, residual = invert_flow(flow, tolerance)
    if float(residual) >= tolerance:
        raise RuntimeError(
            f"the field's inverse did not converge: residual {float(residual):.2e} px"
        )
    return LocalField(flow.numpy(), inverse.numpy(), float(max_displacement), float(residual))


def make_misaligned_pair(
    pair: Pair,
    rng: np.random.Generator | int | None,
    kind: str = "affine",
    num_landmarks: int = 5,
    affine_ranges: AffineRanges = AffineRanges(),
    field_ranges: LocalFieldRanges = LocalFieldRanges(),
    margin: float | None = None,
) -> MisalignedPair:
    """Misaligns ``pair.vis`` by a random transform, with exact ground truth and landmarks.

    The moving VIS is warped backward, mirrored where it samples beyond the aligned VIS
    (:data:`OUTSIDE_FILL`; ``layers.warp_affine`` / ``warp_flow``; for ``"both"`` one
    resampling at the composed coordinates ``M(p) + f(M(p))``, so the image is
    interpolated only once), and ``mask`` marks its content. The fixed NIR is
    ``pair.nir``.

    Landmarks: fixed points ``q`` are drawn on integer pixels at least ``margin`` px
    inside the image; the moving point is where ``q``'s content sits in the moving
    image, ``m = A(q + g(q))`` (exact for the affine; ``g(q)`` is the computed inverse
    field at the pixel ``q``, so ``m + f(m) = q`` holds to the inversion tolerance,
    1e-4 px). Points whose ``m`` falls within ``margin`` of the moving image's border
    are redrawn, so every landmark lies on real content in both images.

    Args:
      pair: an aligned pair.
      rng: a numpy Generator or an int seed.
      kind: ``"affine"``, ``"local"`` or ``"both"``.
      num_landmarks: how many landmark pairs to make.
      affine_ranges, field_ranges: the misalignment ranges.
      margin: landmark distance from the borders in px; default
        ``max(4, 0.05 * min(H, W))``.
    """
    if kind not in MISALIGNMENT_KINDS:
        raise ValueError(f"kind must be one of {MISALIGNMENT_KINDS}, got {kind!r}")
    rng = np.random.default_rng(rng)
    height, width = pair.height, pair.width
    affine = (
        random_affine(rng, height, width, affine_ranges) if kind in ("affine", "both") else None
    )
    field = (
        random_local_field(rng, height, width, field_ranges) if kind in ("local", "both") else None
    )

    image = tf.constant(pair.vis[None])
    if field is None:
        moving, mask = warp_affine(
            image, tf.constant(affine.misalignment[None], tf.float32), OUTSIDE_FILL
        )
    elif affine is None:
        moving, mask = warp_flow(
            image, tf.constant(field.misalignment[None], tf.float32), OUTSIDE_FILL
        )
    else:
        pixels = _pixel_grid(height, width).reshape(-1, 2)
        affine_coords = transform_points(affine.misalignment, pixels, height, width)
        affine_coords = tf.constant(affine_coords.reshape(1, height, width, 2))
        local, _ = resample(
            tf.constant(field.misalignment[None]), affine_coords, padding_mode="border"
        )
        moving, mask = resample(image, tf.cast(affine_coords + local, tf.float32), OUTSIDE_FILL)

    misaligned = MisalignedPair(
        pair=Pair(
            name=pair.name,
            vis=moving[0].numpy(),
            nir=pair.nir,
            vis_path=pair.vis_path,
            nir_path=pair.nir_path,
        ),
        aligned_vis=pair.vis,
        mask=mask[0].numpy(),
        kind=kind,
        affine=affine,
        field=field,
    )
    fixed_points, moving_points = _draw_landmarks(misaligned, rng, num_landmarks, margin)
    misaligned.pair.nir_points = fixed_points
    misaligned.pair.vis_points = moving_points
    return misaligned


def seeded_misalignment(
    pair: Pair,
    seed: int,
    kind: str = "affine",
    num_landmarks: int = 5,
    affine_ranges: AffineRanges = AffineRanges(),
    field_ranges: LocalFieldRanges = LocalFieldRanges(),
) -> MisalignedPair:
    """:func:`make_misaligned_pair` drawn from the pair's own generator
    (:func:`pair_rng` of ``seed`` and its name): the same pair gets the same
    misalignment whatever other pairs are drawn (the demo set, evaluate.py's folders)."""
    rng = pair_rng(seed, pair.name, MISALIGNMENT_STREAM)
    return make_misaligned_pair(pair, rng, kind, num_landmarks, affine_ranges, field_ranges)


def flip_image(image: tf.Tensor, flip_vertical, flip_horizontal) -> tf.Tensor:
    """Flips an ``(H, W, C)`` image upside down and / or left-right (bool scalars)."""
    image = tf.cond(flip_vertical, lambda: tf.reverse(image, [0]), lambda: image)
    return tf.cond(flip_horizontal, lambda: tf.reverse(image, [1]), lambda: image)


def flip_affine(theta: tf.Tensor, flip_vertical, flip_horizontal) -> tf.Tensor:
    """The registration affine of flipped images.

    If moving and fixed images are both flipped by ``F`` (``F(u, v) = (s_u u, s_v v)``,
    ``s = -1`` on a flipped axis), ``registered'[q] = moving'[F A F (q)]``, so
    ``A' = F A F``: ``A'_ij = s_i A_ij s_j`` for the linear part and
    ``t'_i = s_i t_i`` for the translation.

    Args:
      theta: ``(..., 2, 3)`` normalised affine.
      flip_vertical, flip_horizontal: bool scalars.
    """
    theta = tf.convert_to_tensor(theta)
    s_u = tf.where(flip_horizontal, -1.0, 1.0)
    s_v = tf.where(flip_vertical, -1.0, 1.0)
    signs = tf.cast(tf.stack([s_u, s_v]), theta.dtype)
    input_signs = tf.concat([signs, tf.ones([1], theta.dtype)], axis=0)
    return theta * signs[:, None] * input_signs[None, :]


def flip_flow(flow: tf.Tensor, flip_vertical, flip_horizontal) -> tf.Tensor:
    """The registration flow of flipped images.

    With both images flipped by ``F``, ``registered'[q] = moving'[q + S g(F q)]``: the
    field is flipped like an image and its component along a flipped axis changes sign.

    Args:
      flow: ``(H, W, 2)`` ``(dy, dx)`` px.
      flip_vertical, flip_horizontal: bool scalars.
    """
    flow = flip_image(flow, flip_vertical, flip_horizontal)
    s_y = tf.where(flip_vertical, -1.0, 1.0)
    s_x = tf.where(flip_horizontal, -1.0, 1.0)
    return flow * tf.cast(tf.stack([s_y, s_x]), flow.dtype)


def _affine_parameters(
    unit: tf.Tensor, ranges: AffineRanges, magnitude=1.0
) -> tuple[tf.Tensor, ...]:
    """``(..., 5)`` U(0, 1) samples -> rotation_deg, scale, shear, t_y, t_x."""
    signed = (2.0 * unit - 1.0) * magnitude
    log_low, log_high = math.log(ranges.scale_range[0]), math.log(ranges.scale_range[1])
    return (
        signed[..., 0] * ranges.max_rotation_deg,
        tf.exp((log_low + unit[..., 1] * (log_high - log_low)) * magnitude),
        signed[..., 2] * ranges.max_shear,
        signed[..., 3] * ranges.max_translation,
        signed[..., 4] * ranges.max_translation,
    )


def _jacobian(flow: tf.Tensor) -> tf.Tensor:
    """``(H, W, 4)`` derivatives ``df_y/dy, df_y/dx, df_x/dy, df_x/dx`` of ``(H, W, 2)``.

    Central differences inside, one-sided at the borders (numpy.gradient's rule).
    """

    def along_rows(field):
        inner = 0.5 * (field[2:] - field[:-2])
        return tf.concat([field[1:2] - field[:1], inner, field[-1:] - field[-2:-1]], axis=0)

    d_dy = along_rows(flow)
    d_dx = tf.transpose(along_rows(tf.transpose(flow, [1, 0, 2])), [1, 0, 2])
    return tf.stack([d_dy[..., 0], d_dx[..., 0], d_dy[..., 1], d_dx[..., 1]], axis=-1)


def _pixel_grid(height: int, width: int) -> np.ndarray:
    """``(H, W, 2)`` float64 ``(y, x)`` of every pixel."""
    return np.stack(
        np.meshgrid(np.arange(height), np.arange(width), indexing="ij"), axis=-1
    ).astype(np.float64)


def _draw_landmarks(
    misaligned: MisalignedPair, rng: np.random.Generator, num_landmarks: int, margin: float | None
) -> tuple[np.ndarray, np.ndarray]:
    """``(fixed, moving)`` ``(N, 2)`` landmark points (see :func:`make_misaligned_pair`)."""
    height, width = misaligned.pair.height, misaligned.pair.width
    if margin is None:
        margin = max(4.0, 0.05 * min(height, width))
    low, high_y, high_x = (
        math.ceil(margin),
        math.floor(height - 1 - margin),
        math.floor(width - 1 - margin),
    )
    if num_landmarks == 0:
        return np.zeros((0, 2)), np.zeros((0, 2))
    if high_y < low or high_x < low:
        raise ValueError(
            f"{misaligned.pair.name}: the image is too small for a landmark margin of {margin} px"
        )
    coords = misaligned.registration_coordinates()
    # Enough candidates that even a strong misalignment (a third of the image valid)
    # leaves num_landmarks of them, with overwhelming probability.
    box_height, box_width = high_y - low + 1, high_x - low + 1
    flat = rng.choice(
        box_height * box_width, size=min(64 * num_landmarks, box_height * box_width), replace=False
    )
    candidates = np.stack([low + flat // box_width, low + flat % box_width], axis=-1)
    moving = coords[candidates[:, 0], candidates[:, 1]]
    inside = (
        (moving[:, 0] >= margin)
        & (moving[:, 0] <= height - 1 - margin)
        & (moving[:, 1] >= margin)
        & (moving[:, 1] <= width - 1 - margin)
    )
    if inside.sum() < num_landmarks:
        raise ValueError(
            f"{misaligned.pair.name}: could not place {num_landmarks} landmarks on the valid region"
        )
    chosen = np.flatnonzero(inside)[:num_landmarks]
    return candidates[chosen].astype(np.float64), moving[chosen]
