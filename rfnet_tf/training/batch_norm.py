"""Batch-norm moving statistics recomputed with the final weights ("precise BN").

During training a ``BatchNormalization`` layer normalises with each batch's own
statistics and keeps an exponential moving average (momentum 0.99) for inference. While
the weights before it still change, that average mixes the statistics of many past
weights, so the inference-mode network is not the one that was trained: on a toy flow
F2M's deformation block learned to 0.48 px in training mode and scored 1.4-3.0 px in
inference mode, 0.36 px once its statistics were recomputed (weights/README.md, issue
17). Recomputing them with the current weights, as the mean of the batch statistics over
a few training batches, removes the lag (Wu & Johnson, "Rethinking 'Batch' in
BatchNorm", 2021, section 3).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import keras


def batch_norm_layers(layer: keras.layers.Layer) -> list[keras.layers.BatchNormalization]:
    """Every ``BatchNormalization`` inside ``layer`` (itself included), in build order."""
    return [sub for sub in layer._flatten_layers() if isinstance(sub, keras.layers.BatchNormalization)]


def recompute_batch_norm_statistics(
    forward: Callable[[object], object],
    batches: Iterable,
    layers: Sequence[keras.layers.BatchNormalization],
) -> int:
    """Sets the moving mean and variance of ``layers`` to the mean, over ``batches``, of
    the statistics each batch gives them with the current weights.

    ``forward(batch)`` must run the model in training mode (batch statistics) with
    ``layers`` trainable; it runs eagerly once per batch. Batch ``i`` (from 0) is folded in
    with momentum ``i / (i + 1)``, which makes the moving values the running mean of the
    batch means and (biased) batch variances exactly. Every layer's momentum is restored
    afterwards. A forward pass changes no weight, only the moving statistics of the
    batch-norm layers it runs in training mode: any such layer left out of ``layers``
    moves by its own momentum, so freeze it (a frozen Keras 3 batch norm runs in
    inference mode).

    Returns:
      The number of batches used (the statistics are unchanged if 0).
    """
    momenta = [layer.momentum for layer in layers]
    count = 0
    try:
        for count, batch in enumerate(batches, start=1):
            for layer in layers:
                layer.momentum = (count - 1) / count
            forward(batch)
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    return count
