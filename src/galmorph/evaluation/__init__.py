"""Model evaluation: the papers' metrics, chirality diagnostics, explanations, physical properties,
HTML reports logged to MLflow. See docs/evaluation.md."""

from galmorph.evaluation.chirality import (chirality_violation, cvs_summary, cvs_sweep, mirror_test, overlap_index,
                                           rotation_stability)
from galmorph.evaluation.core import EvaluationOptions, EvaluationResult, evaluate, evaluate_trials, log_evaluation
from galmorph.evaluation.metrics import (aggregate_trials, classification_metrics, flatten_metrics,
                                         redshift_bin_metrics, threshold_metrics)

__all__ = [
    "EvaluationOptions", "EvaluationResult", "evaluate", "evaluate_trials", "log_evaluation", "aggregate_trials",
    "classification_metrics", "flatten_metrics", "redshift_bin_metrics", "threshold_metrics", "chirality_violation",
    "cvs_summary", "cvs_sweep", "mirror_test", "overlap_index", "rotation_stability",
]
