"""KFP component: ingest a catalogue / survey release / simulator folder into a Parquet manifest."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Output

from galmorph.container_images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def ingest(source: str, manifest: Output[Dataset], quarantine: Output[Dataset], task: str = "",
           data_root: str = "") -> NamedTuple("IngestOutputs", [("rows_in", int), ("rows_out", int),
                                                                ("rows_quarantined", int)]):
    """galmorph.steps.artifacts.ingest_source: ``source`` is a catalogue name (gz1_chirality, ...),
    ``sim:<dir>``, a release folder (release.json / manifest.parquet / truth.parquet) or a manifest."""
    from galmorph import steps

    return steps.ingest(source, manifest.path, quarantine.path, task=task, data_root=data_root,
                        manifest_metadata=manifest.metadata, quarantine_metadata=quarantine.metadata)
