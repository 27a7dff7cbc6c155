"""KFP component: Evidently drift of a scored release against the reference (the champion's training set)."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Output

from galmorph.container_images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def drift(catalogue: Input[Dataset], dataset: Input[Dataset], report: Output[HTML], summary: Output[Artifact],
          reference: str = "", model_uri: str = "", by: str = "z_bin,survey", release: str = "",
          mlflow_run_id: str = "", workspace: str = "", min_group_size: int = 0, tracking_uri: str = "",
          data_root: str = "", sample_rows: int = 0) -> NamedTuple("DriftOutputs", [("verdict", str), ("n_drifted_groups", int)]):
    """galmorph.drift.run_drift; ``reference`` defaults to the drift reference logged in MLflow with the
    model version (``drift_reference/features.parquet`` of its training run); thresholds from params.yaml ``drift:`` (``min_group_size``
    > 0 overrides). ``verdict`` is ``drift`` or ``no_drift`` (drives publish). ``sample_rows`` > 0: every row up to
    that many, past it a deterministic sample by object id of about that many (the same whatever the release's size)."""
    from galmorph import steps

    return steps.drift(catalogue.path, dataset.path, summary.path, report.path, reference=reference,
                       model_uri=model_uri, by=by, release=release, mlflow_run_id=mlflow_run_id, workspace=workspace,
                       min_group_size=min_group_size, tracking_uri=tracking_uri, data_root=data_root,
                       sample_rows=sample_rows, summary_metadata=summary.metadata)
