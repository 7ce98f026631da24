"""tf.data pipelines for the three training stages (ARCHITECTURE section 5).

Each pipeline yields dicts of batched ``float32`` tensors (``B`` and ``h x w``: the
:class:`Stream`'s ``batch_size`` and ``crop_size``):

* :func:`transnet_dataset` (aligned pairs): ``vis (B, h, w, 3)``, ``nir (B, h, w, 1)``,
  ``mask (B, h, w, 1)``.
* :func:`affinenet_dataset` (synthetic affine misalignment): the same keys, ``vis``
  being the misaligned moving crop, plus ``affine (B, 2, 3)``: the true registration
  affine of the crop, normalised in the crop's own coordinates
  (``registered[q] = vis[affine(q)]``, ``layers.warp_affine(vis, affine)``); given the
  pairs' TransNet translations, also ``translated (B, h, w, 1)``: the translation
  misaligned exactly like ``vis``.
* :func:`f2m_dataset` (synthetic smooth local misalignment): the same keys plus
  ``flow (B, h, w, 2)``: the true registration flow ``(dy, dx)`` px
  (``registered[q] = vis[q + flow(q)]``, ``layers.warp_flow(vis, flow)``).

``mask`` is 1 where the (moving) ``vis`` crop shows real image content: 0 on the black
border of the warp and on reflect padding. (The registered mask, warped like ``vis``,
then also excludes the fixed crop's padding, because the padding of both images lies
at the same scene positions.) A grey VIS is replicated to 3 channels so that every
batch has one shape; its luma is the grey image again.

How an element is made: a random misalignment is drawn first, in the crop's own frame
(its ranges are those of :mod:`rfnet_tf.data.synthetic` at the crop size, so the
network sees exactly that distribution: e.g. a translation of up to 15% of the crop).
Then a crop window is placed in the fixed (NIR) image, uniformly among the
integer positions whose moving crop samples only real content (the sample
coordinates' extent is known exactly); where no such position exists, the window is
centred on the content. The fixed crop is cut from the NIR; the moving crop is sampled
directly from the whole aligned VIS at the misaligned coordinates (window offset +
misalignment, bilinear), so it holds real content from beyond the window; beyond the
image it is mirrored (``synthetic.OUTSIDE_FILL``), and ``mask`` marks it. Images smaller than the crop are reflect-padded
(centred) first. Finally random vertical and horizontal flips are applied to both
crops, the mask and the ground truth (``synthetic.flip_affine`` / ``flip_flow``).

Randomness is stateless: every random number of an element comes from keys derived
from ``(seed, element position)``, and the epoch's shuffle from ``(seed, epoch)``, so
the stream is identical for a seed whatever the parallelism, and differs for another
seed. The stream repeats endlessly by default (``Stream(epochs=None)``): an epoch is
``len(pairs) * crops_per_image`` elements, each pair contributing
``crops_per_image`` random crops per epoch in a shuffled order, and batches run on
across epoch boundaries, so no element is dropped; train with
``steps_per_epoch(pairs, batch_size, crops_per_image)`` steps per epoch. With a finite
``epochs`` the stream ends after ``epochs`` epochs (a last partial batch is dropped).
``Stream(start_batch=k)`` yields the same stream from its batch ``k`` on (a resumed run).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

from layers import affine_grid, identity_grid, resample
from layers.resampler import inside_mask
from rfnet_tf.data.io import Pair
from rfnet_tf.data.synthetic import (
    INVERSION_TOLERANCE_PX,
    NUM_AFFINE_SAMPLES,
    OUTSIDE_FILL,
    AffineRanges,
    Curriculum,
    LocalFieldRanges,
    affine_from_unit_samples,
    flip_affine,
    flip_flow,
    flip_image,
    invert_affine,
    invert_flow,
    smooth_field,
)

DEFAULT_CROP_SIZE = 384
DEFAULT_BATCH_SIZE = 4
# Purposes folded into the seed, so that the shuffle and element streams never share keys.
_SHUFFLE_STREAM = 1
_ELEMENT_STREAM = 2
# Sub-keys of an element.
_OFFSET_KEY, _FLIP_KEY, _TRANSFORM_KEY, _AMPLITUDE_KEY = range(4)

# (vis, nir, random key, training step of the element's batch) -> element.
ExampleFn = Callable[[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor], dict[str, tf.Tensor]]


@dataclasses.dataclass(frozen=True)
class Stream:
    """What every pipeline's element stream shares (module docstring).

    Attributes:
      crop_size: ``h`` (square) or ``(h, w)`` pixels of every crop.
      batch_size: elements per batch, ``B``.
      seed: the seed of every random number of the stream.
      crops_per_image: random crops of each pair per epoch.
      flips: random vertical and horizontal flips.
      epochs: the stream ends after this many epochs; ``None``: it never ends.
      start_batch: the stream begins at its batch ``start_batch`` (a resumed run).
    """

    crop_size: int | tuple[int, int] = DEFAULT_CROP_SIZE
    batch_size: int = DEFAULT_BATCH_SIZE
    seed: int = 0
    crops_per_image: int = 1
    flips: bool = True
    epochs: int | None = None
    start_batch: int = 0


def steps_per_epoch(
    pairs: Sequence[Pair] | int, batch_size: int = DEFAULT_BATCH_SIZE, crops_per_image: int = 1
) -> int:
    """Batches per epoch: ``ceil(num_pairs * crops_per_image / batch_size)``."""
    num_pairs = pairs if isinstance(pairs, int) else len(pairs)
    return math.ceil(num_pairs * crops_per_image / batch_size)


def transnet_dataset(
    pairs: Sequence[Pair],
    stream: Stream = Stream(),
) -> tf.data.Dataset:
    """Random aligned crops for TransNet: ``{"vis", "nir", "mask"}`` (module docstring)."""
    crop = _crop_shape(stream.crop_size)

    def example(vis, nir, key, step):
        keys = tf.random.experimental.stateless_split(key, 4)
        vis, nir, content = _padded_to_crop(vis, nir, crop)
        crop_coords = identity_grid(1, crop[0], crop[1])[0]
        offset = _window_offset(crop_coords, content, tf.shape(nir)[:2], crop, keys[_OFFSET_KEY])
        coords = crop_coords + tf.cast(offset, tf.float32)
        crop_vis = vis[offset[0] : offset[0] + crop[0], offset[1] : offset[1] + crop[1]]
        crop_nir = nir[offset[0] : offset[0] + crop[0], offset[1] : offset[1] + crop[1]]
        element = {"vis": crop_vis, "nir": crop_nir, "mask": _content_mask(coords, content)}
        return _flipped(element, keys[_FLIP_KEY], stream.flips)

    return _dataset(pairs, example, crop, stream)


def affinenet_dataset(
    pairs: Sequence[Pair],
    stream: Stream = Stream(),
    ranges: AffineRanges = AffineRanges(),
    sampling_frame: tuple[int, int] | None = None,
    curriculum: Curriculum = Curriculum(),
    translated: Sequence[np.ndarray] | None = None,
) -> tf.data.Dataset:
    """Crops with a synthetic affine misalignment: ``{"vis", "nir", "mask", "affine"}``.

    ``curriculum`` scales the ranges with the training step of the element's batch
    (``Curriculum.magnitude``; by default the full ranges from the start).

    ``translated``: one ``(H, W, 1)`` image per pair, the pair's VIS translated to the
    NIR domain by a frozen TransNet (``TransNet.translate_vis``). Each element then also
    holds ``translated``, sampled at the moving crop's coordinates in the same pass as
    ``vis``, so that the AffineNet stage need not run TransNet on every batch. (It is the
    misaligned translation of the aligned VIS, where TransNet at every step would
    translate the misaligned VIS: equal up to TransNet's border effects.)

    ``sampling_frame`` ``(height, width)``: the pixel frame in which the misalignment is
    drawn (rotation about its centre, translation as a fraction of its size), default
    the crop. For pairs resized to a square (RFNet's coarse input), pass their original
    size: the normalised affine then follows the distribution that the original images
    see (a true rotation of a 680 x 1024 image is not one of the squashed copy).
    """
    crop = _crop_shape(stream.crop_size)
    frame = crop if sampling_frame is None else _crop_shape(sampling_frame)

    def example(vis, nir, key, step):
        keys = tf.random.experimental.stateless_split(key, 4)
        unit = tf.random.stateless_uniform([NUM_AFFINE_SAMPLES], keys[_TRANSFORM_KEY])
        misalignment = affine_from_unit_samples(
            unit, frame[0], frame[1], ranges, curriculum.magnitude(step)
        )
        crop_coords = affine_grid(misalignment[None], crop[0], crop[1])[0]
        element = _misaligned_element(vis, nir, crop_coords, crop, keys[_OFFSET_KEY])
        if translated is not None:
            element["translated"] = element["vis"][..., 3:]
            element["vis"] = element["vis"][..., :3]
        element["affine"] = invert_affine(misalignment)
        return _flipped(element, keys[_FLIP_KEY], stream.flips)

    return _dataset(pairs, example, crop, stream, translated)


def f2m_dataset(
    pairs: Sequence[Pair],
    stream: Stream = Stream(),
    ranges: LocalFieldRanges = LocalFieldRanges(),
    curriculum: Curriculum = Curriculum(),
) -> tf.data.Dataset:
    """Crops with a synthetic smooth local misalignment: ``{"vis", "nir", "mask", "flow",
    "jitter"}``.

    The field over a crop is a window of a field drawn over its whole image, as
    ``evaluate.py --misalign=local`` draws it (largest displacement ``U(2, 10)`` px and
    control spacing 64 px at 384 x 384, both scaled with the image's smaller side, see
    ``LocalFieldRanges``), its amplitude scaled by ``curriculum``; ``flow`` is its
    numerical inverse over the crop (residual < 1e-4 px). ``jitter`` ``(2, 2)`` holds
    two sub-pixel offsets ``U(-0.5, 0.5)`` px, rows VIS and NIR as ``(dy, dx)``: the
    deformation phase's interpolation jitter (``F2M(jitter=...)``).
    """
    crop = _crop_shape(stream.crop_size)

    def example(vis, nir, key, step):
        keys = tf.random.experimental.stateless_split(key, 4)
        image_shape = tf.maximum(tf.shape(nir)[:2], crop)
        image_side = tf.reduce_min(tf.shape(nir)[:2])
        grid_shape = ranges.window_grid_shape(image_shape[0], image_shape[1], image_side)
        noise = tf.random.stateless_uniform(
            tf.concat([grid_shape, [2]], axis=0), keys[_TRANSFORM_KEY], -1.0, 1.0
        )
        low, high = ranges.max_displacement_range
        amplitude = (
            tf.random.stateless_uniform([], keys[_AMPLITUDE_KEY], low, high)
            * ranges.image_factor(image_side)
            * curriculum.magnitude(step)
        )
        # The crop sees a window of the whole image's field: its amplitude is the
        # image's largest, and a small crop gets a gentle part of it, not all of it.
        whole = smooth_field(noise, image_shape[0], image_shape[1], amplitude)
        window_key = tf.random.experimental.stateless_fold_in(keys[_TRANSFORM_KEY], 1)
        corner = tf.random.stateless_uniform(
            [2], window_key, 0, tf.int32.max, dtype=tf.int32
        ) % (image_shape - crop + 1)
        misalignment = whole[corner[0] : corner[0] + crop[0], corner[1] : corner[1] + crop[1]]
        crop_coords = identity_grid(1, crop[0], crop[1])[0] + misalignment
        element = _misaligned_element(vis, nir, crop_coords, crop, keys[_OFFSET_KEY])
        flow, residual = invert_flow(misalignment)
        # Ranges that fold the field would give a wrong ground truth: fail loudly instead.
        check = tf.debugging.assert_less(
            residual,
            INVERSION_TOLERANCE_PX,
            message="the local field's inverse did not converge: do the ranges fold it?",
        )
        with tf.control_dependencies([check]):
            element["flow"] = tf.identity(flow)
        element = _flipped(element, keys[_FLIP_KEY], stream.flips)
        # A key of its own (folded from the amplitude's), so the other draws stay as they were.
        jitter_key = tf.random.experimental.stateless_fold_in(keys[_AMPLITUDE_KEY], 1)
        element["jitter"] = tf.random.stateless_uniform([2, 2], jitter_key, -0.5, 0.5)
        return element

    return _dataset(pairs, example, crop, stream)


def _dataset(
    pairs: Sequence[Pair],
    example: ExampleFn,
    crop: tuple[int, int],
    stream: Stream,
    extra_vis_channels: Sequence[np.ndarray] | None = None,
) -> tf.data.Dataset:
    """The shared shuffle / repeat / map / batch / prefetch around a stage's ``example``.

    ``extra_vis_channels`` (one ``(H, W, k)`` array per pair) are appended to the VIS
    that ``example`` receives, so that they are cropped and warped with it.
    """
    pairs = list(pairs)
    if not pairs:
        raise ValueError("no pairs to make a dataset from")
    batch_size, crops_per_image = stream.batch_size, stream.crops_per_image
    extra = 0
    if extra_vis_channels is not None:
        if len(extra_vis_channels) != len(pairs):
            raise ValueError(
                f"{len(extra_vis_channels)} extra VIS channel arrays for {len(pairs)} pairs"
            )
        for pair, channels in zip(pairs, extra_vis_channels):
            if channels.ndim != 3 or channels.shape[:2] != pair.nir.shape[:2]:
                raise ValueError(f"{pair.name}: extra VIS channels of shape {channels.shape}")
        extra = extra_vis_channels[0].shape[-1]
    if batch_size < 1 or crops_per_image < 1:
        raise ValueError(
            f"batch_size and crops_per_image must be positive, got {batch_size}, {crops_per_image}"
        )
    num_pairs = len(pairs)
    per_epoch = num_pairs * crops_per_image
    base_key = tf.constant([stream.seed, 0], tf.int64)

    def fetch(index):
        # The pairs stay as the caller holds them (no second copy of the data set in
        # memory); an element copies only its own pair.
        pair = pairs[int(index)]
        vis = pair.vis if pair.vis.shape[-1] == 3 else np.repeat(pair.vis, 3, axis=-1)
        if extra:
            vis = np.concatenate([vis, extra_vis_channels[int(index)]], axis=-1)
        return vis.astype(np.float32, copy=False), pair.nir.astype(np.float32, copy=False)

    def epoch_elements(epoch):
        shuffle_key = tf.random.experimental.stateless_fold_in(
            tf.random.experimental.stateless_fold_in(base_key, _SHUFFLE_STREAM), epoch
        )
        order = tf.argsort(tf.random.stateless_uniform([per_epoch], shuffle_key))
        positions = epoch * per_epoch + tf.range(per_epoch, dtype=tf.int64)
        return tf.data.Dataset.from_tensor_slices((positions, tf.cast(order % num_pairs, tf.int64)))

    def make_element(position, index):
        vis, nir = tf.numpy_function(fetch, [index], (tf.float32, tf.float32), stateful=False)
        vis.set_shape([None, None, 3 + extra])
        nir.set_shape([None, None, 1])
        key = tf.random.experimental.stateless_fold_in(
            tf.random.experimental.stateless_fold_in(base_key, _ELEMENT_STREAM), position
        )
        element = example(vis, nir, key, position // batch_size)
        return {
            name: tf.ensure_shape(tf.cast(value, tf.float32), _element_shape(name, crop))
            for name, value in element.items()
        }

    # Resuming at batch ``start_batch`` skips whole epochs, then elements of the first
    # epoch before any image is touched, so a resumed stream costs nothing extra.
    first_epoch, skipped = divmod(stream.start_batch * batch_size, per_epoch)
    epoch_numbers = (
        tf.data.Dataset.counter(start=first_epoch)
        if stream.epochs is None
        else tf.data.Dataset.range(first_epoch, stream.epochs)
    )
    dataset = epoch_numbers.flat_map(epoch_elements).skip(skipped)
    dataset = dataset.map(make_element, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def _crop_shape(crop_size: int | tuple[int, int]) -> tuple[int, int]:
    height, width = (crop_size, crop_size) if isinstance(crop_size, int) else crop_size
    if height < 2 or width < 2:
        raise ValueError(f"crop_size must be at least 2 x 2, got {crop_size}")
    return int(height), int(width)


def _element_shape(name: str, crop: tuple[int, int]) -> list[int]:
    return {
        "vis": [*crop, 3],
        "nir": [*crop, 1],
        "mask": [*crop, 1],
        "affine": [2, 3],
        "flow": [*crop, 2],
        "translated": [*crop, 1],
        "jitter": [2, 2],
    }[name]


def _reflect_indices(size: tf.Tensor, before: tf.Tensor, total: tf.Tensor) -> tf.Tensor:
    """Indices into ``[0, size)`` of positions ``-before .. total - before - 1``, mirrored.

    Mirrors without repeating the edge (``numpy.pad(mode="reflect")``) as often as
    needed, so any padding amount works.
    """
    period = tf.maximum(2 * (size - 1), 1)
    folded = tf.math.floormod(tf.range(total) - before, period)
    return tf.where(folded < size, folded, period - folded)


def _padded_to_crop(vis: tf.Tensor, nir: tf.Tensor, crop: tuple[int, int]):
    """Reflect-pads (centred) both images to at least the crop size.

    Returns ``(vis, nir, content)``: the padded images and ``content = (top, left,
    height, width)``, int32, the real image's box in the padded frame.
    """
    shape = tf.shape(nir)
    height, width = shape[0], shape[1]
    padded_height = tf.maximum(height, crop[0])
    padded_width = tf.maximum(width, crop[1])
    top = (padded_height - height) // 2
    left = (padded_width - width) // 2

    def pad(image):
        rows = _reflect_indices(height, top, padded_height)
        cols = _reflect_indices(width, left, padded_width)
        return tf.gather(tf.gather(image, rows, axis=0), cols, axis=1)

    needs_padding = (padded_height > height) | (padded_width > width)
    vis = tf.cond(needs_padding, lambda: pad(vis), lambda: vis)
    nir = tf.cond(needs_padding, lambda: pad(nir), lambda: nir)
    return vis, nir, tf.stack([top, left, height, width])


def _window_offset(
    crop_coords: tf.Tensor,
    content: tf.Tensor,
    padded_size: tf.Tensor,
    crop: tuple[int, int],
    key: tf.Tensor,
) -> tf.Tensor:
    """``(2,)`` int32 top-left corner of the crop window in the padded fixed image.

    ``crop_coords (h, w, 2)`` are the moving crop's sample points relative to the
    window. Per axis the offsets keeping every sample point on real content form an
    interval (the content box is a rectangle); the offset is uniform over its integers
    that also keep the window in the image, or else centres the samples on the content.
    """
    units = tf.random.stateless_uniform([2], key)
    offsets = []
    for axis in range(2):
        sample_low = tf.reduce_min(crop_coords[..., axis])
        sample_high = tf.reduce_max(crop_coords[..., axis])
        content_low = tf.cast(content[axis], tf.float32)
        content_high = content_low + tf.cast(content[axis + 2], tf.float32) - 1.0
        window_max = tf.cast(padded_size[axis] - crop[axis], tf.float32)
        low = tf.math.ceil(tf.maximum(content_low - sample_low, 0.0))
        high = tf.math.floor(tf.minimum(content_high - sample_high, window_max))
        uniform = tf.minimum(low + tf.floor(units[axis] * (high - low + 1.0)), high)
        centred = tf.clip_by_value(
            tf.round(0.5 * (content_low - sample_low + content_high - sample_high)), 0.0, window_max
        )
        offsets.append(tf.where(low <= high, uniform, centred))
    return tf.cast(tf.stack(offsets), tf.int32)


def _content_mask(coords: tf.Tensor, content: tf.Tensor) -> tf.Tensor:
    """``(h, w, 1)``: 1 where the ``(y, x)`` sample points in the padded frame are real content."""
    corner = tf.cast(content[:2], coords.dtype)
    return inside_mask(coords - corner, content[2], content[3])


def _misaligned_element(
    vis: tf.Tensor, nir: tf.Tensor, crop_coords: tf.Tensor, crop: tuple[int, int], key: tf.Tensor
) -> dict[str, tf.Tensor]:
    """Fixed crop and moving crop sampled at ``window offset + crop_coords``, with its mask."""
    vis, nir, content = _padded_to_crop(vis, nir, crop)
    offset = _window_offset(crop_coords, content, tf.shape(nir)[:2], crop, key)
    coords = crop_coords + tf.cast(offset, tf.float32)
    moving, _ = resample(vis[None], coords[None], OUTSIDE_FILL)
    fixed = nir[offset[0] : offset[0] + crop[0], offset[1] : offset[1] + crop[1]]
    return {"vis": moving[0], "nir": fixed, "mask": _content_mask(coords, content)}


def _flipped(element: dict[str, tf.Tensor], key: tf.Tensor, flips: bool) -> dict[str, tf.Tensor]:
    """Random vertical / horizontal flips of every image and of the ground truth."""
    if not flips:
        return element
    flip_vertical, flip_horizontal = tf.unstack(tf.random.stateless_uniform([2], key) < 0.5)
    flipped = {}
    for name, value in element.items():
        if name == "affine":
            flipped[name] = flip_affine(value, flip_vertical, flip_horizontal)
        elif name == "flow":
            flipped[name] = flip_flow(value, flip_vertical, flip_horizontal)
        else:
            flipped[name] = flip_image(value, flip_vertical, flip_horizontal)
    return flipped
