"""KFP component: export a labelling queue (with A1 measurements) to the label database."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from galmorph.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def label_queue(queue: Input[Dataset], exported: Output[Dataset], label_db_url: str = "",
                queue_name: str = "") -> NamedTuple("QueueOutputs", [("registered", int)]):
    """galmorph.labelling.store.LabelStore.register_queue: the labelling app (`galmorph label serve`)
    then serves these objects, with their A1 overlay."""
    import shutil
    from collections import namedtuple

    from galmorph.labelling.store import LabelStore
    from galmorph.manifest import read_manifest
    from galmorph.pipelines.runtime import setup
    from galmorph.settings import get_settings

    setup()
    url = label_db_url or get_settings().label_db_url
    q = read_manifest(queue.path)
    if "queue_position" in q.columns:
        q = q.sort_values("queue_position")
    n = LabelStore(url).register_queue(q, queue_name or None)
    shutil.copyfile(queue.path, exported.path)
    exported.metadata.update({"rows": n, "label_db": url})
    return namedtuple("QueueOutputs", ["registered"])(n)
