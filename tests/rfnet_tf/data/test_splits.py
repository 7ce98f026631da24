"""Splits: named subsets of the shared data and the selection of pairs by name."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from rfnet_tf import baselines
from rfnet_tf.colour import luma
from rfnet_tf.data import DataError, Pair, read_dataset
from rfnet_tf.data.splits import (
    COUNTRY_NOT_ALIGNED,
    COUNTRY_VALIDATION,
    NOT_ALIGNED_CORNER_PX,
    SPLITS,
    expand_names,
    select_pairs,
)
from rfnet_tf.metrics.registration import affine_to_pixel_matrix


def pairs_named(*names):
    image = np.zeros((4, 4, 1), np.float32)
    return [Pair(name=name, vis=image, nir=image) for name in names]


def test_split_names_stand_for_their_pairs_in_order_without_repeats():
    assert expand_names(["x", "country_validation", "country/0003"]) == ("x", *COUNTRY_VALIDATION)
    assert expand_names([]) == ()


def test_select_pairs_keeps_the_input_order_of_the_named_pairs_minus_the_excluded():
    pairs = pairs_named("c", "a", "b", "d")
    chosen = select_pairs(pairs, only=["b", "a", "c"], exclude=["c"])
    assert [pair.name for pair in chosen] == ["a", "b"]
    assert [pair.name for pair in select_pairs(pairs, exclude=["d"])] == ["c", "a", "b"]


def test_select_pairs_names_the_flag_of_an_unknown_name_and_refuses_an_empty_result():
    pairs = pairs_named("a", "b")
    with pytest.raises(DataError, match=r"DIR: holds no pair named z \(--pairs\)"):
        select_pairs(pairs, only=["a", "z"], where="DIR")
    with pytest.raises(DataError, match=r"holds no pair named country/0003.*\(--exclude\)"):
        select_pairs(pairs, exclude=["country_validation"])
    with pytest.raises(DataError, match="no pair left"):
        select_pairs(pairs, exclude=["a", "b"])


def test_the_country_splits_are_pairs_of_the_shared_country_data_and_disjoint(shared_dir):
    held = {pair.name for pair in read_dataset(shared_dir / "data" / "rgbnir_country")}
    assert set(COUNTRY_VALIDATION) <= held and set(COUNTRY_NOT_ALIGNED) <= held
    assert not set(COUNTRY_VALIDATION) & set(COUNTRY_NOT_ALIGNED)
    assert len(held) - len(COUNTRY_VALIDATION) - len(COUNTRY_NOT_ALIGNED) == 33
    assert set(SPLITS["vis_nir_not_aligned"]) <= {
        pair.name for pair in read_dataset(shared_dir / "data" / "vis_nir")
    }


def largest_corner_shift(theta: np.ndarray, shape) -> float:
    """Pixels by which the backward affine ``theta`` moves the farthest image corner."""
    height, width = shape
    corners = np.array([[0, 0, 1], [width - 1, 0, 1], [0, height - 1, 1], [width - 1, height - 1, 1]], float)
    moved = corners @ affine_to_pixel_matrix(theta, shape, shape).T
    return float(np.max(np.linalg.norm(moved - corners[:, :2], axis=1)))


def test_the_not_aligned_country_pairs_are_those_ecc_and_sift_both_find_off(shared_dir):
    """The rule of NOT_ALIGNED_CORNER_PX, measured on every Country pair outside the
    validation split: ECC on gradient magnitudes and SIFT, each registering the VIS onto
    the NIR, both move a corner further than the threshold exactly on the flagged pairs."""
    measured = {}
    for pair in read_dataset(shared_dir / "data" / "rgbnir_country"):
        if pair.name in COUNTRY_VALIDATION:
            continue
        vis = 255.0 * luma(tf.constant(pair.vis[None])).numpy()[0, ..., 0]
        nir = 255.0 * pair.nir[..., 0]
        shifts = []
        for result in (baselines.ecc_affine(vis, nir, representation="gradient"), baselines.sift_affine(vis, nir)):
            shifts.append(0.0 if result.failed else largest_corner_shift(result.theta, nir.shape))
        measured[pair.name] = min(shifts)
    flagged = sorted(name for name, shift in measured.items() if shift > NOT_ALIGNED_CORNER_PX)
    assert flagged == sorted(COUNTRY_NOT_ALIGNED), {name: round(shift, 1) for name, shift in measured.items()}
