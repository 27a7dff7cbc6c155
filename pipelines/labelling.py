"""The labelling pipeline: ingest -> redshift-stratified sample -> A1 -> queue export to the label database
(-> optional export of the labels collected so far).

Compiled to ``pipelines/labelling.yaml``; labellers then work in ``galmorph label serve``.
"""

from kfp import dsl

from galmorph.pipelines.platform import data_volume, load_platform
from galmorph_components.a1.component import a1
from galmorph_components.ingest.component import ingest
from galmorph_components.label_export.component import label_export
from galmorph_components.label_queue.component import label_queue
from galmorph_components.label_sample.component import label_sample

PLATFORM = load_platform()


@dsl.pipeline(name="galmorph-labelling",
              description="Draw a labelling queue with A1 measurements for the labelling app.")
def pipeline(source: str = "sdss_fits", task: str = "lopsided", per_bin: int = 250, n_bins: int = 4,
             z_min: float = 0.01, z_max: float = 0.1, seed: int = 0, label_db_url: str = "",
             queue_name: str = "", export_labels: bool = False, data_root: str = ""):
    ing = ingest(source=source, data_root=data_root)
    data_volume(ing, PLATFORM)
    smp = label_sample(manifest=ing.outputs["manifest"], per_bin=per_bin, n_bins=n_bins, z_min=z_min, z_max=z_max,
                       seed=seed, task=task, label_db_url=label_db_url)
    smp.set_caching_options(False)  # excludes objects labelled meanwhile
    meas = a1(manifest=smp.outputs["queue"], data_root=data_root)
    data_volume(meas, PLATFORM)
    q = label_queue(queue=meas.outputs["measured"], label_db_url=label_db_url, queue_name=queue_name)
    q.set_caching_options(False)
    with dsl.If(export_labels == True, name="export-labels"):  # noqa: E712 - KFP condition
        ex = label_export(task=task, label_db_url=label_db_url)
        ex.after(q)
        ex.set_caching_options(False)
