"""Preparing training pairs with the model: RFNet's resized coarse input, the coarse
module's registration, TransNet's translations (the training scripts' data preparation).

Not imported by ``rfnet_tf.data`` itself (it needs ``rfnet_tf.networks``, which needs
``rfnet_tf.data``): import it as ``rfnet_tf.data.preparation``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from rfnet_tf.colour import luma
from rfnet_tf.data.io import Pair
from rfnet_tf.networks import RFNet
from rfnet_tf.networks.rfnet import resize_for_affine


def median_size(pairs: list[Pair]) -> tuple[int, int]:
    """``(height, width)``: the median size of the pairs."""
    sizes = np.array([(pair.height, pair.width) for pair in pairs])
    return tuple(int(v) for v in np.median(sizes, axis=0))


def resize_pair(pair: Pair, size: int) -> Pair:
    """The pair resized to ``size x size`` exactly as RFNet resizes its coarse input."""

    def resize(image):
        return resize_for_affine(tf.constant(image[None]), size)[0].numpy()

    return dataclasses.replace(pair, vis=resize(pair.vis), nir=resize(pair.nir))


def resized_copies(pairs: Sequence[Pair], size: int, zooms: Sequence[float] = (1.0,)) -> list[Pair]:
    """Each pair resized (:func:`resize_pair`) to ``round(size * zoom)`` square, per zoom.

    A ``size`` crop of a copy with a zoom above 1 is a window of the scene magnified by
    that zoom against RFNet's coarse input. Copies other than ``zoom = 1`` are named
    ``<name>@<zoom>x``.
    """
    copies = []
    for zoom in zooms:
        for pair in pairs:
            copy = resize_pair(pair, round(size * zoom))
            copies.append(copy if zoom == 1 else dataclasses.replace(copy, name=f"{pair.name}@{zoom:g}x"))
    return copies


def largest_valid_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` of a box inside which ``mask (H, W)`` is all 1.

    Greedy: while the box holds an invalid pixel, drop the border row or column with the
    most invalid pixels. Exact for the convex valid region of an affine warp up to a
    pixel or two.
    """
    top, bottom, left, right = 0, mask.shape[0], 0, mask.shape[1]
    valid = mask > 0
    while top < bottom and left < right:
        box = valid[top:bottom, left:right]
        if box.all():
            break
        losses = [
            (~box[0]).sum(),
            (~box[-1]).sum(),
            (~box[:, 0]).sum(),
            (~box[:, -1]).sum(),
        ]
        side = int(np.argmax(losses))
        if side == 0:
            top += 1
        elif side == 1:
            bottom -= 1
        elif side == 2:
            left += 1
        else:
            right -= 1
    return top, bottom, left, right


def coarse_align(pairs: list[Pair], coarse: RFNet, crop_size: int) -> list[Pair]:
    """The coarse module's registration of each pair, cut to its fully valid box."""
    aligned = []
    for index, pair in enumerate(pairs, start=1):
        vis = pair.vis if pair.vis.shape[-1] == 3 else np.repeat(pair.vis, 3, axis=-1)
        out = coarse.coarse(tf.constant(vis[None]), tf.constant(pair.nir[None]))
        mask = out["mask"].numpy()[0, ..., 0]
        top, bottom, left, right = largest_valid_box(mask)
        if bottom - top < crop_size // 2 or right - left < crop_size // 2:
            print(f"coarse alignment of {pair.name} leaves a valid box of "
                  f"{bottom - top}x{right - left} px; using the pair unaligned", flush=True)
            aligned.append(pair)
            continue
        registered = out["registered"].numpy()[0]
        aligned.append(
            dataclasses.replace(
                pair,
                vis=np.ascontiguousarray(registered[top:bottom, left:right]),
                nir=np.ascontiguousarray(pair.nir[top:bottom, left:right]),
            )
        )
        print(f"coarse-aligned {index}/{len(pairs)} {pair.name}", flush=True)
    return aligned


def translate_pairs(model: RFNet, pairs: list[Pair]) -> list[np.ndarray]:
    """``(H, W, 1)`` TransNet translation of each pair's VIS luma (to the NIR domain)."""
    translate = tf.function(model.transnet.translate_vis, reduce_retracing=True)
    return [
        translate(luma(tf.constant(pair.vis[None])))[0].numpy().astype(np.float32)
        for pair in pairs
    ]
