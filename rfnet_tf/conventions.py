"""Numerical conventions shared by the TensorFlow layers and the numpy metrics.

Kept free of TensorFlow, so that the numpy-only parts (``rfnet_tf.metrics``) can
import them; ``layers.resampler``, ``rfnet_tf.training.stages`` and
``rfnet_tf.evaluation.methods`` import them too.
"""

# A sample point counts as inside the image if it lies within this many pixels of
# [0, H-1] x [0, W-1]: coordinates that went through the normalised affine convention
# and back carry round-off of order 1e-6 px, which must not mark the image's own
# border pixels invalid.
MASK_TOLERANCE_PX = 1e-3

# A bilinearly warped binary (validity or content) mask is 1 only where all four
# corners were valid: a pixel counts as valid where the warped mask reaches this, so
# blends with the invalid border are excluded.
CONTENT_THRESHOLD = 0.999
