"""``get_config`` of the project's Keras layers and models, from their stored arguments."""

from __future__ import annotations

import keras


class ConfigFromArguments:
    """Mixin for a Keras layer or model whose constructor stores each argument under its
    own name: ``get_config()`` is the Keras base config plus those attributes.

    A class lists its constructor arguments (all but ``**kwargs``) in
    ``CONFIG_ARGUMENTS`` and names the mixin before its Keras base class. Each value goes
    through ``keras.saving.serialize_keras_object`` (numbers, strings, ``None`` and tuples
    unchanged; e.g. an initializer object to its config), so Keras' default
    ``from_config``, ``cls(**config)``, rebuilds an equal object.
    """

    CONFIG_ARGUMENTS: tuple[str, ...] = ()

    def get_config(self) -> dict:
        config = super().get_config()
        for name in self.CONFIG_ARGUMENTS:
            config[name] = keras.saving.serialize_keras_object(getattr(self, name))
        return config
