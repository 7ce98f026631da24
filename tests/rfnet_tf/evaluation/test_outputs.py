"""Outputs: safe folder names, the all-or-nothing directory, per-pair images."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from rfnet_tf import visualize
from rfnet_tf.evaluation import outputs


@pytest.mark.parametrize(
    "name,expected",
    [
        ("scene_1", "scene_1"),
        ("field/0001", "field__0001"),
        ("a\\b//c", "a__b__c"),
        ("../../etc/passwd", "etc__passwd"),
        ("..", "pair"),
        (".hidden", "hidden"),
        ("name with spaces:*?", "name_with_spaces_"),
        ("", "pair"),
    ],
)
def test_safe_folder_name(name, expected):
    assert outputs.safe_folder_name(name) == expected


def test_unique_folder_names_resolve_collisions():
    names = ["a/b", "a__b", "A__B", "c"]
    assert outputs.unique_folder_names(names) == ["a__b", "a__b-2", "A__B-3", "c"]


def test_staged_directory_replaces_earlier_results_only_when_complete(tmp_path):
    out = tmp_path / "results"
    with outputs.staged_directory(out) as staging:
        (staging / outputs.RESULTS_JSON).write_text("{}")
        (staging / "old_only.txt").write_text("x")
        assert not out.exists()
    assert (out / "old_only.txt").exists()
    with outputs.staged_directory(out) as staging:
        (staging / outputs.RESULTS_JSON).write_text('{"new": 1}')
    assert (out / outputs.RESULTS_JSON).read_text() == '{"new": 1}'
    assert not (out / "old_only.txt").exists()
    assert [path.name for path in tmp_path.iterdir()] == ["results"]


def test_staged_directory_leaves_everything_as_it_was_on_error(tmp_path):
    out = tmp_path / "results"
    with pytest.raises(RuntimeError):
        with outputs.staged_directory(out) as staging:
            (staging / outputs.RESULTS_JSON).write_text("{}")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    out.mkdir()
    (out / outputs.RESULTS_JSON).write_text("old")
    with pytest.raises(RuntimeError):
        with outputs.staged_directory(out):
            raise RuntimeError("boom")
    assert (out / outputs.RESULTS_JSON).read_text() == "old"
    assert [path.name for path in tmp_path.iterdir()] == ["results"]


def test_an_unrelated_directory_is_never_replaced(tmp_path):
    (tmp_path / "notes.txt").write_text("precious")
    with pytest.raises(outputs.DestinationError, match="refusing"):
        with outputs.staged_directory(tmp_path):
            pass
    assert (tmp_path / "notes.txt").read_text() == "precious"
    with pytest.raises(outputs.DestinationError, match="not a directory"):
        outputs.check_out_dir(tmp_path / "notes.txt")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert outputs.check_out_dir(empty) == empty


def test_out_dir_dot_inside_earlier_results_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    earlier = tmp_path / "results"
    earlier.mkdir()
    (earlier / outputs.RESULTS_JSON).write_text("{}")
    monkeypatch.chdir(earlier)
    with pytest.raises(outputs.DestinationError, match="holds the current directory"):
        with outputs.staged_directory("."):
            pass
    assert sorted(p.name for p in earlier.iterdir()) == [outputs.RESULTS_JSON]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]


def test_save_pair_images(tmp_path, rng):
    height, width = 30, 40
    vis = rng.random((height, width, 3))
    nir = rng.random((height, width, 1))
    flow = np.zeros((height, width, 2))
    flow[..., 1] = 2.0
    files = outputs.save_pair_images(
        tmp_path / "p", vis, nir, vis[::-1], vis, flow, "rfnet", "rfnet", tiles=2, flow_method="rfnet_fine"
    )
    assert set(files) == {
        "registered_vis", "fused_rgb", "checkerboard_before", "checkerboard_after", "flow", "panel"
    }
    for name in files.values():
        assert (tmp_path / "p" / name).is_file()
    saved = np.asarray(Image.open(tmp_path / "p" / files["registered_vis"]))
    np.testing.assert_array_equal(saved, np.floor(vis[::-1] * 255 + 0.5).astype(np.uint8))
    # Checkerboard: top-left tile is the VIS luma, the next tile along the row the NIR.
    before = np.asarray(Image.open(tmp_path / "p" / files["checkerboard_before"]))
    luma = vis @ np.array([0.299, 0.587, 0.114])
    np.testing.assert_allclose(before[0, 0], luma[0, 0] * 255, atol=0.51)
    np.testing.assert_allclose(before[0, width - 1], nir[0, width - 1, 0] * 255, atol=0.51)
    # Flow (dy, dx) = (0, 2): pure red, full brightness (hue 0 = right).
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "p" / files["flow"]))[0, 0], [255, 0, 0])
    panel = Image.open(tmp_path / "p" / files["panel"])
    assert panel.size == (outputs.PANEL_COLUMNS * width, 2 * (height + visualize.LABEL_HEIGHT_PX))
    # The flow tile (7th: row 1, column 2) has the colour wheel of its scale in the corner:
    # a sixth of the side, radius 5; its centre black, its rim on the right red (2 px right).
    tile = np.asarray(panel)[2 * visualize.LABEL_HEIGHT_PX + height :, 2 * width : 3 * width]
    margin = visualize.FLOW_LEGEND_MARGIN_PX
    centre = (height - margin - 6, width - margin - 6)
    np.testing.assert_array_equal(tile[centre], 0)
    np.testing.assert_array_equal(tile[centre[0], centre[1] + 5], [255, 0, 0])
    np.testing.assert_array_equal(tile[0, 0], [255, 0, 0])  # the flow itself, elsewhere
    without = outputs.save_pair_images(tmp_path / "q", vis, nir, vis, None, None, "identity", None, 2)
    assert set(without) == {"registered_vis", "checkerboard_before", "checkerboard_after", "panel"}
