"""Precise batch norm: the moving statistics equal numpy's mean of the batch statistics."""

import keras
import numpy as np
import pytest

from rfnet_tf.training.batch_norm import batch_norm_layers, recompute_batch_norm_statistics


def _model(seed: int = 0):
    keras.utils.set_random_seed(seed)
    dense = keras.layers.Dense(3, name="dense")
    first = keras.layers.BatchNormalization(name="first")
    second = keras.layers.BatchNormalization(momentum=0.9, name="second")
    model = keras.Sequential([keras.Input((4,)), dense, first, second])
    return model, dense, first, second


def _batches(count: int, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    # Different batches have different statistics, so a lagging average would show.
    return [rng.normal(loc=i, scale=1.0 + i, size=(5, 4)).astype(np.float32) for i in range(count)]


def test_statistics_are_the_mean_of_the_batch_statistics():
    model, dense, first, second = _model()
    batches = _batches(4)
    kernel, bias = (w.numpy() for w in dense.weights)
    gamma, beta = first.gamma.numpy(), first.beta.numpy()
    means, variances, second_means, second_variances = [], [], [], []
    for batch in batches:
        h = batch @ kernel + bias
        means.append(h.mean(axis=0))
        variances.append(h.var(axis=0))
        # The second layer sees the first normalised with the batch's own statistics.
        g = gamma * (h - h.mean(axis=0)) / np.sqrt(h.var(axis=0) + first.epsilon) + beta
        second_means.append(g.mean(axis=0))
        second_variances.append(g.var(axis=0))

    used = recompute_batch_norm_statistics(
        lambda batch: model(batch, training=True), batches, batch_norm_layers(model)
    )

    assert used == 4
    np.testing.assert_allclose(first.moving_mean.numpy(), np.mean(means, axis=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(first.moving_variance.numpy(), np.mean(variances, axis=0), rtol=1e-5)
    np.testing.assert_allclose(second.moving_mean.numpy(), np.mean(second_means, axis=0), atol=1e-5)
    np.testing.assert_allclose(
        second.moving_variance.numpy(), np.mean(second_variances, axis=0), rtol=1e-4
    )
    assert (first.momentum, second.momentum) == (0.99, 0.9)


def test_a_frozen_layer_and_every_weight_keep_their_values():
    model, dense, first, second = _model()
    # A frozen Keras 3 batch norm runs in inference mode even under training=True, as
    # F2M's fusion layers do while the deformation block's statistics are recomputed.
    second.trainable = False
    before = {v.path: v.numpy().copy() for v in model.weights}

    recompute_batch_norm_statistics(lambda batch: model(batch, training=True), _batches(3), [first])

    changed = {id(v) for v in model.weights if not np.array_equal(v.numpy(), before[v.path])}
    assert changed == {id(first.moving_mean), id(first.moving_variance)}


def test_no_batches_leaves_the_statistics():
    model, _, first, _ = _model()
    mean = first.moving_mean.numpy().copy()
    used = recompute_batch_norm_statistics(lambda batch: model(batch, training=True), [], [first])
    assert used == 0
    np.testing.assert_array_equal(first.moving_mean.numpy(), mean)


def test_momentum_is_restored_when_the_forward_pass_fails():
    model, _, first, _ = _model()

    def failing(batch):
        raise RuntimeError("broken batch")

    with pytest.raises(RuntimeError, match="broken batch"):
        recompute_batch_norm_statistics(failing, _batches(2), [first])
    assert first.momentum == 0.99


def test_finds_the_nested_layers_of_the_deformation_block():
    from rfnet_tf.networks.f2m import DeformationBlock

    block = DeformationBlock(10.0)
    block.build((None, None, None, 32))
    levels = block.down_levels + block.up_levels
    assert [id(layer) for layer in batch_norm_layers(block)] == [id(level.norm) for level in levels]
