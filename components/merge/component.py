"""KFP component: merge the scoring workers' shards into the release catalogue; record it in MLflow."""

from typing import List, NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from galmorph.container_images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def merge(scores: Input[List[Dataset]], catalogue: Output[Dataset], metrics: Output[Metrics], release: str = "",
          log_mlflow: bool = True, tracking_uri: str = "") -> NamedTuple(
              "MergeOutputs", [("n_scored", int), ("n_quarantined", int), ("run_id", str), ("cvs", float)]):
    """galmorph.scoring.run.merge_and_log -> ``catalogue`` folder (catalogue.parquet, quarantine.parquet,
    summary.json); the summary and catalogue are logged as an MLflow run tagged with the release."""
    from galmorph import steps

    return steps.merge([s.path for s in scores], catalogue.path, release=release, log_mlflow=log_mlflow,
                       tracking_uri=tracking_uri, catalogue_metadata=catalogue.metadata, metrics=metrics.metadata)
