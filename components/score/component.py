"""KFP component: score one work item (a range of shards) of a release with a registered model (GPU step)."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from galmorph.images import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def score(dataset: Input[Dataset], work: str, scores: Output[Dataset], batch_size: int = 64, num_workers: int = 2,
          threshold: float = 0.85, device: str = "auto",
          tracking_uri: str = "") -> NamedTuple("ScoreOutputs", [("n_scored", int), ("n_quarantined", int)]):
    """galmorph.scoring.score_manifest for the shards of ``work`` (a shard-planner item: shard range,
    pinned model URI, shard size) into the ``scores`` folder; resumable (a retried pod skips the
    shards it completed when its output folder persists)."""
    from collections import namedtuple

    from galmorph.pipelines.runtime import as_dir, open_dataset, setup
    from galmorph.scoring import parse_work_item, pick_device, score_manifest

    _, root = setup(tracking_uri)
    item = parse_work_item(work)
    res = score_manifest(item["model_uri"], open_dataset(dataset.path), as_dir(scores.path), batch_size=batch_size,
                         num_workers=num_workers, shard_size=item["shard_size"], threshold=threshold,
                         shards=item["shards"], data_root=root, device=pick_device(device), progress=False)
    scores.metadata.update({"shards": item["shard_range"], "n_scored": res.n_scored,
                            "images_per_s": res.images_per_s})
    return namedtuple("ScoreOutputs", ["n_scored", "n_quarantined"])(res.n_scored, res.n_quarantined)
