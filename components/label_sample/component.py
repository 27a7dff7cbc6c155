"""KFP component: draw a redshift-stratified labelling queue from a manifest."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from galmorph.container_images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def label_sample(manifest: Input[Dataset], queue: Output[Dataset], per_bin: int = 250, n_bins: int = 4,
                 z_min: float = 0.01, z_max: float = 0.1, seed: int = 0, task: str = "lopsided",
                 label_db_url: str = "") -> NamedTuple("SampleOutputs", [("rows", int)]):
    """galmorph.labelling.queue.sample_queue (objects already labelled in the label database excluded)."""
    from galmorph import steps

    return steps.label_sample(manifest.path, queue.path, per_bin=per_bin, n_bins=n_bins, z_min=z_min, z_max=z_max,
                              seed=seed, task=task, label_db_url=label_db_url, queue_metadata=queue.metadata)
