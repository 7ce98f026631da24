"""Checks every custom layer must pass, shared by the modules of tests/layers.

A layer is exercised through a list of input arrays (one array for single-input
layers) and the matching ``tf.TensorSpec`` list whose batch and spatial dimensions are
``None``. Outputs are compared as lists (a single tensor becomes a one-element list).
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf


def _call(layer, inputs):
    """Calls ``layer`` on one input or a list of them; returns a list of numpy outputs."""
    tensors = [tf.convert_to_tensor(a) for a in inputs]
    outputs = layer(tensors[0] if len(tensors) == 1 else tensors)
    if not isinstance(outputs, (list, tuple)):
        outputs = [outputs]
    return [np.asarray(o) for o in outputs]


def _assert_all_close(actual, expected, atol):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert a.shape == e.shape
        np.testing.assert_allclose(a, e, atol=atol, rtol=0)


class LayerChecks:
    """Dynamic shapes in ``tf.function``, config round trip, ``.keras`` save and load."""

    def __init__(self, tmp_path: Path, rng: np.random.Generator):
        self.tmp_path = tmp_path
        self.rng = rng

    def randomize(self, layer, scale: float = 0.3) -> None:
        """Replaces every trainable weight by ``N(0, scale^2)`` so that no weight is
        at its (often zero or one) initial value and the checks see every branch."""
        for variable in layer.trainable_weights:
            values = self.rng.normal(0.0, scale, variable.shape).astype(variable.dtype)
            variable.assign(values)

    def dynamic_shapes(self, layer, specs, inputs_a, inputs_b, atol=1e-5):
        """Inside one ``tf.function`` with ``None`` dimensions, two calls at different
        sizes trace once and equal the eager outputs."""
        eager_a = _call(layer, inputs_a)
        eager_b = _call(layer, inputs_b)

        @tf.function(input_signature=list(specs))
        def run(*tensors):
            outputs = layer(tensors[0] if len(tensors) == 1 else list(tensors))
            return outputs if isinstance(outputs, (list, tuple)) else [outputs]

        graph_a = [np.asarray(o) for o in run(*inputs_a)]
        graph_b = [np.asarray(o) for o in run(*inputs_b)]
        assert run.experimental_get_tracing_count() == 1
        _assert_all_close(graph_a, eager_a, atol)
        _assert_all_close(graph_b, eager_b, atol)

    def config_roundtrip(self, layer, inputs, atol=1e-6):
        """``from_config(get_config())`` gives an equal config and, with the weights
        copied, the same outputs."""
        config = layer.get_config()
        clone = type(layer).from_config(config)
        assert clone.get_config() == config
        _call(clone, inputs)
        clone.set_weights(layer.get_weights())
        _assert_all_close(_call(clone, inputs), _call(layer, inputs), atol)

    def save_load(self, layer, specs, inputs, atol=1e-6):
        """A tiny model holding ``layer`` survives ``.keras`` save and load."""
        model_inputs = [keras.Input(shape=tuple(s.shape[1:]), dtype=s.dtype) for s in specs]
        outputs = layer(model_inputs[0] if len(model_inputs) == 1 else model_inputs)
        model = keras.Model(model_inputs, outputs)
        path = self.tmp_path / "model.keras"
        keras.saving.save_model(model, path)
        loaded = keras.saving.load_model(path)
        expected = _call(model, inputs)
        _assert_all_close(_call(loaded, inputs), expected, atol)
        _assert_all_close(_call(layer, inputs), expected, atol)


@pytest.fixture
def layer_checks(tmp_path, rng) -> LayerChecks:
    return LayerChecks(tmp_path, rng)
