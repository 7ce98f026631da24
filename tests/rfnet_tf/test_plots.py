"""Plots: round tick values and lines drawn where their data puts them."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from rfnet_tf import plots


@pytest.mark.parametrize("low, high", [(0.0, 1.0), (3.2, 87.0), (0.0, 2600.0), (-1.5, 0.2)])
def test_ticks_are_round_and_cover_the_range(low, high):
    ticks = plots.nice_ticks(low, high)
    assert ticks[0] <= low and ticks[-1] >= high and 3 <= len(ticks) <= 12
    steps = np.diff(ticks)
    np.testing.assert_allclose(steps, steps[0])
    mantissa = steps[0] / 10 ** np.floor(np.log10(steps[0]))
    assert min(abs(mantissa - m) for m in (1, 2, 5, 10)) < 1e-9


def test_a_line_is_drawn_at_its_data_coordinates(tmp_path):
    path = plots.line_plot(
        {"flat": ([0.0, 10.0], [0.5, 0.5]), "rising": ([0.0, 10.0], [0.0, 1.0])},
        tmp_path / "sub" / "plot.png", "title", "x", "y", y_range=(0.0, 1.0),
    )
    image = np.asarray(Image.open(path).convert("RGB")).astype(int)
    assert image.shape[:2] == (plots._SIZE[1], plots._SIZE[0])
    left, right, top, bottom = plots._MARGIN
    middle_row = top + (plots._SIZE[1] - top - bottom) // 2
    column = left + (plots._SIZE[0] - left - right) * 3 // 4  # x = 7.5, right of the legend
    flat_colour = np.array(plots.PALETTE[0])
    rows = [r for r in range(image.shape[0]) if np.abs(image[r, column] - flat_colour).sum() < 30]
    assert rows and abs(np.mean(rows) - middle_row) <= 2
    rising_colour = np.array(plots.PALETTE[1])
    rising_row = top + (plots._SIZE[1] - top - bottom) * 0.25  # y = 0.75 at x = 7.5
    rows = [r for r in range(image.shape[0]) if np.abs(image[r, column] - rising_colour).sum() < 30]
    assert rows and abs(np.mean(rows) - rising_row) <= 3


def test_steps_draw_a_staircase(tmp_path):
    path = plots.line_plot({"cdf": ([0.0, 5.0, 10.0], [0.0, 0.5, 1.0])}, tmp_path / "cdf.png",
                           "t", "x", "y", y_range=(0.0, 1.0), steps=True)
    image = np.asarray(Image.open(path).convert("RGB")).astype(int)
    left, right, top, bottom = plots._MARGIN
    column = left + (plots._SIZE[0] - left - right) * 3 // 4  # x = 7.5: the 0.5 step
    colour = np.array(plots.PALETTE[0])
    rows = [r for r in range(image.shape[0]) if np.abs(image[r, column] - colour).sum() < 30]
    assert rows and abs(np.mean(rows) - (top + (plots._SIZE[1] - top - bottom) / 2)) <= 2
