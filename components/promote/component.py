"""KFP component: guarded champion/challenger promotion of a registered model version."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Output

from galmorph.container_images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def promote(task: str, version: str, dataset: Input[Dataset], record: Output[Artifact], policy_json: str = "{}",
            audit_log: str = "", tracking_uri: str = "") -> NamedTuple(
                "PromoteOutputs", [("decision", str), ("passed", bool), ("champion", str)]):
    """galmorph.promotion.registry.promote against ``@champion`` on the held-out dataset under the policy
    (params.yaml ``promotion:`` section, overridden by ``policy_json``). The audit record is appended
    to ``audit_log`` (default: the platform state folder) and is this step's output."""
    from galmorph import steps

    return steps.promote(task, version, dataset.path, record.path, policy_json=policy_json, audit_log=audit_log,
                         tracking_uri=tracking_uri, record_metadata=record.metadata)
