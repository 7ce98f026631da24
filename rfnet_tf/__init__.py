"""rfnet-tf: RFNet (Xu et al., CVPR 2022) in TensorFlow 2 / Keras 3."""

from rfnet_tf.networks import F2M, AffineNet, RFNet, TransNet

__all__ = ["AffineNet", "F2M", "RFNet", "TransNet"]
