"""Strict JSON from what the platform writes: reports, audit logs, summaries, quarantine rows.

``json.dumps`` writes NaN/inf as the non-standard tokens ``NaN``/``Infinity`` and fails on numpy
scalars, paths and ``pd.NA``. :func:`finite_json` cleans a nested structure (non-finite floats ->
None) and :func:`json_default` is the ``default=`` hook for everything else, so that

    json.dumps(finite_json(obj), default=json_default)

always gives strict JSON that any consumer (browsers, MLflow, jq) reads.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def finite_json(o: Any) -> Any:
    """Recursively: dict keys to str, tuples to lists, non-finite floats (Python or numpy) to None."""
    if isinstance(o, dict):
        return {str(k): finite_json(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [finite_json(v) for v in o]
    if isinstance(o, (float, np.floating)):
        return float(o) if math.isfinite(float(o)) else None
    return o


def json_default(o: Any) -> Any:
    """``json.dumps(default=...)`` hook: numpy scalars and arrays, paths, ``pd.NA``; else ``str(o)``."""
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o) if math.isfinite(float(o)) else None
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, np.ndarray):
        return finite_json(o.tolist())
    if isinstance(o, Path):
        return str(o)
    if o is pd.NA:
        return None
    return str(o)
