"""AffineNet: identity at initialisation, shapes, ablation switch, serialisation."""

import numpy as np
import pytest
import tensorflow as tf

from layers import DeformableConv2D
from rfnet_tf.networks.affinenet import AffineNet

IDENTITY = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], np.float32)


@pytest.mark.parametrize("batch,height,width", [(1, 50, 77), (3, 97, 131)])
def test_identity_at_initialisation(batch, height, width):
    model = AffineNet()
    affine = model(tf.random.uniform((batch, height, width, 2)), training=True)
    assert affine.shape == (batch, 2, 3)
    np.testing.assert_array_equal(affine.numpy(), np.broadcast_to(IDENTITY, (batch, 2, 3)))


def test_none_dimensions_in_tf_function():
    model = AffineNet()

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 2], tf.float32)])
    def predict(pair):
        return model(pair)

    for shape in [(1, 64, 64, 2), (2, 48, 80, 2)]:
        assert predict(tf.random.uniform(shape)).shape == (shape[0], 2, 3)


def test_deformable_switch():
    def count_deformable(model):
        return sum(isinstance(layer, DeformableConv2D) for layer in model._flatten_layers())

    deformable = AffineNet(deformable=True)
    plain = AffineNet(deformable=False)
    assert count_deformable(deformable) == 3
    assert count_deformable(plain) == 0
    offset_variables = [v for v in deformable.variable_group if "offset" in v.path]
    assert len(offset_variables) == 6


def test_head_moves_the_affine():
    """A non-zero head gives a non-identity affine: the output is not constant."""
    model = AffineNet()
    kernel = model.head.kernel
    kernel.assign(tf.random.normal(kernel.shape, stddev=0.1, seed=3))
    affine = model(tf.random.uniform((2, 64, 64, 2), seed=4))
    assert np.abs(affine.numpy() - IDENTITY).max() > 1e-4


def test_variable_group_and_summary(capsys):
    model = AffineNet()
    assert {id(v) for v in model.variable_group} == {id(v) for v in model.trainable_variables}
    model.summary()
    assert "affine_head" in capsys.readouterr().out


def test_config_round_trip():
    model = AffineNet(deformable=False, dropout=0.1)
    config = model.get_config()
    restored = AffineNet.from_config(config)
    assert restored.get_config() == config
    assert restored.deformable is False and restored.dropout_rate == 0.1
