"""Drift thresholds and options (the ``drift:`` section of ``params.yaml``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

#: Verdicts of one group / of a whole run.
DRIFT = "drift"
NO_DRIFT = "no_drift"
INSUFFICIENT = "insufficient_data"


@dataclass
class DriftConfig:
    """How drift is tested and when a group is declared drifted.

    A group's verdict is ``drift`` when the share of drifted feature columns reaches
    ``drift_share`` or (when set) at least ``max_drifted_columns`` columns drifted, or, with
    ``alert_on_prediction_drift``, when the predicted-class distribution drifted. Each column is
    tested by Evidently's per-column test (``num_method`` / ``cat_method``; default: K-S for
    numerical columns up to 1000 rows, Wasserstein distance above; chi-square for categorical) at
    ``stattest_threshold`` (default: the method's own, 0.05 for p-values, 0.1 for distances).
    Groups with fewer than ``min_group_size`` current rows get ``insufficient_data``; a group
    whose reference has fewer rows than that is compared with the whole reference.
    """

    drift_share: float = 0.5
    max_drifted_columns: int | None = None
    stattest_threshold: float | None = None
    num_method: str | None = None
    cat_method: str | None = None
    min_group_size: int = 30
    by: tuple[str, ...] = ("z_bin", "survey")
    high_confidence: float = 0.85
    alert_on_prediction_drift: bool = False
    exit_code_drift: int = 3
    project: str = "galmorph-drift"
    columns: list[str] | None = None
    exclude_columns: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not 0 < self.drift_share <= 1:
            raise ValueError(f"drift.drift_share must be in (0, 1], got {self.drift_share}")
        if self.max_drifted_columns is not None and self.max_drifted_columns < 1:
            raise ValueError(f"drift.max_drifted_columns must be >= 1 or null, got {self.max_drifted_columns}")
        if self.min_group_size < 2:
            raise ValueError(f"drift.min_group_size must be >= 2, got {self.min_group_size}")
        if not 0 < self.high_confidence < 1:
            raise ValueError(f"drift.high_confidence must be in (0, 1), got {self.high_confidence}")
        if isinstance(self.by, str):
            self.by = tuple(b.strip() for b in self.by.split(",") if b.strip())
        self.by = tuple(self.by)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["by"] = list(self.by)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, **overrides: Any) -> "DriftConfig":
        d = dict(d or {})
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown drift option(s) {unknown}; known: {sorted(names)}")
        d.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**d)

    @classmethod
    def from_params(cls, path: str | Path | None, **overrides: Any) -> "DriftConfig":
        """Read the ``drift:`` section of a params file (missing file or section: defaults)."""
        import yaml

        section: dict = {}
        if path is not None and Path(path).exists():
            with open(path) as f:
                section = (yaml.safe_load(f) or {}).get("drift") or {}
        return cls.from_dict(section, **overrides)
