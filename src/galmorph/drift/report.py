"""Drift between a reference set and a current set, overall and per group (redshift bin, survey).

:func:`run_drift` builds Evidently 0.7 reports (data-drift preset over the feature columns,
per-column value drift, prediction drift, predicted-class distribution and high-confidence
fraction), one for the whole current set and one per value of every group-by column, saves each
as HTML and JSON, optionally adds them as snapshots to an Evidently workspace project (tags:
release, model version, survey, z bin), writes a summary with one verdict per group and logs the
drift metrics to an MLflow run. Its :class:`DriftResult` says ``"drift"`` or ``"no_drift"``.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from galmorph.drift.config import DRIFT, INSUFFICIENT, NO_DRIFT, DriftConfig
from galmorph.drift.features import KEY_COLUMNS, compute_drift_features, feature_columns
from galmorph.evaluation.metrics import SLUG, clean_name
from galmorph.jsonsafe import json_default

log = logging.getLogger(__name__)

PREDICTION_COLUMNS_RE = re.compile(r"^(p_(?!pred$).+|pred|confidence)$")


class DriftInputError(ValueError):
    """A reference/current set cannot be used; the message names the set and the reason."""


@dataclass
class GroupVerdict:
    """Drift of one group (``group_by='overall'`` for the whole set)."""

    group_by: str
    group_value: str
    verdict: str
    n_reference: int
    n_current: int
    reference_scope: str = "group"  # "group" | "all" (reference group too small) | "none"
    n_columns: int = 0
    n_drifted: int = 0
    drift_share: float = float("nan")
    drifted_columns: list[str] = field(default_factory=list)
    skipped_columns: list[str] = field(default_factory=list)
    column_scores: dict[str, dict[str, Any]] = field(default_factory=dict)
    prediction_drift: bool | None = None
    high_confidence_fraction: float | None = None
    report_html: str | None = None
    report_json: str | None = None
    snapshot_id: str | None = None
    reason: str | None = None

    @property
    def key(self) -> str:
        return "overall" if self.group_by == "overall" else f"{self.group_by}={self.group_value}"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["key"] = self.key
        if isinstance(d["drift_share"], float) and math.isnan(d["drift_share"]):
            d["drift_share"] = None
        return d


@dataclass
class DriftResult:
    """Outcome of :func:`run_drift`: the overall ``verdict`` (``"drift"`` when any group drifted),
    the verdict of every group and the paths of what was written."""

    verdict: str
    per_group: dict[str, GroupVerdict]
    paths: dict[str, str]
    config: DriftConfig
    release: str | None = None
    model_version: str | None = None
    project_id: str | None = None
    feature_columns: list[str] = field(default_factory=list)
    prediction_columns: list[str] = field(default_factory=list)

    @property
    def drift(self) -> bool:
        return self.verdict == DRIFT

    @property
    def exit_code(self) -> int:
        return self.config.exit_code_drift if self.drift else 0

    def drifted_groups(self) -> list[str]:
        return [k for k, g in self.per_group.items() if g.verdict == DRIFT]

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "drifted_groups": self.drifted_groups(),
            "release": self.release,
            "model_version": self.model_version,
            "project_id": self.project_id,
            "thresholds": self.config.to_dict(),
            "feature_columns": self.feature_columns,
            "prediction_columns": self.prediction_columns,
            "groups": [g.to_dict() for g in self.per_group.values()],
            "paths": self.paths,
        }

    def table(self) -> str:
        """The per-group summary as a Markdown table."""
        head = ("| group | verdict | ref rows | cur rows | reference | drifted / columns | drift share "
                "| top drifted columns |")
        lines = [head, "|---|---|---|---|---|---|---|---|"]
        for g in self.per_group.values():
            share = "" if g.drift_share is None or (isinstance(g.drift_share, float) and math.isnan(g.drift_share)) \
                else f"{g.drift_share:.2f}"
            lines.append(f"| {g.key} | {g.verdict} | {g.n_reference} | {g.n_current} | {g.reference_scope} | "
                         f"{g.n_drifted} / {g.n_columns} | {share} | {', '.join(g.drifted_columns[:5])} |")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------
def load_drift_set(source: str | Path | pd.DataFrame, name: str, data_root: Path | str | None = None,
                   num_workers: int = 0, quarantine_path: str | Path | None = None,
                   progress: bool = True) -> pd.DataFrame:
    """A drift set as a features frame.

    ``source`` is a DataFrame or a Parquet/CSV file holding either drift features already (any
    image feature column, or ``galmorph.kind == drift_features``) or a manifest / scored table, in
    which case :func:`~galmorph.drift.features.compute_drift_features` computes them (rows whose
    image cannot be read are written to ``quarantine_path`` when given, and logged)."""
    from galmorph.drift.features import IMAGE_FEATURES

    if isinstance(source, pd.DataFrame):
        df = source.copy()
    else:
        path = Path(source)
        if not path.exists():
            raise DriftInputError(f"{name} set {path} does not exist")
        try:
            df = pd.read_csv(path) if path.suffix.lower() in (".csv", ".gz") and not path.name.endswith(
                ".parquet") else pd.read_parquet(path)
        except Exception as exc:  # noqa: BLE001 - reraised naming the file
            raise DriftInputError(f"{name} set {path} is not a readable Parquet/CSV table: {exc}") from exc
    if "object_id" not in df.columns:
        raise DriftInputError(f"{name} set has no 'object_id' column")
    if len(df) == 0:
        raise DriftInputError(f"{name} set has no rows")
    has_features = any(c in df.columns for c in IMAGE_FEATURES) or df.attrs.get("galmorph.kind") == "drift_features"
    if has_features:
        df = df.copy()
        df["object_id"] = df["object_id"].astype(str)
        for c in ("survey", "z_bin"):
            if c not in df.columns:
                if c == "z_bin" and "z" in df.columns:
                    from galmorph.catalogue.manifest import assign_z_bin

                    df[c] = assign_z_bin(pd.to_numeric(df["z"], errors="coerce")).to_numpy()
                else:
                    df[c] = "unknown"
            df[c] = df[c].astype("string").fillna("unknown")
        return df
    res = compute_drift_features(df, data_root=data_root, num_workers=num_workers, progress=progress)
    if len(res.quarantine):
        log.warning("%s set: %d row(s) quarantined while computing drift features (first: %s)", name,
                    len(res.quarantine), res.quarantine["reason"].iloc[0])
    if quarantine_path is not None:
        from galmorph.catalogue.manifest import write_quarantine

        write_quarantine(res.quarantine, quarantine_path)
    if len(res.features) == 0:
        raise DriftInputError(f"{name} set: no row has usable drift features ({len(res.quarantine)} quarantined)")
    return res.features


# --------------------------------------------------------------------------------------------
# Evidently helpers
# --------------------------------------------------------------------------------------------
def _is_drifted(method: str, value: float, threshold: float) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    return value < threshold if "p_value" in method else value >= threshold


def _dataset(df: pd.DataFrame, num: list[str], cat: list[str]):
    from evidently import DataDefinition, Dataset

    data = df.copy()
    for c in num + cat:  # a column the other set has (e.g. predictions absent from a training reference)
        if c not in data.columns:
            data[c] = np.nan if c in num else None
    cols = [c for c in dict.fromkeys(num + cat + list(KEY_COLUMNS)) if c in data.columns]
    data = data[cols].copy()
    for c in cat + [k for k in KEY_COLUMNS if k in data.columns]:
        data[c] = data[c].astype("object").where(data[c].notna(), None)
    dd = DataDefinition(numerical_columns=[c for c in num if c in data.columns],
                        categorical_columns=[c for c in cat + ["survey", "z_bin"] if c in data.columns])
    return Dataset.from_pandas(data, data_definition=dd)


def _usable_columns(ref: pd.DataFrame, cur: pd.DataFrame, cfg: DriftConfig) -> tuple[list[str], list[str], list[str]]:
    """``(numerical features, categorical features, prediction columns)`` present and not all-NaN in
    both sets."""
    rn, rc = feature_columns(ref)
    cn, cc = feature_columns(cur)
    num = [c for c in rn if c in cn]
    cat = [c for c in rc if c in cc]
    if cfg.columns:
        missing = [c for c in cfg.columns if c not in ref.columns or c not in cur.columns]
        if missing:
            raise DriftInputError(f"drift columns {missing} are not in both the reference and the current set")
        num = [c for c in cfg.columns if c in num or (c not in cat and pd.api.types.is_numeric_dtype(ref[c]))]
        cat = [c for c in cfg.columns if c not in num]
    dropped = []
    for c in list(num) + list(cat):
        if c in cfg.exclude_columns or ref[c].notna().sum() < 2 or cur[c].notna().sum() < 2:
            dropped.append(c)
    if dropped:
        log.info("drift: columns left out (excluded, or < 2 values in a set): %s", dropped)
    num = [c for c in num if c not in dropped]
    cat = [c for c in cat if c not in dropped]
    pred = [c for c in num + cat if PREDICTION_COLUMNS_RE.match(c)]
    return [c for c in num if c not in pred], [c for c in cat if c not in pred], pred


def _metrics(features: list[str], pred_cols: list[str], cfg: DriftConfig, group: tuple[str, str] | None,
             summary_cols: list[str]):
    """Report items: data-drift preset over ``features``, value drift of ``pred_cols`` (prediction
    drift), the predicted-class distribution and high-confidence fraction of the current set
    (``summary_cols``: ``pred`` / ``confidence`` when the current set has them) and, for a group,
    a labelled drift count for the dashboard."""
    from evidently.metrics import DriftedColumnsCount, InRangeValueCount, UniqueValueCount, ValueDrift
    from evidently.metrics.group_by import GroupByMetric
    from evidently.presets import DataDriftPreset

    kw = dict(drift_share=cfg.drift_share, num_method=cfg.num_method, cat_method=cfg.cat_method,
              threshold=cfg.stattest_threshold)
    items: list = [DataDriftPreset(columns=features, **kw)]
    items += [ValueDrift(column=c, method=(cfg.cat_method if c == "pred" else cfg.num_method),
                         threshold=cfg.stattest_threshold) for c in pred_cols]
    if "pred" in summary_cols:
        items.append(UniqueValueCount(column="pred"))
    if "confidence" in summary_cols:
        items.append(InRangeValueCount(column="confidence", left=cfg.high_confidence, right=1.0))
    if group is not None:  # labelled copy of the drift count, for per-group dashboard series
        items.append(GroupByMetric(metric=DriftedColumnsCount(columns=features, **kw), column_name=group[0],
                                   label=group[1]))
    return items


def decide_verdict(drift_share: float, n_drifted: int, prediction_drift: bool | None, cfg: DriftConfig) -> str:
    """``drift`` when the drifted share reaches ``cfg.drift_share``, or ``n_drifted`` reaches
    ``cfg.max_drifted_columns`` (when set), or (with ``cfg.alert_on_prediction_drift``) the
    predicted-class distribution drifted; else ``no_drift``."""
    is_drift = drift_share >= cfg.drift_share or (
        cfg.max_drifted_columns is not None and n_drifted >= cfg.max_drifted_columns) or (
        cfg.alert_on_prediction_drift and bool(prediction_drift))
    return DRIFT if is_drift else NO_DRIFT


def _read_snapshot(snap_dict: dict, features: list[str], pred_cols: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"columns": {}, "count": None, "share": None, "hc_share": None, "pred_shares": None}
    for m in snap_dict.get("metrics", []):
        cfg = m.get("config", {})
        typ = str(cfg.get("type", "")).rsplit(":", 1)[-1]
        val = m.get("value")
        if typ == "DriftedColumnsCount":
            out["count"], out["share"] = float(val["count"]), float(val["share"])
        elif typ == "ValueDrift":
            col = cfg["column"]
            method, thr = str(cfg.get("method")), float(cfg.get("threshold"))
            v = float(val) if val is not None else float("nan")
            out["columns"][col] = {"method": method, "threshold": thr, "value": v,
                                   "drifted": _is_drifted(method, v, thr)}
        elif typ == "InRangeValueCount":
            out["hc_share"] = float(val["share"])
        elif typ == "UniqueValueCount":
            out["pred_shares"] = {str(k): float(v) for k, v in val.get("shares", {}).items()}
    return out


# --------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _DriftSets:
    """The two feature sets of a run and the columns compared: ``features_all`` (numeric then
    categorical features), ``pred_cols`` (predictions in both sets), ``cur_summary`` (the current set's
    prediction summary, shown even when the reference has no predictions) and the numeric/categorical
    columns of the Evidently datasets."""

    ref: pd.DataFrame
    cur: pd.DataFrame
    features_all: list[str]
    pred_cols: list[str]
    cur_summary: list[str]
    num_cols: list[str]
    cat_cols: list[str]


@dataclass(frozen=True)
class _DriftRun:
    """What every group's report of one run shares."""

    cfg: DriftConfig
    release: str | None
    model_version: str | None
    timestamp: datetime
    out: Path | None  # reports go to out/reports (None: nothing written)

    @property
    def base_tags(self) -> list[str]:
        return ["galmorph-drift"] + ([f"release:{self.release}"] if self.release else []) + \
            ([f"model:{self.model_version}"] if self.model_version else [])


def run_drift(reference: str | Path | pd.DataFrame, current: str | Path | pd.DataFrame,
              by: tuple[str, ...] | list[str] | None = None, config: DriftConfig | None = None,
              out_dir: str | Path | None = None, release: str | None = None, model_version: str | None = None,
              workspace: str | Path | None = None, project: str | None = None,
              mlflow_run_id: str | None = None, data_root: Path | str | None = None, num_workers: int = 0,
              timestamp: datetime | None = None, ui_url: str | None = None, progress: bool = True) -> DriftResult:
    """Compare ``current`` with ``reference`` overall and per value of each ``by`` column.

    Parameters
    ----------
    reference, current : features frames, or manifests / scored tables / feature tables (DataFrame
        or Parquet/CSV path); features are computed when missing (see :func:`load_drift_set`).
    by : group-by columns (default ``config.by``, i.e. ``z_bin, survey``).
    config : thresholds and tests (:class:`DriftConfig`; ``params.yaml`` section ``drift:``).
    out_dir : where reports (``<group>.html/.json``), ``summary.json``, ``summary.md`` and
        ``verdict.txt`` go (default: none written but the summary is still returned).
    release, model_version : recorded as snapshot tags/metadata and in the summary.
    workspace, project : Evidently workspace folder and project name (default ``config.project``);
        the project's dashboard panels are (re)created from ``monitoring/dashboards.py``.
    mlflow_run_id : MLflow run that receives the drift metrics and the summary (default: the active
        run, if any).
    ui_url : a running Evidently UI to tell to reload the project's snapshots (best effort).
    """
    cfg = config or DriftConfig()
    by = tuple(by) if by is not None else tuple(cfg.by)
    sets = _drift_sets(reference, current, by, cfg, out_dir, data_root, num_workers, progress)
    run = _DriftRun(cfg, release, model_version, timestamp or datetime.now(timezone.utc).replace(tzinfo=None),
                    Path(out_dir) if out_dir is not None else None)
    if run.out is not None:
        (run.out / "reports").mkdir(parents=True, exist_ok=True)

    per_group: dict[str, GroupVerdict] = {}
    snapshots: list[tuple[GroupVerdict, Any]] = []
    for group in _groups(sets, by, cfg):
        gv, snap = _group_drift(*group, sets, run)
        per_group[gv.key] = gv
        if snap is not None:
            snapshots.append((gv, snap))

    verdict = DRIFT if any(g.verdict == DRIFT for g in per_group.values()) else NO_DRIFT
    result = DriftResult(verdict=verdict, per_group=per_group, paths={}, config=cfg, release=release,
                         model_version=model_version, feature_columns=sets.features_all,
                         prediction_columns=sets.pred_cols)
    if workspace is not None:
        from galmorph.drift.workspace import add_drift_snapshots

        classes = sorted(set(sets.cur["pred"].dropna().astype(str)) if "pred" in sets.cur_summary else set())
        pid = add_drift_snapshots(workspace, project or cfg.project, snapshots, by=by, classes=classes,
                                  high_confidence=cfg.high_confidence, ui_url=ui_url)
        result.project_id = str(pid)
        result.paths["workspace"] = str(Path(workspace).resolve())
    if run.out is not None:
        _write_summary(result, run.out)
    if mlflow_run_id is not None or _active_mlflow_run() is not None:
        _log_mlflow(result, mlflow_run_id or _active_mlflow_run())
    return result


def _drift_sets(reference, current, by: tuple[str, ...], cfg: DriftConfig, out_dir: str | Path | None,
                data_root: Path | str | None, num_workers: int, progress: bool) -> _DriftSets:
    """Load both sets (:func:`load_drift_set`; quarantines under ``out_dir``), check the group-by
    columns and choose the columns to compare."""
    ref = load_drift_set(reference, "reference", data_root, num_workers,
                         quarantine_path=Path(out_dir) / "reference.quarantine.parquet" if out_dir else None,
                         progress=progress)
    cur = load_drift_set(current, "current", data_root, num_workers,
                         quarantine_path=Path(out_dir) / "current.quarantine.parquet" if out_dir else None,
                         progress=progress)
    for b in by:
        for name, d in (("reference", ref), ("current", cur)):
            if b not in d.columns:
                raise DriftInputError(f"group-by column {b!r} is not in the {name} set "
                                      f"(columns: {sorted(d.columns)[:20]}...)")
    features, cat_features, pred_cols = _usable_columns(ref, cur, cfg)
    features_all = features + cat_features
    if not features_all:
        raise DriftInputError("no drift feature column is present (with >= 2 values) in both sets")
    # the current set's prediction summary is shown even when the reference has no predictions
    cur_summary = [c for c in ("pred", "confidence") if c in cur.columns and cur[c].notna().any()]
    num_cols = features + [c for c in dict.fromkeys(pred_cols + cur_summary) if c != "pred"]
    cat_cols = cat_features + (["pred"] if "pred" in pred_cols + cur_summary else [])
    return _DriftSets(ref, cur, features_all, pred_cols, cur_summary, num_cols, cat_cols)


def _groups(sets: _DriftSets, by: tuple[str, ...],
            cfg: DriftConfig) -> list[tuple[str, str, pd.DataFrame, pd.DataFrame, str]]:
    """``(group_by, value, reference rows, current rows, reference scope)``: the whole sets, then one
    per value of each ``by`` column in the current set (the whole reference stands in for a reference
    group smaller than ``min_group_size``: scope ``all``)."""
    ref, cur = sets.ref, sets.cur
    groups: list[tuple[str, str, pd.DataFrame, pd.DataFrame, str]] = [("overall", "all", ref, cur, "all")]
    for b in by:
        for v in sorted(cur[b].astype(str).unique()):
            cur_g = cur[cur[b].astype(str) == v]
            ref_g = ref[ref[b].astype(str) == v]
            scope = "group"
            if len(ref_g) < cfg.min_group_size:
                ref_g, scope = ref, "all"
            groups.append((b, v, ref_g, cur_g, scope))
    return groups


def _group_drift(b: str, v: str, ref_g: pd.DataFrame, cur_g: pd.DataFrame, scope: str, sets: _DriftSets,
                 run: _DriftRun) -> tuple[GroupVerdict, Any | None]:
    """The verdict of one group and its Evidently snapshot (None when the group is too small or has no
    comparable column: verdict ``insufficient`` with the reason)."""
    cfg = run.cfg
    gv = GroupVerdict(group_by=b, group_value=v, verdict=INSUFFICIENT, n_reference=len(ref_g),
                      n_current=len(cur_g), reference_scope=scope if b != "overall" else "all",
                      n_columns=len(sets.features_all))
    if len(cur_g) < cfg.min_group_size:
        gv.reason = f"{len(cur_g)} current rows < min_group_size {cfg.min_group_size}"
        return gv, None
    if len(ref_g) < cfg.min_group_size:
        gv.reason = f"{len(ref_g)} reference rows < min_group_size {cfg.min_group_size}"
        return gv, None
    if b != "overall" and scope == "all":
        ref_g = ref_g.assign(**{b: v})  # the whole reference stands in for this group
    cols_g = [c for c in sets.features_all if ref_g[c].notna().sum() >= 2 and cur_g[c].notna().sum() >= 2]
    preds_g = [c for c in sets.pred_cols if ref_g[c].notna().sum() >= 2 and cur_g[c].notna().sum() >= 2]
    gv.skipped_columns = [c for c in sets.features_all if c not in cols_g]
    gv.n_columns = len(cols_g)
    if not cols_g:
        gv.reason = "no feature column has >= 2 values in both the reference and the current group"
        return gv, None
    snap = _group_snapshot(gv, ref_g, cur_g, cols_g, preds_g, sets, run)
    _read_group_verdict(gv, snap, cols_g, preds_g, cfg)
    if run.out is not None:
        stem = run.out / "reports" / clean_name(gv.key, SLUG)
        snap.save_html(str(stem.with_suffix(".html")))
        snap.save_json(str(stem.with_suffix(".json")))
        gv.report_html, gv.report_json = str(stem.with_suffix(".html")), str(stem.with_suffix(".json"))
    log.info("drift %-24s %-17s share %.2f (%d/%d columns) ref=%d cur=%d", gv.key, gv.verdict,
             gv.drift_share, gv.n_drifted, len(cols_g), len(ref_g), len(cur_g))
    return gv, snap


def _group_snapshot(gv: GroupVerdict, ref_g: pd.DataFrame, cur_g: pd.DataFrame, cols_g: list[str],
                    preds_g: list[str], sets: _DriftSets, run: _DriftRun):
    """Run the group's Evidently report (tags and metadata: release, model, group)."""
    from evidently import Report

    b, v = gv.group_by, gv.group_value
    label = None if b == "overall" else (b, v)
    summary_g = [c for c in sets.cur_summary if cur_g[c].notna().any()]
    report = Report(_metrics(cols_g, preds_g, run.cfg, label, summary_g))
    tags = run.base_tags + ["scope:overall" if b == "overall" else "scope:group"]
    if b != "overall":
        tags += [f"group:{b}", f"{b}:{v}"]
    meta = {"group_by": b, "group_value": v, "reference_scope": gv.reference_scope,
            "n_reference": str(len(ref_g)), "n_current": str(len(cur_g)),
            "release": run.release or "", "model_version": run.model_version or ""}
    return report.run(_dataset(cur_g, sets.num_cols, sets.cat_cols), _dataset(ref_g, sets.num_cols, sets.cat_cols),
                      timestamp=run.timestamp, tags=tags, metadata=meta,
                      name=f"drift {run.release or ''} {gv.key}".strip())


def _read_group_verdict(gv: GroupVerdict, snap, cols_g: list[str], preds_g: list[str], cfg: DriftConfig) -> None:
    """Fill ``gv`` from the snapshot (column scores, drifted columns by strength, share, prediction
    drift, high-confidence fraction, verdict) and record the verdict on the snapshot."""
    res = _read_snapshot(snap.dict(), cols_g, preds_g)
    cols = {c: res["columns"][c] for c in cols_g if c in res["columns"]}
    drifted = sorted([c for c, s in cols.items() if s["drifted"]],
                     key=lambda c: cols[c]["value"] if "p_value" in cols[c]["method"] else -cols[c]["value"])
    gv.column_scores = {**cols, **{c: res["columns"][c] for c in preds_g if c in res["columns"]}}
    gv.n_drifted = int(res["count"]) if res["count"] is not None else len(drifted)
    gv.drift_share = float(res["share"]) if res["share"] is not None else len(drifted) / len(cols_g)
    gv.drifted_columns = drifted
    if "pred" in res["columns"]:
        gv.prediction_drift = bool(res["columns"]["pred"]["drifted"])
    gv.high_confidence_fraction = res["hc_share"]
    gv.verdict = decide_verdict(gv.drift_share, gv.n_drifted, gv.prediction_drift, cfg)
    snap._metadata["verdict"] = gv.verdict  # noqa: SLF001 - known only after the run
    snap._metadata["drift_share"] = f"{gv.drift_share:.4f}"  # noqa: SLF001
    snap._tags.append(f"verdict:{gv.verdict}")  # noqa: SLF001


def _write_summary(result: DriftResult, out: Path) -> None:
    """``summary.json``, ``summary.md`` and ``verdict.txt`` in ``out`` (their paths in ``result.paths``)."""
    result.paths.update(summary_json=str(out / "summary.json"), summary_md=str(out / "summary.md"),
                        verdict=str(out / "verdict.txt"), reports=str(out / "reports"))
    (out / "summary.json").write_text(json.dumps(result.to_dict(), indent=2, default=json_default))
    (out / "summary.md").write_text(f"# Drift summary: {result.verdict}\n\n" + result.table() + "\n")
    (out / "verdict.txt").write_text(result.verdict + "\n")


def _active_mlflow_run() -> str | None:
    try:
        import mlflow

        run = mlflow.active_run()
        return run.info.run_id if run is not None else None
    except Exception:  # noqa: BLE001
        return None


def drift_metrics(result: DriftResult) -> dict[str, float]:
    """Flat MLflow metrics of a drift result: ``drift.<group>.share`` / ``.n_drifted`` / ``.flag``."""
    metrics: dict[str, float] = {"drift.verdict": 1.0 if result.drift else 0.0}
    for g in result.per_group.values():
        if g.verdict == INSUFFICIENT:
            continue
        key = "drift." + ("overall" if g.group_by == "overall" else f"{g.group_by}.{clean_name(g.group_value, SLUG)}")
        metrics[f"{key}.share"] = float(g.drift_share)
        metrics[f"{key}.n_drifted"] = float(g.n_drifted)
        metrics[f"{key}.flag"] = 1.0 if g.verdict == DRIFT else 0.0
        if g.high_confidence_fraction is not None:
            metrics[f"{key}.high_confidence_fraction"] = float(g.high_confidence_fraction)
    return metrics


def _log_mlflow(result: DriftResult, run_id: str) -> None:
    import tempfile

    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    now = int(datetime.now(timezone.utc).timestamp() * 1000)
    metrics = [Metric(k, v, now, 0) for k, v in drift_metrics(result).items()]
    params = [Param("drift.verdict", result.verdict),
              Param("drift.drift_share_threshold", str(result.config.drift_share))]
    existing = client.get_run(run_id).data.params
    params = [p for p in params if p.key not in existing]
    client.log_batch(run_id, metrics=metrics, params=params)
    client.set_tag(run_id, "drift.verdict", result.verdict)
    with tempfile.TemporaryDirectory() as td:
        p = Path(td) / "drift_summary.json"
        p.write_text(json.dumps(result.to_dict(), indent=2, default=json_default))
        client.log_artifact(run_id, str(p), artifact_path="drift")
        for g in result.per_group.values():
            if g.report_html:
                client.log_artifact(run_id, g.report_html, artifact_path="drift/reports")
    log.info("drift metrics logged to MLflow run %s (%d metrics)", run_id, len(metrics))
