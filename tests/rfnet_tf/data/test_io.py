"""Readers: values, dtypes and channels of every format, each layout, landmarks, bad input."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io
import tifffile
from PIL import Image

from rfnet_tf.data.errors import DataError
from rfnet_tf.data.io import (
    Pair,
    detect_layout,
    read_dataset,
    read_image,
    read_known_affine,
    read_landmark_folder,
    read_landmark_mat,
    read_nirscene,
    read_pair,
    read_pair_folder,
)

HEIGHT, WIDTH = 12, 17
BT601 = np.array([0.299, 0.587, 0.114])


def random_uint(rng, shape, bits=8):
    return rng.integers(0, 2**bits, size=shape, dtype=np.uint8 if bits == 8 else np.uint16)


def write_png(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path)
    return path


def write_pair_files(folder: Path, vis_dir: str, nir_dir: str, stems, rng, suffix=".png"):
    """Writes RGB / grey 8-bit pairs and returns their arrays keyed by stem."""
    (folder / vis_dir).mkdir(parents=True, exist_ok=True)
    (folder / nir_dir).mkdir(parents=True, exist_ok=True)
    arrays = {}
    for stem in stems:
        vis, nir = random_uint(rng, (HEIGHT, WIDTH, 3)), random_uint(rng, (HEIGHT, WIDTH))
        write_png(folder / vis_dir / f"{stem}{suffix}", vis)
        write_png(folder / nir_dir / f"{stem}{suffix}", nir)
        arrays[stem] = (vis, nir)
    return arrays


def assert_unit_image(image: np.ndarray, expected: np.ndarray, divisor: float):
    assert image.dtype == np.float32
    np.testing.assert_array_equal(image, expected.astype(np.float32) / np.float32(divisor))


# ---------------------------------------------------------------- read_image: formats


def test_png_8bit_rgb_and_grey(tmp_path, rng):
    rgb, grey = random_uint(rng, (HEIGHT, WIDTH, 3)), random_uint(rng, (HEIGHT, WIDTH))
    assert_unit_image(read_image(write_png(tmp_path / "rgb.png", rgb), "vis"), rgb, 255)
    assert_unit_image(
        read_image(write_png(tmp_path / "grey.png", grey), "vis"), grey[..., None], 255
    )
    assert_unit_image(read_image(tmp_path / "grey.png", "nir"), grey[..., None], 255)


def test_png_16bit_grey(tmp_path, rng):
    grey = random_uint(rng, (HEIGHT, WIDTH), bits=16)
    image = read_image(write_png(tmp_path / "grey16.png", grey), "nir")
    assert_unit_image(image, grey[..., None], 65535)


def test_png_16bit_rgb_keeps_its_depth_and_channel_order(tmp_path, rng):
    rgb = random_uint(rng, (HEIGHT, WIDTH, 3), bits=16)
    cv2.imwrite(str(tmp_path / "rgb16.png"), rgb[..., ::-1])  # OpenCV writes BGR
    assert_unit_image(read_image(tmp_path / "rgb16.png", "vis"), rgb, 65535)


def test_tiff_8bit_16bit_and_planar(tmp_path, rng):
    rgb8, rgb16 = random_uint(rng, (HEIGHT, WIDTH, 3)), random_uint(
        rng, (HEIGHT, WIDTH, 3), bits=16
    )
    grey16 = random_uint(rng, (HEIGHT, WIDTH), bits=16)
    tifffile.imwrite(tmp_path / "rgb8.tif", rgb8)
    tifffile.imwrite(tmp_path / "rgb16.tiff", rgb16)
    tifffile.imwrite(tmp_path / "grey16.tif", grey16)
    tifffile.imwrite(
        tmp_path / "planar.tif",
        np.moveaxis(rgb8, -1, 0),
        photometric="rgb",
        planarconfig="separate",
    )
    assert_unit_image(read_image(tmp_path / "rgb8.tif", "vis"), rgb8, 255)
    assert_unit_image(read_image(tmp_path / "rgb16.tiff", "vis"), rgb16, 65535)
    assert_unit_image(read_image(tmp_path / "grey16.tif", "nir"), grey16[..., None], 65535)
    assert_unit_image(read_image(tmp_path / "planar.tif", "vis"), rgb8, 255)


def test_float_tiff_in_unit_range_is_taken_as_is(tmp_path, rng):
    values = rng.random((HEIGHT, WIDTH))
    tifffile.imwrite(tmp_path / "float64.tif", values)
    image = read_image(tmp_path / "float64.tif", "nir")
    assert image.dtype == np.float32 and image.shape == (HEIGHT, WIDTH, 1)
    np.testing.assert_array_equal(image[..., 0], values.astype(np.float32))


def test_jpeg_rgb(tmp_path):
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    smooth = np.stack([yy * 10, xx * 12, 255 - yy * 10], axis=-1).astype(np.uint8)
    Image.fromarray(smooth).save(tmp_path / "smooth.jpg", quality=98)
    image = read_image(tmp_path / "smooth.jpg", "vis")
    assert image.dtype == np.float32 and image.shape == (HEIGHT, WIDTH, 3)
    assert np.abs(image - smooth / 255.0).mean() < 0.02  # lossy, but close


def test_vis_alpha_is_dropped(tmp_path, rng):
    rgba = random_uint(rng, (HEIGHT, WIDTH, 4))
    assert_unit_image(read_image(write_png(tmp_path / "rgba.png", rgba), "vis"), rgba[..., :3], 255)
    grey_alpha = random_uint(rng, (HEIGHT, WIDTH, 2))
    assert_unit_image(
        read_image(write_png(tmp_path / "la.png", grey_alpha), "vis"), grey_alpha[..., :1], 255
    )


def test_three_channel_nir_becomes_luma_with_a_warning(tmp_path, rng, caplog):
    rgb = random_uint(rng, (HEIGHT, WIDTH, 3))
    path = write_png(tmp_path / "nir_rgb.png", rgb)
    with caplog.at_level(logging.WARNING):
        image = read_image(path, "nir")
    assert image.shape == (HEIGHT, WIDTH, 1)
    np.testing.assert_allclose(image[..., 0], (rgb / 255.0) @ BT601, atol=1e-6)
    assert "nir_rgb.png" in caplog.text and "luma" in caplog.text


def test_nir_stored_as_three_identical_channels_is_its_grey_image_without_a_warning(
    tmp_path, rng, caplog
):
    grey = random_uint(rng, (HEIGHT, WIDTH))
    path = write_png(tmp_path / "nir_grey_as_rgb.png", np.repeat(grey[..., None], 3, axis=-1))
    with caplog.at_level(logging.WARNING):
        image = read_image(path, "nir")
    assert_unit_image(image, grey[..., None], 255)
    assert caplog.text == ""


# ---------------------------------------------------------------- layouts


def test_read_pair(tmp_path, rng):
    arrays = write_pair_files(tmp_path, "vis", "nir", ["a"], rng)
    pair = read_pair(tmp_path / "vis" / "a.png", tmp_path / "nir" / "a.png")
    assert pair.name == "a" and (pair.height, pair.width) == (HEIGHT, WIDTH)
    assert_unit_image(pair.vis, arrays["a"][0], 255)
    assert_unit_image(pair.nir, arrays["a"][1][..., None], 255)
    assert pair.vis_path == tmp_path / "vis" / "a.png" and not pair.has_landmarks


@pytest.mark.parametrize("nir_dir", ["nir", "ir"])
def test_read_pair_folder_matches_stems_across_suffixes(tmp_path, rng, nir_dir):
    arrays = write_pair_files(tmp_path, "vis", nir_dir, ["b", "a", "c"], rng)
    # Same stem, other suffix: matched by stem.
    (tmp_path / "vis" / "c.png").rename(tmp_path / "vis" / "c.bmp")
    (tmp_path / "vis" / "notes.txt").write_text("not an image: ignored")
    pairs = read_pair_folder(tmp_path, nir_dir=nir_dir)
    assert [pair.name for pair in pairs] == ["a", "b", "c"]
    for pair in pairs:
        assert_unit_image(pair.vis, arrays[pair.name][0], 255)
        assert_unit_image(pair.nir, arrays[pair.name][1][..., None], 255)
    assert [pair.name for pair in read_dataset(tmp_path, nir_dir=nir_dir)] == ["a", "b", "c"]


def test_read_nirscene(tmp_path, rng):
    expected = {}
    for category, numbers in (("country", ["0001", "0002"]), ("field", ["0001"])):
        (tmp_path / category).mkdir()
        for number in numbers:
            rgb, nir = random_uint(rng, (HEIGHT, WIDTH, 3)), random_uint(rng, (HEIGHT, WIDTH))
            tifffile.imwrite(tmp_path / category / f"{number}_rgb.tiff", rgb)
            tifffile.imwrite(tmp_path / category / f"{number}_nir.tiff", nir)
            expected[f"{category}/{number}"] = (rgb, nir)
    pairs = read_nirscene(tmp_path)
    assert [pair.name for pair in pairs] == ["country/0001", "country/0002", "field/0001"]
    for pair in pairs:
        assert_unit_image(pair.vis, expected[pair.name][0], 255)
        assert_unit_image(pair.nir, expected[pair.name][1][..., None], 255)
    assert detect_layout(tmp_path) == "nirscene"
    assert [pair.name for pair in read_dataset(tmp_path)] == list(expected)


def write_known_affine_pairs(root: Path, rng, names) -> dict:
    """``category/number`` pairs of random 8-bit PNGs with a random 2x3 float64 matrix
    each (``NNNN_nir.npy``); returns the matrices by name."""
    matrices = {}
    for name in names:
        category, number = name.split("/")
        (root / category).mkdir(parents=True, exist_ok=True)
        write_png(root / category / f"{number}_rgb.png", random_uint(rng, (HEIGHT, WIDTH, 3)))
        write_png(root / category / f"{number}_nir.png", random_uint(rng, (HEIGHT, WIDTH)))
        matrices[name] = np.eye(2, 3) + rng.uniform(-0.1, 0.1, (2, 3))
        np.save(root / category / f"{number}_nir.npy", matrices[name])
    return matrices


def test_read_known_affine_attaches_each_pairs_matrix(tmp_path, rng):
    matrices = write_known_affine_pairs(tmp_path, rng, ["urban/0002", "field/0001", "urban/0001"])
    # Other files beside them are ignored.
    (tmp_path / "urban" / "readme.txt").write_text("notes")
    np.save(tmp_path / "urban" / "0001_features.npy", np.zeros(3))
    pairs = read_known_affine(tmp_path)
    assert [pair.name for pair in pairs] == ["field/0001", "urban/0001", "urban/0002"]
    for pair in pairs:
        assert pair.known_affine.dtype == np.float64
        np.testing.assert_array_equal(pair.known_affine, matrices[pair.name])
    assert detect_layout(tmp_path) == "known_affine"
    assert [pair.name for pair in read_dataset(tmp_path)] == [pair.name for pair in pairs]
    # Read as plain RGB-NIR Scene pairs, the matrices are left aside.
    assert all(pair.known_affine is None for pair in read_dataset(tmp_path, layout="nirscene"))


@pytest.mark.parametrize(
    "content,problem",
    [
        (None, "file not found"),
        (np.eye(3), r"shape \(3, 3\)"),
        (np.array([["1", "0", "0"], ["0", "1", "0"]]), "type <U1; expected a 2x3 matrix"),
        (np.array([[1.0, 0.0, np.nan], [0.0, 1.0, 0.0]]), "NaN or Inf"),
        (np.array([[1.0, 2.0, 5.0], [0.5, 1.0, 3.0]]), "singular"),
        (b"not a numpy file", "cannot be read as a numpy"),
    ],
)
def test_bad_known_affine_matrices_name_the_file(tmp_path, rng, content, problem):
    write_known_affine_pairs(tmp_path, rng, ["water/0001", "water/0002"])
    bad = tmp_path / "water" / "0002_nir.npy"
    if content is None:
        bad.unlink()
    elif isinstance(content, bytes):
        bad.write_bytes(content)
    else:
        np.save(bad, content)
    error = assert_data_error(read_known_affine, tmp_path, names=[bad], match=problem)
    assert len(error.problems) == 1
    assert [pair.name for pair in read_known_affine(tmp_path, skip_bad=True)] == ["water/0001"]


def write_landmark_mat(path: Path, rng, lm_move, lm_fix, drop=()):
    contents = {
        "I_move": random_uint(rng, (HEIGHT, WIDTH, 3)),
        "I_fix": random_uint(rng, (HEIGHT, WIDTH)),
        "LMmove": np.asarray(lm_move, dtype=np.float64),
        "LMfix": np.asarray(lm_fix, dtype=np.float64),
    }
    for key in drop:
        del contents[key]
    scipy.io.savemat(path, contents)
    return contents


def test_read_landmark_mat_converts_one_based_xy_to_zero_based_yx(tmp_path, rng):
    lm_move = [[3.0, 2.0], [10.25, 7.5]]  # MATLAB [x, y], 1-based
    lm_fix = [[4.0, 1.0], [17.0, 12.0]]
    contents = write_landmark_mat(tmp_path / "pair.mat", rng, lm_move, lm_fix)
    pair = read_landmark_mat(tmp_path / "pair.mat")
    assert pair.name == "pair" and pair.has_landmarks
    np.testing.assert_array_equal(pair.vis_points, [[1.0, 2.0], [6.5, 9.25]])
    np.testing.assert_array_equal(pair.nir_points, [[0.0, 3.0], [11.0, 16.0]])
    assert_unit_image(pair.vis, contents["I_move"], 255)
    assert_unit_image(pair.nir, contents["I_fix"][..., None], 255)
    # The converted point indexes the pixel MATLAB's I(y, x) names: I_fix(12, 17) is the
    # last pixel, here [11, 16].
    y, x = pair.nir_points[1].astype(int)
    assert pair.nir[y, x, 0] == np.float32(contents["I_fix"][11, 16]) / np.float32(255)


def test_landmarks_outside_the_image_are_counted_in_a_warning(tmp_path, rng, caplog):
    # 1-based [x, y]: the image spans x in [0.5, WIDTH + 0.5], y in [0.5, HEIGHT + 0.5].
    corners = [[0.5, 0.5], [WIDTH + 0.5, HEIGHT + 0.5], [WIDTH / 2, HEIGHT / 2]]
    path = tmp_path / "inside.mat"
    write_landmark_mat(path, rng, corners, corners)
    with caplog.at_level(logging.WARNING):
        read_landmark_mat(path)
    assert "outside" not in caplog.text
    path = tmp_path / "outside.mat"
    write_landmark_mat(
        path, rng, [[WIDTH + 0.6, 1.0], [1.0, 1.0], [5.0, 5.0]],
        [[-40.0, 1.0], [1.0, HEIGHT + 9.0], [5.0, 5.0]],
    )
    with caplog.at_level(logging.WARNING):
        pair = read_landmark_mat(path)
    assert pair.vis_points.shape == (3, 2)
    assert "outside.mat" in caplog.text and "1 of 3 in LMmove, 2 of 3 in LMfix" in caplog.text


def test_read_landmark_folder_and_auto_layout(tmp_path, rng):
    for name in ("b", "a"):
        write_landmark_mat(tmp_path / f"{name}.mat", rng, [[1.0, 1.0]], [[2.0, 2.0]])
    assert detect_layout(tmp_path) == "landmarks"
    assert [pair.name for pair in read_landmark_folder(tmp_path)] == ["a", "b"]
    assert [pair.name for pair in read_dataset(tmp_path)] == ["a", "b"]


def test_read_dataset_explicit_layout_and_unknown_layout(tmp_path, rng):
    write_pair_files(tmp_path, "vis", "nir", ["a"], rng)
    assert [pair.name for pair in read_dataset(tmp_path, layout="pairs")] == ["a"]
    (tmp_path / "other").mkdir()
    with pytest.raises(DataError, match="unknown data layout") as error:
        read_dataset(tmp_path / "other")
    assert "other" in str(error.value)


# ---------------------------------------------------------------- real data


def test_real_vis_nir_pairs_load(vis_nir_dir):
    pairs = read_dataset(vis_nir_dir)
    stems = sorted(path.stem for path in (vis_nir_dir / "vis").glob("*.png"))
    assert [pair.name for pair in pairs] == stems and len(pairs) == 10
    for pair in pairs:
        assert pair.vis.shape == (pair.height, pair.width, 3) and pair.nir.shape == (
            pair.height,
            pair.width,
            1,
        )
        assert pair.vis.dtype == np.float32 and pair.nir.dtype == np.float32
        assert 0.0 <= pair.vis.min() and pair.vis.max() <= 1.0 and pair.nir.max() <= 1.0
        assert pair.width == 1024


def test_real_roadscene_pairs_load(roadscene_dir):
    pairs = read_dataset(roadscene_dir, nir_dir="ir")
    assert len(pairs) == 221
    for pair in pairs:
        assert pair.vis.shape == (pair.height, pair.width, 3) and pair.nir.shape == (
            pair.height,
            pair.width,
            1,
        )
        assert pair.nir.max() <= 1.0 and pair.nir.min() >= 0.0


# ---------------------------------------------------------------- bad input


def assert_data_error(function, *args, names, match=None, **kwargs):
    """Calls ``function``; it must raise DataError naming every file in ``names``."""
    with pytest.raises(DataError, match=match) as error:
        function(*args, **kwargs)
    for name in names:
        assert str(name) in str(error.value)
    return error.value


def test_missing_file(tmp_path):
    assert_data_error(read_image, tmp_path / "absent.png", names=["absent.png"], match="not found")
    assert_data_error(
        read_landmark_mat, tmp_path / "absent.mat", names=["absent.mat"], match="not found"
    )


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif"])
def test_truncated_file(tmp_path, rng, suffix):
    path = tmp_path / f"cut{suffix}"
    Image.fromarray(random_uint(rng, (64, 64, 3))).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert_data_error(read_image, path, names=[path.name], match="cannot be decoded")


@pytest.mark.parametrize("suffix", [".png", ".tif", ".jpeg"])
def test_not_an_image(tmp_path, suffix):
    path = tmp_path / f"text{suffix}"
    path.write_text("this is not an image")
    assert_data_error(read_image, path, names=[path.name], match="cannot be decoded")


def test_pair_of_different_sizes_names_both_files_and_sizes(tmp_path, rng):
    vis = write_png(tmp_path / "v.png", random_uint(rng, (HEIGHT, WIDTH, 3)))
    nir = write_png(tmp_path / "n.png", random_uint(rng, (HEIGHT + 1, WIDTH)))
    assert_data_error(
        read_pair,
        vis,
        nir,
        names=["v.png", "n.png", f"{HEIGHT}x{WIDTH}", f"{HEIGHT + 1}x{WIDTH}"],
        match="sizes differ",
    )


@pytest.mark.parametrize("bad_value, kind", [(np.nan, "NaN"), (np.inf, "Inf"), (-np.inf, "Inf")])
def test_float_tiff_with_nan_or_inf(tmp_path, rng, bad_value, kind):
    values = rng.random((HEIGHT, WIDTH)).astype(np.float32)
    values[3, 4] = bad_value
    tifffile.imwrite(tmp_path / "bad.tif", values)
    error = assert_data_error(read_image, tmp_path / "bad.tif", "nir", names=["bad.tif"])
    assert f"1 {kind}" in str(error)


def test_float_tiff_out_of_range(tmp_path, rng):
    tifffile.imwrite(tmp_path / "range.tif", (rng.random((HEIGHT, WIDTH)) * 255).astype(np.float32))
    assert_data_error(
        read_image, tmp_path / "range.tif", names=["range.tif"], match=r"must lie in \[0, 1\]"
    )


def test_unsupported_sample_type(tmp_path, rng):
    tifffile.imwrite(tmp_path / "int32.tif", rng.integers(0, 100, (HEIGHT, WIDTH), dtype=np.int32))
    assert_data_error(
        read_image, tmp_path / "int32.tif", names=["int32.tif"], match="unsupported sample type"
    )


def test_wrong_channel_counts(tmp_path, rng):
    two = write_png(tmp_path / "two.png", random_uint(rng, (HEIGHT, WIDTH, 2)))
    four = write_png(tmp_path / "four.png", random_uint(rng, (HEIGHT, WIDTH, 4)))
    five = tmp_path / "five.tif"
    tifffile.imwrite(
        five,
        random_uint(rng, (HEIGHT, WIDTH, 5)),
        photometric="minisblack",
        extrasamples=["unspecified"] * 4,
    )
    assert_data_error(read_image, two, "nir", names=["two.png"], match="NIR image with 2 channels")
    assert_data_error(
        read_image, four, "nir", names=["four.png"], match="NIR image with 4 channels"
    )
    assert_data_error(
        read_image, five, "vis", names=["five.tif"], match="VIS image with 5 channels"
    )
    assert_data_error(
        read_image, five, "nir", names=["five.tif"], match="NIR image with 5 channels"
    )


def test_tiff_stack_is_not_one_image(tmp_path, rng):
    tifffile.imwrite(
        tmp_path / "stack.tif", random_uint(rng, (4, HEIGHT, WIDTH)), photometric="minisblack"
    )
    assert_data_error(read_image, tmp_path / "stack.tif", names=["stack.tif"], match="not a stack")


def test_empty_and_missing_folders(tmp_path):
    (tmp_path / "vis").mkdir()
    (tmp_path / "nir").mkdir()
    assert_data_error(read_pair_folder, tmp_path, names=[str(tmp_path)], match="no image files")
    assert_data_error(
        read_pair_folder,
        tmp_path,
        nir_dir="ir",
        names=[str(tmp_path / "ir")],
        match="folder not found",
    )
    assert_data_error(
        read_landmark_folder, tmp_path / "vis", names=[str(tmp_path / "vis")], match="no .mat"
    )
    assert_data_error(read_nirscene, tmp_path, names=[str(tmp_path)], match="NNNN_rgb")
    assert_data_error(read_dataset, tmp_path / "absent", names=["absent"], match="folder not found")


def test_unmatched_stems_are_listed_once(tmp_path, rng, caplog):
    write_pair_files(tmp_path, "vis", "nir", ["a", "b", "only_vis_1", "only_vis_2"], rng)
    (tmp_path / "nir" / "only_vis_1.png").unlink()
    (tmp_path / "nir" / "only_vis_2.png").unlink()
    write_png(tmp_path / "nir" / "only_nir.png", random_uint(rng, (HEIGHT, WIDTH)))
    with caplog.at_level(logging.WARNING):
        error = assert_data_error(
            read_pair_folder, tmp_path, names=["only_vis_1, only_vis_2", "only_nir"]
        )
    assert len(error.problems) == 2
    assert "only_vis_1" not in caplog.text  # the error says it; a warning would repeat it
    with caplog.at_level(logging.WARNING):
        pairs = read_pair_folder(tmp_path, skip_bad=True)
    assert [pair.name for pair in pairs] == ["a", "b"]
    assert caplog.text.count("only_vis_1") == 1 and caplog.text.count("only_nir") == 1


def test_folders_and_broken_links_in_the_pair_folders_are_reported(tmp_path, rng, caplog):
    write_pair_files(tmp_path, "vis", "nir", ["a"], rng)
    write_pair_files(tmp_path / "vis", "sub", "nir_sub", ["nested"], rng)
    (tmp_path / "vis" / "gone.png").symlink_to(tmp_path / "absent.png")
    (tmp_path / "vis" / "notes.txt").write_text("not an image: skipped silently")
    with caplog.at_level(logging.WARNING):
        pairs = read_pair_folder(tmp_path)
    assert [pair.name for pair in pairs] == ["a"]
    warnings = [record.getMessage() for record in caplog.records if "skipped" in record.getMessage()]
    assert len(warnings) == 1, warnings
    assert "skipped 3 entry(ies)" in warnings[0]
    assert "gone.png (a broken link)" in warnings[0]
    assert "nir_sub/ (a folder)" in warnings[0] and "sub/ (a folder)" in warnings[0]
    assert "notes.txt" not in warnings[0]


def test_a_colourless_vis_with_a_colour_nir_is_warned_as_swapped(tmp_path, rng, caplog):
    grey = random_uint(rng, (HEIGHT, WIDTH))
    colour = random_uint(rng, (HEIGHT, WIDTH, 3))
    grey_as_rgb = write_png(tmp_path / "grey_as_rgb.png", np.repeat(grey[..., None], 3, axis=-1))
    rgb = write_png(tmp_path / "rgb.png", colour)
    with caplog.at_level(logging.WARNING):
        read_pair(rgb, write_png(tmp_path / "grey.png", grey))
    assert "swapped" not in caplog.text
    with caplog.at_level(logging.WARNING):
        pair = read_pair(grey_as_rgb, rgb)
    assert pair.vis.shape == (HEIGHT, WIDTH, 3) and pair.nir.shape == (HEIGHT, WIDTH, 1)
    swapped = [record.getMessage() for record in caplog.records if "swapped" in record.getMessage()]
    assert len(swapped) == 1 and "grey_as_rgb.png" in swapped[0] and "rgb.png" in swapped[0]


def test_nirscene_unmatched_names(tmp_path, rng):
    (tmp_path / "water").mkdir()
    tifffile.imwrite(tmp_path / "water" / "0001_rgb.tiff", random_uint(rng, (HEIGHT, WIDTH, 3)))
    tifffile.imwrite(tmp_path / "water" / "0001_nir.tiff", random_uint(rng, (HEIGHT, WIDTH)))
    tifffile.imwrite(tmp_path / "water" / "0002_rgb.tiff", random_uint(rng, (HEIGHT, WIDTH, 3)))
    assert_data_error(read_nirscene, tmp_path, names=["water/0002"], match="without a NIR partner")
    assert [pair.name for pair in read_nirscene(tmp_path, skip_bad=True)] == ["water/0001"]


def test_duplicate_stems(tmp_path, rng):
    write_pair_files(tmp_path, "vis", "nir", ["a"], rng)
    write_png(tmp_path / "vis" / "a.jpg", random_uint(rng, (HEIGHT, WIDTH, 3)))
    assert_data_error(
        read_pair_folder, tmp_path, names=["a.jpg", "a.png"], match="used by two files"
    )


def test_folder_with_several_bad_files_reports_all_at_once(tmp_path, rng):
    write_pair_files(tmp_path, "vis", "nir", ["good", "small", "text"], rng)
    write_png(tmp_path / "nir" / "small.png", random_uint(rng, (HEIGHT - 2, WIDTH)))
    (tmp_path / "vis" / "text.png").write_text("not an image")
    error = assert_data_error(
        read_pair_folder, tmp_path, names=["small.png", "text.png"], match="2 problem"
    )
    assert len(error.problems) == 2
    pairs = read_pair_folder(tmp_path, skip_bad=True)
    assert [pair.name for pair in pairs] == ["good"]
    (tmp_path / "vis" / "good.png").write_text("broken too")
    assert_data_error(
        read_pair_folder, tmp_path, skip_bad=True, names=[str(tmp_path)], match="no readable pairs"
    )


def test_landmark_file_missing_keys_are_named(tmp_path, rng):
    path = tmp_path / "partial.mat"
    write_landmark_mat(path, rng, [[1.0, 1.0]], [[1.0, 1.0]], drop=("LMfix", "I_fix"))
    assert_data_error(
        read_landmark_mat, path, names=["partial.mat"], match=r"missing key\(s\) I_fix, LMfix \("
    )


def test_bad_landmark_files(tmp_path, rng):
    path = tmp_path / "shape.mat"
    write_landmark_mat(path, rng, [[1.0, 2.0, 3.0]], [[1.0, 1.0]])
    assert_data_error(
        read_landmark_mat, path, names=["shape.mat", "LMmove"], match="expected N x 2"
    )
    path = tmp_path / "count.mat"
    write_landmark_mat(path, rng, [[1.0, 2.0], [3.0, 4.0]], [[1.0, 1.0]])
    assert_data_error(
        read_landmark_mat, path, names=["count.mat"], match="2 landmarks but LMfix has 1"
    )
    path = tmp_path / "empty.mat"
    write_landmark_mat(path, rng, np.zeros((0, 2)), np.zeros((0, 2)))
    assert_data_error(read_landmark_mat, path, names=["empty.mat", "LMmove"], match="no landmarks")
    path = tmp_path / "garbage.mat"
    path.write_text("not a MATLAB file")
    assert_data_error(read_landmark_mat, path, names=["garbage.mat"], match="cannot be read")


def test_pair_checks_its_arrays():
    grey = np.zeros((HEIGHT, WIDTH, 1), np.float32)
    with pytest.raises(DataError, match="'p': sizes differ"):
        Pair("p", np.zeros((HEIGHT, WIDTH + 1, 3), np.float32), grey)
    with pytest.raises(DataError, match="NIR has shape"):
        Pair("p", grey, np.zeros((HEIGHT, WIDTH, 3), np.float32))
    with pytest.raises(DataError, match="VIS has shape"):
        Pair("p", np.zeros((HEIGHT, WIDTH), np.float32), grey)
    with pytest.raises(DataError, match="one image only"):
        Pair("p", grey, grey, vis_points=np.zeros((2, 2)))
    with pytest.raises(DataError, match="expected two"):
        Pair("p", grey, grey, vis_points=np.zeros((2, 2)), nir_points=np.zeros((3, 2)))
    assert Pair(
        "p", grey, grey, vis_points=np.zeros((2, 2)), nir_points=np.ones((2, 2))
    ).has_landmarks
