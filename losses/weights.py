"""The weights of RFNet's losses: the one place their defaults (the paper's) are set.

The composite losses (``transnet_loss``, ``fusion_loss``, ``deformation_loss``) take one
:class:`LossWeights`, :data:`PAPER` by default, and the single terms that carry a
weight (``content_loss``, ``bilateral_smoothness``) their keyword defaults from
:data:`PAPER`; the training stages pass their :class:`LossWeights` on, and the training
scripts' flags take their defaults from the same values, so a default changes here
alone.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class LossWeights:
    """Weights and coefficients of the losses (paper Sec. 4 defaults).

    Attributes:
      eta: weight of the translation term of TransNet's loss, Eq. 2.
      gamma: weight of the NIR intensity term, Eq. 7 (in ``[0.5, 1]``).
      delta: weight of the gradient term of the fusion loss, Eq. 6.
      lambda_smooth: weight of the smoothness term, Eq. 9 (on the field in normalised
        units, ``losses.deformation``).
      alpha: edge sensitivity of the bilateral smoothness, Eq. 10 (intensities on
        ``[0, 1]``).
    """

    eta: float = 2.0
    gamma: float = 0.7
    delta: float = 100.0
    lambda_smooth: float = 0.1
    alpha: float = 0.5


PAPER = LossWeights()
