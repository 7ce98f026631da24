"""The shared training flags' readers: a layout that is no training data is refused."""

from __future__ import annotations

import types

import pytest

from rfnet_tf.training.common_flags import FlagError, read_training_pairs, read_validation_pairs


def flag_values(**values):
    defaults = dict(layout="auto", vis_dir="vis", nir_dir="nir", skip_bad=False, exclude=[],
                    validation_data_dir="", validation_pairs=[])
    return types.SimpleNamespace(**{**defaults, **values})


@pytest.mark.parametrize("layout", ["auto", "known_affine"])
def test_training_refuses_the_known_affine_layout_by_name(known_affine_dir, layout):
    with pytest.raises(FlagError, match=f"--data_dir {known_affine_dir}: layout 'known_affine'"):
        read_training_pairs(flag_values(data_dir=str(known_affine_dir), layout=layout))


def test_validation_refuses_the_known_affine_layout(known_affine_dir):
    values = flag_values(validation_data_dir=str(known_affine_dir))
    with pytest.raises(FlagError, match="--validation_data_dir .*'known_affine'"):
        read_validation_pairs(values, [])


def test_the_nirscene_layout_of_the_same_images_is_read(known_affine_dir):
    pairs = read_training_pairs(flag_values(data_dir=str(known_affine_dir), layout="nirscene"))
    assert len(pairs) == 3 and pairs[0].known_affine is None
