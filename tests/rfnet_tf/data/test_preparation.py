"""rfnet_tf.data.preparation: the resized copies the coarse stages train on."""

import numpy as np
import pytest

from rfnet_tf.data.io import Pair
from rfnet_tf.data.preparation import resize_pair, resized_copies


def ramp_pair(height: int, width: int) -> Pair:
    """A pair whose images are linear ramps in x (VIS) and y (NIR), values in [0, 1]."""
    ys, xs = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width), indexing="ij")
    vis = np.repeat(xs[..., None], 3, axis=-1).astype(np.float32)
    return Pair(name="ramp", vis=vis, nir=ys[..., None].astype(np.float32))


def test_one_copy_per_zoom_and_pair_at_the_zoomed_size():
    pairs = [ramp_pair(30, 50), ramp_pair(40, 20)]
    copies = resized_copies(pairs, 16, (1.0, 1.5))
    assert [copy.name for copy in copies] == ["ramp", "ramp", "ramp@1.5x", "ramp@1.5x"]
    assert [copy.nir.shape for copy in copies] == [(16, 16, 1)] * 2 + [(24, 24, 1)] * 2
    np.testing.assert_array_equal(copies[0].vis, resize_pair(pairs[0], 16).vis)


@pytest.mark.parametrize("zoom", [1.0, 1.5, 2.0])
def test_a_copy_shows_the_whole_scene_resampled(zoom):
    """A linear ramp stays the same ramp over the copy's frame: the copy is the whole
    scene (no crop), only its pixel count changes (away from the border, where a
    resampling filter's support leaves the image)."""
    copy = resized_copies([ramp_pair(60, 90)], 20, (zoom,))[0]
    size = round(20 * zoom)
    centres = (np.arange(size) + 0.5) / size
    inner = slice(2, size - 2)
    np.testing.assert_allclose(copy.vis[0, inner, 0], centres[inner], atol=0.02)
    np.testing.assert_allclose(copy.nir[inner, 0, 0], centres[inner], atol=0.02)
