"""The stage-to-stage flags: one helper finds an earlier stage's weights from the
stage's directory, its weights directory or the model directory holding it."""

from __future__ import annotations

import pytest

from rfnet_tf.networks import RFNet
from rfnet_tf.training.common_flags import FlagError
from rfnet_tf.training.settings import stage_weights
from rfnet_tf.weights import EXPORT_SUBDIR, export_weights


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """``<model_dir>/transnet/export``: a TransNet stage's export, as training leaves it."""
    root = tmp_path_factory.mktemp("coarse")
    export_weights(RFNet(affine_input_size=32), root / "transnet" / EXPORT_SUBDIR, ("transnet",), {})
    return root


@pytest.mark.parametrize("given", ["model", "stage", "weights"])
def test_the_stage_model_and_weights_directories_name_the_same_weights(model_dir, given):
    path = {"model": model_dir, "stage": model_dir / "transnet",
            "weights": model_dir / "transnet" / EXPORT_SUBDIR}[given]
    found = stage_weights(path, "transnet", ("transnet",), "--transnet_dir")
    assert found == model_dir / "transnet" / EXPORT_SUBDIR


def test_missing_weights_or_parts_are_named(model_dir, tmp_path):
    with pytest.raises(FlagError, match=r"--fusion_dir .*: no RFNet weights here nor in .*fusion"):
        stage_weights(tmp_path, "fusion", ("f2m",), "--fusion_dir")
    with pytest.raises(FlagError, match=r"--coarse_dir .*holds \['transnet'\], needs \['affinenet'\]"):
        stage_weights(model_dir, "transnet", ("transnet", "affinenet"), "--coarse_dir")
