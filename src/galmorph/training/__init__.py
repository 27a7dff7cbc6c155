"""Training of the three tasks (Lightning + MLflow).

Public API: :func:`train` -> :class:`TrainResult`, :func:`resolve_config`, :data:`PRESETS`,
:class:`TrainConfig`. Heavy libraries (torch, lightning, mlflow) are imported inside the functions.
"""

from galmorph.training.config import PRESETS, ConfigError, TrainConfig, parse_set_items, resolve_config
from galmorph.training.runner import TrainResult, train

__all__ = ["PRESETS", "ConfigError", "TrainConfig", "TrainResult", "parse_set_items", "resolve_config", "train"]
