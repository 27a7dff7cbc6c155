"""KFP component: score one work item (a range of shards) of a release with a registered model (GPU step)."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from galmorph.container_images import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def score(dataset: Input[Dataset], work: str, scores: Output[Dataset], batch_size: int = 64, num_workers: int = 2,
          threshold: float = 0.85, device: str = "auto", tracking_uri: str = "", winding_ensemble: bool = True,
          winding_weight: float = -1.0, winding_min_confidence: float = -1.0, precision: str = "verified",
          decode: str = "auto", class_prior: str = "model", check_images: bool = True,
          data_root: str = "") -> NamedTuple("ScoreOutputs", [("n_scored", int), ("n_quarantined", int)]):
    """galmorph.scoring.run.run_scoring for the shards of ``work`` (a shard-planner item: shard range,
    pinned model URI, shard size) into the ``scores`` folder; resumable (a retried pod skips the
    shards it completed when its output folder persists). ``winding_ensemble`` (default true): combine the
    chirality network with the winding measurement as the model recorded (galmorph.scoring.ensemble.ensemble_for;
    false: off); ``winding_weight``/``winding_min_confidence`` below 0: the model's recorded values. ``precision``
    (default ``verified``: the fastest path checked against fp32 once per model version and recorded on it;
    fp32|auto|channels_last|bf16|onnx|int8) and ``decode`` (default auto; full|draft): the inference path, used
    only where it agrees with fp32 (galmorph.scoring.accel). ``class_prior``: the release's class prior (default
    ``model``: the prior the model recorded, its catalogue's; ``none``/``as-trained``: as trained; ``catalogue``
    or ``CLASS=F,...``). What was applied is recorded (applied_class_prior, applied_ensemble). ``check_images``
    (default true): the validation's per-image checks run on the pixels scoring decodes (decode once); a failing
    row is quarantined with the reason."""
    from galmorph import steps

    return steps.score(dataset.path, work, scores.path, batch_size=batch_size, num_workers=num_workers,
                       threshold=threshold, device=device, tracking_uri=tracking_uri,
                       winding_ensemble=winding_ensemble, winding_weight=winding_weight,
                       winding_min_confidence=winding_min_confidence, precision=precision, decode=decode,
                       class_prior=class_prior, check_images=check_images, data_root=data_root,
                       scores_metadata=scores.metadata)
