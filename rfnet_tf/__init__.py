"""rfnet-tf: RFNet (Xu et al., CVPR 2022) in TensorFlow 2 / Keras 3.

The networks load on first use (``rfnet_tf.RFNet``), so that numpy-only parts (metrics,
visualisation, the scripts' start-up) do not import TensorFlow.
"""

__all__ = ["AffineNet", "F2M", "RFNet", "TransNet"]


def __getattr__(name: str):
    if name in __all__:
        from rfnet_tf import networks

        return getattr(networks, name)
    raise AttributeError(f"module 'rfnet_tf' has no attribute {name!r}")
