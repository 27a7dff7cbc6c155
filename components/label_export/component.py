"""KFP component: export the labels collected so far to a labelled manifest (the training input)."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Output

from galmorph.container_images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def label_export(labelled: Output[Dataset], quarantine: Output[Dataset], task: str = "lopsided",
                 policy: str = "majority", label_db_url: str = "") -> NamedTuple("ExportOutputs",
                                                                                 [("n_labelled", int)]):
    """galmorph.labelling.export.export_labels (objects with only 'unsure' votes go to quarantine)."""
    from galmorph import steps

    return steps.label_export(labelled.path, quarantine.path, task=task, policy=policy, label_db_url=label_db_url,
                              labelled_metadata=labelled.metadata)
