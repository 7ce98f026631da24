"""Evaluation of RFNet and its baselines (paper Tables 1 and 2): the logic of evaluate.py.

* :mod:`~rfnet_tf.evaluation.sources`: what is evaluated (a real pair, landmark files,
  a folder under a synthetic misalignment, the simulated demo set).
* :mod:`~rfnet_tf.evaluation.inference`: RFNet from a weights directory or a SavedModel.
* :mod:`~rfnet_tf.evaluation.methods`: the registration and fusion methods and their
  per-pair metrics.
* :mod:`~rfnet_tf.evaluation.report`: mean ± std over pairs, tables, results.json / .md.
* :mod:`~rfnet_tf.evaluation.outputs`: per-pair images and the all-or-nothing output
  directory.
* :mod:`~rfnet_tf.evaluation.pipeline`: which methods run, and the run itself.
* :mod:`~rfnet_tf.evaluation.command`: evaluate.py's flags to a finished run.
"""

from rfnet_tf.evaluation.command import (
    INPUT_ERRORS,
    Settings,
    default_weights_dir,
    execute,
    settings_from_flags,
)
from rfnet_tf.evaluation.inference import Predictor, WeightsInfo, inspect_weights, load_predictor
from rfnet_tf.evaluation.methods import FUSION_METHODS, METHODS, REGISTRATION_METHODS
from rfnet_tf.evaluation.pipeline import (
    EvaluationError,
    MethodPlan,
    Options,
    Report,
    plan_methods,
    run_evaluation,
)
from rfnet_tf.evaluation.sources import EvaluationSet, Sample

__all__ = [
    "EvaluationError",
    "EvaluationSet",
    "FUSION_METHODS",
    "INPUT_ERRORS",
    "METHODS",
    "MethodPlan",
    "Options",
    "Predictor",
    "REGISTRATION_METHODS",
    "Report",
    "Sample",
    "Settings",
    "WeightsInfo",
    "default_weights_dir",
    "execute",
    "inspect_weights",
    "load_predictor",
    "plan_methods",
    "run_evaluation",
    "settings_from_flags",
]
