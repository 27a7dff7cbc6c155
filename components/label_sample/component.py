"""KFP component: draw a redshift-stratified labelling queue from a manifest."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from galmorph.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def label_sample(manifest: Input[Dataset], queue: Output[Dataset], per_bin: int = 250, n_bins: int = 4,
                 z_min: float = 0.01, z_max: float = 0.1, seed: int = 0, task: str = "lopsided",
                 label_db_url: str = "") -> NamedTuple("SampleOutputs", [("rows", int)]):
    """galmorph.labelling.queue.sample_queue (objects already labelled in the label database excluded)."""
    from collections import namedtuple

    from galmorph.labelling.queue import sample_queue, write_queue
    from galmorph.labelling.store import LabelStore
    from galmorph.manifest import read_manifest
    from galmorph.pipelines.runtime import open_dataset, setup
    from galmorph.settings import get_settings

    setup()
    store = LabelStore(label_db_url or get_settings().label_db_url)
    q, summary = sample_queue(read_manifest(open_dataset(manifest.path)), per_bin=per_bin, n_bins=n_bins,
                              z_min=z_min, z_max=z_max, seed=seed, task=task,
                              exclude_ids=store.labelled_ids(task))
    write_queue(q, queue.path, summary)
    queue.metadata.update({"rows": len(q), "chosen": summary["chosen"]})
    return namedtuple("SampleOutputs", ["rows"])(len(q))
