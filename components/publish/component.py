"""KFP component: publish a scored release catalogue, or hold it when drift was detected."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Output

from galmorph.container_images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def publish(catalogue: Input[Dataset], verdict: str, release: str, published: Output[Artifact],
            publish_dir: str = "", hold_on_drift: bool = True, mlflow_run_id: str = "",
            tracking_uri: str = "") -> NamedTuple("PublishOutputs", [("status", str)]):
    """galmorph.steps.artifacts.publish_release into ``publish_dir/<release>/`` (default: the platform
    state folder's releases/); held (nothing published, a HELD note) when ``verdict`` is ``drift`` and
    ``hold_on_drift``. The status is tagged on the scoring run in MLflow."""
    from galmorph import steps

    return steps.publish(catalogue.path, verdict, release, published.path, publish_dir=publish_dir,
                         hold_on_drift=hold_on_drift, mlflow_run_id=mlflow_run_id, tracking_uri=tracking_uri,
                         published_metadata=published.metadata)
