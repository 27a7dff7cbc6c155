"""Drift monitoring: drift features, Evidently reports per redshift bin and survey, dashboards.

Public API::

    from galmorph.drift import compute_drift_features, run_drift, DriftConfig, DriftResult
"""

from galmorph.drift.config import DRIFT, INSUFFICIENT, NO_DRIFT, DriftConfig
from galmorph.drift.features import DriftFeatures, compute_drift_features, embedding_pca_features, image_features
from galmorph.drift.report import DriftInputError, DriftResult, GroupVerdict, load_drift_set, run_drift

__all__ = [
    "DRIFT", "NO_DRIFT", "INSUFFICIENT", "DriftConfig", "DriftFeatures", "DriftInputError", "DriftResult",
    "GroupVerdict", "compute_drift_features", "embedding_pca_features", "image_features", "load_drift_set",
    "run_drift",
]
