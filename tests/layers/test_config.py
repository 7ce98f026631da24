"""ConfigFromArguments: get_config from the stored constructor arguments, checked against
the arguments given and against every using class's constructor signature."""

from __future__ import annotations

import inspect

import keras
import numpy as np
import pytest

import rfnet_tf.networks  # noqa: F401  (defines the networks' classes that use the mixin)
from layers.config import ConfigFromArguments


class Probe(ConfigFromArguments, keras.layers.Layer):
    CONFIG_ARGUMENTS = ("count", "sizes", "window", "initializer")

    def __init__(self, count: int, sizes=(1, 2), window: int | None = None,
                 initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        self.count = count
        self.sizes = tuple(sizes)
        self.window = window
        self.initializer = keras.initializers.get(initializer)


def test_config_holds_the_arguments_and_rebuilds_an_equal_layer():
    initializer = keras.initializers.Constant(0.25)
    layer = Probe(3, sizes=(4, 5), window=None, initializer=initializer, name="probe")
    config = layer.get_config()
    assert config["name"] == "probe" and "trainable" in config and "dtype" in config
    assert (config["count"], config["sizes"], config["window"]) == (3, (4, 5), None)
    clone = Probe.from_config(config)
    assert (clone.count, clone.sizes, clone.window, clone.name) == (3, (4, 5), None, "probe")
    # The initializer travels as its serialised form and comes back as the same initializer.
    assert isinstance(config["initializer"], dict)
    assert type(clone.initializer) is keras.initializers.Constant
    np.testing.assert_array_equal(clone.initializer((2,)), initializer((2,)))
    assert clone.get_config() == config


def _users(cls=ConfigFromArguments) -> list[type]:
    found = []
    for subclass in cls.__subclasses__():
        found += [subclass, *_users(subclass)]
    return found


@pytest.mark.parametrize(
    "cls", [cls for cls in _users() if cls is not Probe], ids=lambda cls: cls.__name__
)
def test_every_user_lists_exactly_its_constructor_arguments(cls):
    parameters = inspect.signature(cls.__init__).parameters.values()
    named = {
        parameter.name
        for parameter in parameters
        if parameter.name != "self"
        and parameter.kind not in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL)
    }
    assert set(cls.CONFIG_ARGUMENTS) == named
    assert len(cls.CONFIG_ARGUMENTS) == len(named)


def test_the_project_classes_use_it():
    names = {cls.__name__ for cls in _users()}
    assert {"PaddedConv2D", "ResidualBlock", "DeformableConv2D", "GradientChannelAttention",
            "SpatialTransformer", "ConvNormAct", "UNetLevel", "DeformationBlock", "F2M",
            "RFNet", "CorrelationBlock"} <= names
