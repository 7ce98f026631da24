"""Visualisation helpers: checkerboards, flow colours and their legend, PNG writing,
labelled panels."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest
from PIL import Image

from rfnet_tf import visualize


def hue_degrees(rgb_pixel: np.ndarray) -> float:
    hue, _, _ = colorsys.rgb_to_hsv(*(rgb_pixel / 255.0))
    return 360.0 * hue


def test_checkerboard_hand_layout_with_uneven_tiles():
    a = np.zeros((5, 5), np.uint8)
    b = np.ones((5, 5), np.uint8)
    # tiles=2 over 5 rows: rows 0-2 are tile 0 (r * 2 // 5 = 0), rows 3-4 tile 1.
    expected = np.array(
        [
            [0, 0, 0, 1, 1],
            [0, 0, 0, 1, 1],
            [0, 0, 0, 1, 1],
            [1, 1, 1, 0, 0],
            [1, 1, 1, 0, 0],
        ]
    )
    np.testing.assert_array_equal(visualize.checkerboard(a, b, tiles=2), expected)


def test_checkerboard_tiles_come_from_the_right_images(rng):
    a = rng.uniform(0, 1, (8, 12, 3))
    b = rng.uniform(2, 3, (8, 12))
    board = visualize.checkerboard(a, b, tiles=4)
    assert board.shape == (8, 12, 3)
    for i in range(4):
        for j in range(4):
            tile = board[2 * i : 2 * i + 2, 3 * j : 3 * j + 3]
            if (i + j) % 2 == 0:
                np.testing.assert_array_equal(tile, a[2 * i : 2 * i + 2, 3 * j : 3 * j + 3])
            else:
                grey = b[2 * i : 2 * i + 2, 3 * j : 3 * j + 3]
                np.testing.assert_array_equal(tile, np.stack([grey] * 3, axis=-1))


def test_checkerboard_rejects_different_sizes():
    with pytest.raises(ValueError):
        visualize.checkerboard(np.zeros((4, 4)), np.zeros((4, 5)))


def test_flow_to_rgb_zero_flow_is_black():
    np.testing.assert_array_equal(visualize.flow_to_rgb(np.zeros((3, 4, 2))), 0)


def test_flow_to_rgb_hue_rotates_with_direction():
    angles = np.arange(0, 360, 30)
    radians = np.radians(angles)
    flow = np.stack([np.sin(radians), np.cos(radians)], axis=-1)[None]  # (dy, dx), y down
    rgb = visualize.flow_to_rgb(flow)
    hues = np.array([hue_degrees(pixel.astype(float)) for pixel in rgb[0]])
    np.testing.assert_allclose(hues, angles, atol=1.5)
    np.testing.assert_array_equal(rgb[0, 0], [255, 0, 0])  # right = red


def test_flow_to_rgb_value_scales_with_magnitude():
    flow = np.array([[[0.0, 1.0], [0.0, 2.0], [0.0, 4.0]]])
    rgb = visualize.flow_to_rgb(flow, max_magnitude=2.0)
    np.testing.assert_array_equal(rgb[0, :, 0], [128, 255, 255])


def test_flow_colour_wheel_is_the_key_of_the_flow_colours():
    """Rim = the maximum at full brightness, hue by direction (HSV by hand), black centre
    and corners; half-way out, half the brightness."""
    radius = 10
    wheel = visualize.flow_colour_wheel(3.0, radius)
    assert wheel.shape == (21, 21, 3) and wheel.dtype == np.uint8
    centre = radius
    np.testing.assert_array_equal(wheel[centre, centre], 0)
    np.testing.assert_array_equal(wheel[0, 0], 0)  # outside the disc
    np.testing.assert_array_equal(wheel[centre, centre + radius], [255, 0, 0])  # right: red
    np.testing.assert_array_equal(wheel[centre, centre - radius], [0, 255, 255])  # left: cyan
    np.testing.assert_allclose(wheel[centre + radius, centre], [127.5, 255, 0], atol=0.5)  # down: hue 90
    np.testing.assert_allclose(wheel[centre - radius, centre], [127.5, 0, 255], atol=0.5)  # up: hue 270
    # A displacement of 1.5 px (half of 3) down-right, 45 degrees: HSV(45, 1, 0.5).
    offset = round(radius / 2 / np.sqrt(2))
    magnitude = 3.0 * np.hypot(offset, offset) / radius
    expected = np.array(colorsys.hsv_to_rgb(45 / 360, 1.0, magnitude / 3.0)) * 255
    np.testing.assert_allclose(wheel[centre + offset, centre + offset], expected, atol=1.0)


def test_flow_legend_shows_the_wheel_of_the_maximum_in_the_corner(rng):
    flow = rng.normal(0.0, 2.0, (120, 160, 2))
    maximum = float(np.hypot(flow[..., 0], flow[..., 1]).max())
    image = visualize.flow_to_rgb(flow)
    legend = visualize.with_flow_legend(image, maximum, radius=20)
    assert legend.shape == image.shape and legend.dtype == np.uint8
    margin, diameter = visualize.FLOW_LEGEND_MARGIN_PX, 41
    np.testing.assert_array_equal(legend[:60, :100], image[:60, :100])  # the rest untouched
    box = legend[-margin - diameter : -margin, -margin - diameter : -margin]
    rows, cols = np.mgrid[-20:21, -20:21]
    disc = np.hypot(rows, cols) <= 20
    np.testing.assert_array_equal(box[disc], visualize.flow_colour_wheel(maximum, 20)[disc])
    # The rim on the right is the colour of the field's maximum pointing right.
    np.testing.assert_array_equal(box[20, 40], visualize.flow_to_rgb(np.array([[[0.0, maximum]]]), maximum)[0, 0])
    label = legend[-margin - diameter - 20 : -margin - diameter, -70:]
    assert (label == 255).all(axis=-1).any()  # the white label over the wheel
    # A small image gets a smaller wheel (a sixth of its side) and no label.
    small = visualize.with_flow_legend(image[:30, :40], maximum)
    assert small.shape == (30, 40, 3) and np.array_equal(small[:10, :], image[:10, :40])
    np.testing.assert_array_equal(small[-margin - 11 : -margin, -margin - 11 : -margin][5, 10], [255, 0, 0])
    assert not (small == 255).all(axis=-1).any()


def test_resize_image_keeps_an_image_of_the_size_and_averages_when_shrinking(rng):
    image = rng.random((4, 6, 3))
    assert visualize.resize_image(image, (4, 6)) is image
    shrunk = visualize.resize_image(image.astype(np.float32), (2, 3))
    expected = image.reshape(2, 2, 3, 2, 3).mean(axis=(1, 3))
    np.testing.assert_allclose(shrunk, expected, atol=1e-6)


def test_to_uint8_scales_rounds_and_clips():
    np.testing.assert_array_equal(
        visualize.to_uint8(np.array([-0.2, 0.0, 0.5, 1.0, 1.7, np.nan])), [0, 0, 128, 255, 255, 0]
    )
    on_255 = visualize.to_uint8(np.array([0.0, 127.4, 255.0]), data_range=255)
    np.testing.assert_array_equal(on_255, [0, 127, 255])
    np.testing.assert_array_equal(visualize.to_uint8(np.array([0, 65535], np.uint16)), [0, 255])
    np.testing.assert_array_equal(visualize.to_uint8(np.array([True, False])), [255, 0])
    raw = np.array([3, 200], np.uint8)
    assert visualize.to_uint8(raw) is raw


def test_save_png_round_trips_rgb_and_grey_atomically(tmp_path, rng):
    rgb = rng.uniform(0, 1, (6, 7, 3))
    path = visualize.save_png(tmp_path / "sub" / "rgb.png", rgb)
    written = np.asarray(Image.open(path).convert("RGB"))
    np.testing.assert_array_equal(written, visualize.to_uint8(rgb))
    grey = rng.integers(0, 256, (5, 4, 1)).astype(np.uint8)
    visualize.save_png(path, grey)  # overwrite in place
    np.testing.assert_array_equal(np.asarray(Image.open(path)), grey[..., 0])
    assert sorted(p.name for p in path.parent.iterdir()) == ["rgb.png"]


def test_result_panel_places_labelled_tiles(rng):
    small = rng.uniform(0, 1, (20, 30))
    images = {
        "vis": rng.uniform(0, 1, (20, 30, 3)),
        "nir": rng.uniform(0, 1, (20, 30)),
        "fused": np.kron(small, np.ones((2, 2))),  # 2x2 blocks: area shrinking is exact
    }
    panel = visualize.result_panel(images, ncols=2)
    cell = visualize.LABEL_HEIGHT_PX + 20
    assert panel.shape == (2 * cell, 60, 3) and panel.dtype == np.uint8
    label = visualize.LABEL_HEIGHT_PX
    np.testing.assert_array_equal(panel[label:cell, :30], visualize.to_uint8(images["vis"]))
    np.testing.assert_array_equal(panel[label:cell, 30:60, 1], visualize.to_uint8(images["nir"]))
    fused_tile = panel[cell + label :, :30]
    np.testing.assert_array_equal(fused_tile[..., 2], visualize.to_uint8(small))
    labels = [panel[:label, :30], panel[:label, 30:], panel[cell : cell + label, :30]]
    assert all(strip.max() > 0 for strip in labels)  # text was drawn
    assert not np.array_equal(labels[0], labels[1])
    np.testing.assert_array_equal(panel[cell:, 30:], 0)  # the unused cell stays black


def series_pixels(plot: np.ndarray, index: int = 0) -> np.ndarray:
    """``(N, 2)`` (row, column) of the pixels drawn in series ``index``'s colour."""
    return np.argwhere((plot == visualize.PLOT_COLOURS[index]).all(axis=-1))


def step_column_and_top(plot: np.ndarray) -> tuple[float, int]:
    """The column of a single-step curve's vertical stroke (the columns holding the most
    pixels of the curve's colour) and the top row of that stroke."""
    pixels = series_pixels(plot)
    columns, counts = np.unique(pixels[:, 1], return_counts=True)
    stroke = columns[counts == counts.max()]
    return float(stroke.mean()), int(pixels[np.isin(pixels[:, 1], stroke), 0].min())


def test_cumulative_share_plot_has_a_log_x_axis_and_a_linear_share_axis():
    def plot(values):
        return visualize.cumulative_share_plot({"method": values}, "error (px)")

    # Every pair at one error: one step, from 0 % up to 100 %, at that error. The steps
    # of 0.5, 5 and 50 px are equally spaced (a logarithmic axis).
    steps = [step_column_and_top(plot([error] * 4))[0] for error in (0.5, 5.0, 50.0)]
    assert steps[0] < steps[1] < steps[2]
    assert steps[2] - steps[1] == pytest.approx(steps[1] - steps[0], abs=1.0)
    # A quarter, a half and all of the pairs within 2 px: the step heights are 1 : 2 : 4.
    never = 1e6  # beyond the axis: never within x
    tops = {
        share: step_column_and_top(plot([2.0] * count + [never] * (4 - count)))[1]
        for share, count in ((0.25, 1), (0.5, 2), (1.0, 4))
    }
    # No pair ever within x: a flat line at 0 % (all but the legend's few pixels on it).
    rows, counts = np.unique(series_pixels(plot([never] * 4))[:, 0], return_counts=True)
    bottom = rows[counts.argmax()]
    assert counts[np.abs(rows - bottom) <= 1].sum() > 0.9 * counts.sum()
    assert bottom > max(tops.values())
    heights = {share: bottom - top for share, top in tops.items()}
    assert heights[0.5] == pytest.approx(2 * heights[0.25], abs=2)
    assert heights[1.0] == pytest.approx(2 * heights[0.5], abs=2)


def test_cumulative_share_plot_draws_each_series_in_its_own_colour():
    series = {"a": [1.0, 3.0], "b": [0.2], "c": []}
    plot = visualize.cumulative_share_plot(series, "error (px)", shape=(300, 700))
    assert plot.shape == (300, 700, 3) and plot.dtype == np.uint8
    for index in range(3):
        assert len(series_pixels(plot, index)) > 0
    assert len(series_pixels(plot, 3)) == 0
    with pytest.raises(ValueError, match="increasing positive"):
        visualize.cumulative_share_plot(series, "x", x_range=(0.0, 10.0))


@pytest.mark.parametrize("low, high", [(0.0, 1.0), (3.2, 87.0), (0.0, 2600.0), (-1.5, 0.2)])
def test_linear_ticks_are_round_and_cover_the_range(low, high):
    ticks = np.array(visualize.linear_ticks(low, high))
    assert ticks[0] <= low and ticks[-1] >= high - 1e-9 and 3 <= len(ticks) <= 12
    steps = np.diff(ticks)
    np.testing.assert_allclose(steps, steps[0])
    mantissa = steps[0] / 10 ** np.floor(np.log10(steps[0]))
    assert min(abs(mantissa - m) for m in (1, 2, 5, 10)) < 1e-9


def test_line_plot_draws_each_series_at_its_data_coordinates():
    """A flat line at y = 0.5 crosses the middle row of the plot area; a rising one from
    (0, 0) to (10, 1) is at a quarter of the height from the top at x = 7.5."""
    plot = visualize.line_plot(
        {"flat": ([0.0, 10.0], [0.5, 0.5]), "rising": ([0.0, 10.0], [0.0, 1.0])},
        "x", "y", y_range=(0.0, 1.0), shape=(300, 700),
    )
    margins = visualize._PLOT_MARGINS
    left, right = margins["left"], 700 - margins["right"]
    top, bottom = margins["top"], 300 - margins["bottom"]
    column = round(left + 0.75 * (right - left))
    for index, expected in ((0, (top + bottom) / 2), (1, top + 0.25 * (bottom - top))):
        pixels = series_pixels(plot, index)
        rows = pixels[np.abs(pixels[:, 1] - column) <= 0, 0]
        assert len(rows) and abs(rows.mean() - expected) <= 2, index
