"""The labelling pipeline: ingest -> redshift-stratified sample -> measurement (winding sense for chirality
queues, A1 otherwise) -> queue export to the label database (-> optional export of the labels collected so
far).

Compiled to ``pipelines/labelling.yaml``; labellers then work in ``galmorph label serve``, which shows the
measurement as an overlay (A1 for lopsided queues, winding sense + annulus for chirality queues).
"""

from kfp import dsl

from galmorph.steps.platform import data_volume, load_platform
from galmorph_components.a1.component import a1
from galmorph_components.ingest.component import ingest
from galmorph_components.label_export.component import label_export
from galmorph_components.label_queue.component import label_queue
from galmorph_components.label_sample.component import label_sample
from galmorph_components.winding.component import winding

PLATFORM = load_platform()


@dsl.pipeline(name="galmorph-labelling",
              description="Draw a labelling queue with A1 (or, for chirality, winding) measurements for the "
                          "labelling app.")
def pipeline(source: str = "sdss_fits", task: str = "lopsided", per_bin: int = 250, n_bins: int = 4,
             z_min: float = 0.01, z_max: float = 0.1, seed: int = 0, label_db_url: str = "",
             queue_name: str = "", export_labels: bool = False, winding_min_confidence: float = 2.0,
             data_root: str = ""):
    """Draw a labelling queue with A1 (or, for chirality, winding) measurements for the labelling app.

    Args:
        source: Images to draw the queue from: a shared-data source name, ``sim:DIR`` or ``folder:DIR``;
            resolved under ``data_root``.
        task: The task being labelled: lopsided and arms get the A1 overlay, chirality the winding sense.
        per_bin: Objects drawn per redshift bin.
        n_bins: Equal-width redshift bins between ``z_min`` and ``z_max``.
        z_min: Lower redshift limit of the sample.
        z_max: Upper redshift limit of the sample.
        seed: Seed of the draw (objects already labelled in the label database are left out).
        label_db_url: SQLAlchemy URL of the label database; empty (default) uses the platform's.
        queue_name: Name the queue's objects are registered under in the label database (empty: none).
        export_labels: Also export the labels collected so far to a labelled manifest.
        winding_min_confidence: Chirality: the winding measurement's |z| under which its sense is left empty.
        data_root: Root that relative image paths and shared-data sources resolve under; empty (default)
            uses the platform's (GALMORPH_DATA_ROOT).
    """
    ing = ingest(source=source, data_root=data_root)
    data_volume(ing, PLATFORM)
    smp = label_sample(manifest=ing.outputs["manifest"], per_bin=per_bin, n_bins=n_bins, z_min=z_min, z_max=z_max,
                       seed=seed, task=task, label_db_url=label_db_url)
    smp.set_caching_options(False)  # excludes objects labelled meanwhile
    # two exclusive branches, each ending in its own queue export (kfp's local runner has no artifact OneOf)
    with dsl.If(task != "chirality", name="a1-queue"):
        meas = a1(manifest=smp.outputs["queue"], data_root=data_root)
        data_volume(meas, PLATFORM)
        q = label_queue(queue=meas.outputs["measured"], label_db_url=label_db_url, queue_name=queue_name)
        q.set_caching_options(False)
        with dsl.If(export_labels == True, name="export-labels"):  # noqa: E712 - KFP condition
            ex = label_export(task=task, label_db_url=label_db_url)
            ex.after(q)
            ex.set_caching_options(False)
    with dsl.If(task == "chirality", name="chirality-winding-queue"):
        wind = winding(manifest=smp.outputs["queue"], min_confidence=winding_min_confidence, data_root=data_root)
        data_volume(wind, PLATFORM)
        qw = label_queue(queue=wind.outputs["measured"], label_db_url=label_db_url, queue_name=queue_name)
        qw.set_caching_options(False)
        with dsl.If(export_labels == True, name="export-chirality-labels"):  # noqa: E712 - KFP condition
            exw = label_export(task=task, label_db_url=label_db_url)
            exw.after(qw)
            exw.set_caching_options(False)
