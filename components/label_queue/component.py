"""KFP component: export a labelling queue (with A1 measurements) to the label database."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from galmorph.container_images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def label_queue(queue: Input[Dataset], exported: Output[Dataset], label_db_url: str = "",
                queue_name: str = "") -> NamedTuple("QueueOutputs", [("registered", int)]):
    """galmorph.labelling.store.LabelStore.register_queue: the labelling app (`galmorph label serve`)
    then serves these objects, with their A1 overlay."""
    from galmorph import steps

    return steps.label_queue(queue.path, exported.path, label_db_url=label_db_url, queue_name=queue_name,
                             exported_metadata=exported.metadata)
