"""KFP component: plan the scoring shards of a release and pin the model version to score with."""

from typing import List, NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input

from galmorph.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def shard(dataset: Input[Dataset], task: str, model_alias: str = "champion", model_uri: str = "",
          shard_size: int = 10000, n_workers: int = 4, tracking_uri: str = "") -> NamedTuple(
              "ShardOutputs", [("work", List[str]), ("n_rows", int), ("n_shards", int), ("model_uri", str)]):
    """galmorph.scoring.plan_workers: ``work`` is one shard range per scoring worker (``"first-last"``,
    the ParallelFor items); ``model_uri`` (default ``models:/galmorph-<task>@<model_alias>``) comes back
    resolved to its version (``models:/NAME/V``) so that every worker scores with the same model even
    if the alias moves meanwhile."""
    from collections import namedtuple

    from galmorph.pipelines.runtime import dataset_manifest_path, setup
    from galmorph.scoring import manifest_rows, n_shards_for, plan_workers, resolve_model_version

    setup(tracking_uri)
    n = manifest_rows(dataset_manifest_path(dataset.path))
    groups = plan_workers(n, shard_size, n_workers)
    work = [f"{g[0]}-{g[-1]}" for g in groups]
    uri = resolve_model_version(model_uri or f"models:/galmorph-{task}@{model_alias}")
    return namedtuple("ShardOutputs", ["work", "n_rows", "n_shards", "model_uri"])(
        work, n, n_shards_for(n, shard_size), uri)
