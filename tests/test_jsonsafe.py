"""Strict JSON helpers shared by reports, audit logs, summaries and quarantine rows."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from galmorph.jsonsafe import finite_json, json_default


def test_round_trip_is_strict_json():
    obj = {1: [float("nan"), np.float32("inf"), 0.5, (np.float64(2.0), None)], "n": np.int64(3),
           "flag": np.bool_(True), "arr": np.array([1.0, np.nan]), "path": Path("/a/b"), "na": pd.NA,
           "when": pd.Timestamp("2026-01-02"), "s": "x"}
    text = json.dumps(finite_json(obj), default=json_default, allow_nan=False)
    back = json.loads(text)
    assert back == {"1": [None, None, 0.5, [2.0, None]], "n": 3, "flag": True, "arr": [1.0, None],
                    "path": "/a/b", "na": None, "when": "2026-01-02 00:00:00", "s": "x"}


def test_finite_values_unchanged():
    assert finite_json({"a": [1, 2.5, "x"]}) == {"a": [1, 2.5, "x"]}
    assert json_default(np.float32(1.5)) == 1.5 and json_default(np.float32("nan")) is None
    assert finite_json([float("nan"), -math.inf]) == [None, None]
