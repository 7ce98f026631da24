"""Splits: named subsets of the shared data and the selection of pairs by name."""

from __future__ import annotations

import numpy as np
import pytest

from rfnet_tf.data import DataError, Pair, read_dataset
from rfnet_tf.data.splits import (
    COUNTRY_NOT_ALIGNED,
    COUNTRY_VALIDATION,
    SPLITS,
    expand_names,
    select_pairs,
)


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
    assert len(held) - len(COUNTRY_VALIDATION) - len(COUNTRY_NOT_ALIGNED) == 39
    assert set(SPLITS["vis_nir_not_aligned"]) <= {
        pair.name for pair in read_dataset(shared_dir / "data" / "vis_nir")
    }
