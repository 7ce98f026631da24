"""Misalignment flags: defaults from the range classes, values to ranges, named errors."""

from __future__ import annotations

import pytest

from rfnet_tf import misalignment_flags
from rfnet_tf.data.synthetic import AffineRanges, Curriculum, LocalFieldRanges

AFFINE_VALUES = {"max_rotation": 5.0, "scale_range": ["0.9", "1.1"], "max_shear": 0.0,
                 "max_translation": 0.05}
LOCAL_VALUES = {"local_displacement": "1,3", "local_control_spacing": 32.0}


def test_flag_values_become_the_ranges_they_name():
    assert misalignment_flags.affine_ranges_from(AFFINE_VALUES) == AffineRanges(
        max_rotation_deg=5.0, scale_range=(0.9, 1.1), max_shear=0.0, max_translation=0.05
    )
    assert misalignment_flags.local_ranges_from(LOCAL_VALUES) == LocalFieldRanges(
        max_displacement_range=(1.0, 3.0), control_spacing=32.0
    )
    assert misalignment_flags.curriculum_from(
        {"curriculum_steps": 10, "curriculum_start": 0.5, "curriculum_first_step": 7}
    ) == Curriculum(10, 0.5, 7)


def test_the_flags_default_to_the_range_classes_defaults():
    from absl import flags

    values = flags.FlagValues()
    misalignment_flags.define_affine_flags(values)
    misalignment_flags.define_local_flags(values)
    misalignment_flags.define_curriculum_flags(values)
    values(["test"])
    given = {name: values[name].value for name in values}
    assert misalignment_flags.affine_ranges_from(given) == AffineRanges()
    assert misalignment_flags.local_ranges_from(given) == LocalFieldRanges()
    assert misalignment_flags.curriculum_from(given) == Curriculum()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"scale_range": "1.2,0.9"}, "--scale_range=1.2,0.9"),
        ({"scale_range": "1.2"}, "--scale_range takes two numbers"),
        ({"max_translation": 0.9}, "--max_translation=0.9"),
    ],
)
def test_a_value_that_cannot_work_names_its_flag(change, message):
    with pytest.raises(ValueError, match=message):
        misalignment_flags.affine_ranges_from({**AFFINE_VALUES, **change})


def test_a_bad_local_range_names_its_flag():
    with pytest.raises(ValueError, match="--local_displacement=5,1"):
        misalignment_flags.local_ranges_from({**LOCAL_VALUES, "local_displacement": "5,1"})
