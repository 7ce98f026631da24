"""rfnet_tf.training.scripts: what the training scripts do beyond the loop."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from rfnet_tf.networks import RFNet
from rfnet_tf.training.scripts import _load_fusion_weights
from rfnet_tf.weights import export_weights


def test_the_deformation_phase_loads_the_fusion_weights_and_keeps_its_block_as_initialised(tmp_path):
    """Weights whose deformation block was trained (a non-zero flow head) load their
    fusion variables; the block keeps the values it was built with, so its flow is 0."""
    tf.keras.utils.set_random_seed(1)
    trained = RFNet(affine_input_size=32)
    for variable in trained.f2m.weights:
        variable.assign(variable + tf.random.uniform(variable.shape, 0.01, 0.02))
    export_weights(trained, tmp_path, ("f2m",))

    fresh = RFNet(affine_input_size=32)
    initial = [variable.numpy() for variable in fresh.f2m.deformation_block.weights]
    _load_fusion_weights(fresh, tmp_path)

    for variable, value in zip(fresh.f2m.deformation_block.weights, initial):
        np.testing.assert_array_equal(variable.numpy(), value)
    assert len(fresh.f2m.fusion_variables) == len(trained.f2m.fusion_variables) > 0
    for source, target in zip(trained.f2m.fusion_variables, fresh.f2m.fusion_variables):
        np.testing.assert_array_equal(target.numpy(), source.numpy())
    images = [tf.random.uniform((1, 24, 24, 1)) for _ in range(2)]
    assert float(tf.reduce_max(tf.abs(trained.f2m(images)["flow"]))) > 0
    np.testing.assert_array_equal(fresh.f2m(images)["flow"].numpy(), 0.0)


def test_the_fusion_weights_load_under_a_correlation_block(tmp_path):
    """The paper's fusion weights (stored with a U-Net block) start a correlation block's
    phase 2: the fusion variables are the stored ones and the flow is 0."""
    tf.keras.utils.set_random_seed(2)
    trained = RFNet(affine_input_size=32)
    for variable in trained.f2m.weights:
        variable.assign(variable + tf.random.uniform(variable.shape, 0.01, 0.02))
    export_weights(trained, tmp_path, ("f2m",))

    fresh = RFNet(affine_input_size=32, deformation_block_type="correlation")
    _load_fusion_weights(fresh, tmp_path)

    for source, target in zip(trained.f2m.fusion_variables, fresh.f2m.fusion_variables, strict=True):
        np.testing.assert_array_equal(target.numpy(), source.numpy())
    images = [tf.random.uniform((1, 24, 24, 1)) for _ in range(2)]
    np.testing.assert_array_equal(fresh.f2m(images)["flow"].numpy(), 0.0)
    np.testing.assert_allclose(
        fresh.f2m(images, flow=tf.zeros((1, 24, 24, 2)))["fused"].numpy(),
        trained.f2m(images, flow=tf.zeros((1, 24, 24, 2)))["fused"].numpy(),
        atol=1e-6,
    )


def test_the_fusion_weights_load_beside_coarse_parts_of_another_head(tmp_path):
    """A weights directory with every part (the shipped ``weights/``: a matching-head
    AffineNet) starts phase 2 of a model built with the default pooled head: only F2M's
    fusion variables are taken from it."""
    tf.keras.utils.set_random_seed(3)
    shipped = RFNet(affine_input_size=32, affine_head="matching")
    for variable in shipped.f2m.fusion_variables:
        variable.assign(variable + 0.01)
    export_weights(shipped, tmp_path, ("transnet", "affinenet", "f2m"))

    fresh = RFNet(affine_input_size=32)
    affinenet = [variable.numpy() for variable in fresh.affinenet.weights]
    _load_fusion_weights(fresh, tmp_path)

    for source, target in zip(shipped.f2m.fusion_variables, fresh.f2m.fusion_variables, strict=True):
        np.testing.assert_array_equal(target.numpy(), source.numpy())
    for variable, value in zip(fresh.affinenet.weights, affinenet):
        np.testing.assert_array_equal(variable.numpy(), value)
