"""KFP component: guarded champion/challenger promotion of a registered model version."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Output

from galmorph.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def promote(task: str, version: str, dataset: Input[Dataset], record: Output[Artifact], policy_json: str = "{}",
            audit_log: str = "", tracking_uri: str = "") -> NamedTuple(
                "PromoteOutputs", [("decision", str), ("passed", bool), ("champion", str)]):
    """galmorph.registry.promote against ``@champion`` on the held-out dataset under the policy
    (params.yaml ``promotion:`` section, overridden by ``policy_json``). The audit record is appended
    to ``audit_log`` (default: the platform state folder) and is this step's output."""
    import json
    from collections import namedtuple
    from pathlib import Path

    from galmorph.pipelines.runtime import open_dataset, setup, write_json
    from galmorph.registry import PromotionPolicy, promote as promote_version
    from galmorph.settings import get_settings

    _, root = setup(tracking_uri)
    s = get_settings()
    policy = PromotionPolicy.from_params(s.params_file, **json.loads(policy_json or "{}"))
    audit = Path(audit_log) if audit_log else s.state_dir / "registry" / "audit.jsonl"
    dec = promote_version(task, version or None, eval_manifest=open_dataset(dataset.path), audit_log=audit,
                          policy=policy, data_root=root)
    write_json(record.path, dec.to_dict())
    record.metadata.update({"decision": dec.decision, "champion": dec.champion_after, "reasons": dec.reasons})
    print(dec.summary())
    return namedtuple("PromoteOutputs", ["decision", "passed", "champion"])(
        dec.decision, bool(dec.passed), str(dec.champion_after or ""))
