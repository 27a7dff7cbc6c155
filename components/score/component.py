"""KFP component: score a range of shards of a release with a registered model (GPU step)."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from galmorph.images import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def score(dataset: Input[Dataset], model_uri: str, shards: str, scores: Output[Dataset], shard_size: int = 10000,
          batch_size: int = 64, num_workers: int = 2, threshold: float = 0.85, device: str = "auto",
          tracking_uri: str = "") -> NamedTuple("ScoreOutputs", [("n_scored", int), ("n_quarantined", int)]):
    """galmorph.scoring.score_manifest for shards ``shards`` (``"first-last"``) into the ``scores`` folder;
    resumable (a retried pod skips completed shards when its output folder persists)."""
    from collections import namedtuple

    from galmorph.pipelines.runtime import as_dir, open_dataset, setup
    from galmorph.scoring import parse_shard_range, pick_device, score_manifest

    _, root = setup(tracking_uri)
    res = score_manifest(model_uri, open_dataset(dataset.path), as_dir(scores.path), batch_size=batch_size,
                         num_workers=num_workers, shard_size=shard_size, threshold=threshold,
                         shards=parse_shard_range(shards), data_root=root, device=pick_device(device),
                         progress=False)
    scores.metadata.update({"shards": shards, "n_scored": res.n_scored, "images_per_s": res.images_per_s})
    return namedtuple("ScoreOutputs", ["n_scored", "n_quarantined"])(res.n_scored, res.n_quarantined)
