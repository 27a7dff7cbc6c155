"""KFP component: export the labels collected so far to a labelled manifest (the training input)."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Output

from galmorph.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def label_export(labelled: Output[Dataset], quarantine: Output[Dataset], task: str = "lopsided",
                 policy: str = "majority", label_db_url: str = "") -> NamedTuple("ExportOutputs",
                                                                                 [("n_labelled", int)]):
    """galmorph.labelling.export.export_labels (objects with only 'unsure' votes go to quarantine)."""
    from collections import namedtuple

    from galmorph.labelling.export import export_labels
    from galmorph.labelling.store import LabelStore
    from galmorph.pipelines.runtime import setup
    from galmorph.settings import get_settings

    setup()
    res = export_labels(LabelStore(label_db_url or get_settings().label_db_url), labelled.path, task=task,
                        policy=policy, quarantine_path=quarantine.path)
    labelled.metadata.update({"rows": res["n_labelled"], "counts": res["counts"]})
    return namedtuple("ExportOutputs", ["n_labelled"])(res["n_labelled"])
