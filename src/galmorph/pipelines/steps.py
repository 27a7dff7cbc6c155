"""Multi-call pipeline steps that need a little glue between library functions."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from galmorph.manifest import read_manifest
from galmorph.pipelines.artifacts import open_dataset

log = logging.getLogger(__name__)


def training_manifest_of(model_uri: str) -> str | None:
    """The training manifest recorded on a model version's training run (tag ``galmorph.manifest``)."""
    import mlflow

    from galmorph.scoring import resolve_model_version

    uri = resolve_model_version(model_uri)
    if not uri.startswith("models:/"):
        return None
    name, version = uri[len("models:/"):].split("/", 1)
    client = mlflow.MlflowClient()
    mv = client.get_model_version(name, version)
    run = client.get_run(mv.run_id)
    tag = run.data.tags.get("galmorph.manifest")
    if tag is None and run.data.tags.get("mlflow.parentRunId"):
        tag = client.get_run(run.data.tags["mlflow.parentRunId"]).data.tags.get("galmorph.manifest")
    return tag


def drift_for_release(catalogue_dir: str | Path, dataset: str | Path, summary_dir: str | Path,
                      report_html: str | Path, reference: str = "", model_uri: str = "", by: str = "z_bin,survey",
                      release: str = "", mlflow_run_id: str = "", workspace: str = "",
                      data_root: str | Path | None = None, params_file: str | Path | None = None,
                      min_group_size: int | None = None) -> dict[str, Any]:
    """Drift of a scored release (its catalogue joined with the images of ``dataset``) against
    ``reference`` (default: the model's training manifest). Writes the per-group reports and summary
    to ``summary_dir``, the overall report to ``report_html``; returns the summary dict."""
    from galmorph.drift.config import DriftConfig
    from galmorph.drift.report import run_drift
    from galmorph.settings import get_settings

    s = get_settings()
    if not reference:
        reference = training_manifest_of(model_uri) if model_uri else None
        if not reference or not Path(reference).exists():
            raise FileNotFoundError(f"no drift reference: pass `reference`, or score with a model whose training "
                                    f"run recorded its manifest (got {reference!r} for {model_uri!r})")
    ref_path = open_dataset(reference) if Path(reference).is_dir() else Path(reference)
    cat = pd.read_parquet(Path(catalogue_dir) / "catalogue.parquet")
    man = read_manifest(open_dataset(dataset))
    pcols = [c for c in cat.columns if c.startswith("p_")] + ["pred", "p_pred", "high_confidence", "model_version"]
    current = man.merge(cat[["object_id", *[c for c in pcols if c in cat.columns]]], on="object_id", how="inner")
    cfg = DriftConfig.from_params(params_file or s.params_file, min_group_size=min_group_size)
    by_cols = tuple(b.strip() for b in by.split(",") if b.strip())
    res = run_drift(ref_path, current, by=by_cols, config=cfg, out_dir=summary_dir, release=release or None,
                    model_version=str(cat["model_version"].iloc[0]) if len(cat) else None,
                    workspace=workspace or s.evidently_workspace, mlflow_run_id=mlflow_run_id or None,
                    data_root=data_root, progress=False)
    overall = res.per_group.get("overall") or next(iter(res.per_group.values()), None)
    if overall is not None and overall.report_html:
        shutil.copyfile(overall.report_html, report_html)
    else:
        Path(report_html).write_text(f"<html><body><h1>Drift: {res.verdict}</h1><pre>{res.table()}</pre>"
                                     "</body></html>")
    return res.to_dict()
