"""The RFNet networks: TransNet, AffineNet, F2M and their composition RFNet."""

from rfnet_tf.networks.affinenet import AffineNet
from rfnet_tf.networks.f2m import F2M
from rfnet_tf.networks.rfnet import RFNet
from rfnet_tf.networks.transnet import TransNet

__all__ = ["AffineNet", "F2M", "RFNet", "TransNet"]
