"""KFP component: plan the scoring work of a release (one contiguous shard range per worker)."""

from typing import List

from kfp import dsl
from kfp.dsl import Dataset, Input

from galmorph.container_images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def shard(dataset: Input[Dataset], model_uri: str, shard_size: int = 10000, n_workers: int = 4) -> List[str]:
    """galmorph.scoring.batch.plan_work: one work item per scoring worker, the items of the rescoring pipeline's
    ParallelFor. An item is a JSON object ``{"shards": "first-last", "model_uri": "models:/NAME/V",
    "shard_size": S}``; shard ``i`` is rows ``[i*S, (i+1)*S)``. Carrying the pinned model in the item
    keeps every worker on the same model version."""
    from galmorph import steps

    return steps.shard(dataset.path, model_uri, shard_size=shard_size, n_workers=n_workers)
