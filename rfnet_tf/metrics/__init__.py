"""Evaluation metrics (numpy): registration (paper Table 1) and fusion (paper Table 2)."""

from rfnet_tf.metrics.fusion import fusion_metrics
from rfnet_tf.metrics.registration import (
    landmark_errors,
    landmark_summary,
    map_fixed_to_moving,
    map_moving_to_fixed,
    sampling_coordinates,
    warp_image,
)

__all__ = [
    "fusion_metrics",
    "landmark_errors",
    "landmark_summary",
    "map_fixed_to_moving",
    "map_moving_to_fixed",
    "sampling_coordinates",
    "warp_image",
]
