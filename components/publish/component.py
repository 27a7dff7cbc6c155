"""KFP component: publish a scored release catalogue, or hold it when drift was detected."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Output

from galmorph.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def publish(catalogue: Input[Dataset], verdict: str, release: str, published: Output[Artifact],
            publish_dir: str = "", hold_on_drift: bool = True, mlflow_run_id: str = "",
            tracking_uri: str = "") -> NamedTuple("PublishOutputs", [("status", str)]):
    """galmorph.pipelines.artifacts.publish_release into ``publish_dir/<release>/`` (default: the platform
    state folder's releases/); held (nothing published, a HELD note) when ``verdict`` is ``drift`` and
    ``hold_on_drift``. The status is tagged on the scoring run in MLflow."""
    from collections import namedtuple
    from pathlib import Path

    from galmorph.pipelines.artifacts import publish_release
    from galmorph.pipelines.runtime import setup, write_json
    from galmorph.settings import get_settings

    setup(tracking_uri)
    dest = Path(publish_dir) if publish_dir else get_settings().state_dir / "releases"
    cat = Path(catalogue.path)
    res = publish_release(cat / "catalogue.parquet", cat / "summary.json", dest, release or "release", verdict,
                          hold_on_drift)
    if mlflow_run_id:
        import mlflow

        mlflow.MlflowClient().set_tag(mlflow_run_id, "galmorph.publish", res["status"])
    write_json(published.path, res)
    published.metadata.update(res)
    return namedtuple("PublishOutputs", ["status"])(res["status"])
