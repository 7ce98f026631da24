"""Self-check until evaluation is built: builds each custom layer and prints its output shape."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf
from absl import app

import layers


def main(argv):
    del argv
    images = tf.random.uniform((2, 64, 96, 8), seed=0)
    identity = tf.tile(tf.constant([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]]), [2, 1, 1])
    checks = {
        "SpatialTransformer (affine)": layers.SpatialTransformer()([images, identity]),
        "SpatialTransformer (flow)": layers.SpatialTransformer()(
            [images, tf.zeros((2, 64, 96, 2))]
        ),
        "DeformableConv2D(16, 3)": layers.DeformableConv2D(16, 3)(images),
        "GradientChannelAttention(8)": layers.GradientChannelAttention(8)([images, images]),
    }
    for name, outputs in checks.items():
        outputs = outputs if isinstance(outputs, list) else [outputs]
        print(f"{name:32s} -> {', '.join(str(tuple(o.shape)) for o in outputs)}")


if __name__ == "__main__":
    app.run(main)
