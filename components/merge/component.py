"""KFP component: merge the scoring workers' shards into the release catalogue; record it in MLflow."""

from typing import List, NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from galmorph.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def merge(scores: Input[List[Dataset]], catalogue: Output[Dataset], metrics: Output[Metrics], release: str = "",
          log_mlflow: bool = True, tracking_uri: str = "") -> NamedTuple(
              "MergeOutputs", [("n_scored", int), ("n_quarantined", int), ("run_id", str), ("cvs", float)]):
    """galmorph.scoring.merge_scores -> ``catalogue`` folder (catalogue.parquet, quarantine.parquet,
    summary.json); the summary and catalogue are logged as an MLflow run tagged with the release."""
    import math
    from collections import namedtuple

    from galmorph.pipelines.runtime import as_dir, flat_metrics, setup
    from galmorph.scoring import log_scoring_to_mlflow, merge_scores

    uri, _ = setup(tracking_uri)
    m = merge_scores([s.path for s in scores], as_dir(catalogue.path), release=release or None)
    run_id = log_scoring_to_mlflow(m.summary_data, m.catalogue, tracking_uri=uri) if log_mlflow else ""
    for k, v in flat_metrics({k: v for k, v in m.summary_data.items() if k != "shards_missing"}).items():
        metrics.log_metric(k, v)
    catalogue.metadata.update({"rows": m.n_scored, "release": release, "mlflow_run_id": run_id})
    cvs = float((m.summary_data.get("cvs") or {}).get("cvs", math.nan))
    return namedtuple("MergeOutputs", ["n_scored", "n_quarantined", "run_id", "cvs"])(
        m.n_scored, m.n_quarantined, run_id, cvs)
