"""KFP component: ingest a catalogue / survey release / simulator folder into a Parquet manifest."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Output

from galmorph.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def ingest(source: str, manifest: Output[Dataset], quarantine: Output[Dataset], task: str = "",
           data_root: str = "") -> NamedTuple("IngestOutputs", [("rows_in", int), ("rows_out", int),
                                                                ("rows_quarantined", int)]):
    """galmorph.pipelines.artifacts.ingest_source: ``source`` is a catalogue name (gz1_chirality, ...),
    ``sim:<dir>``, a release folder (release.json / manifest.parquet / truth.parquet) or a manifest."""
    from collections import namedtuple

    from galmorph.pipelines.artifacts import ingest_source
    from galmorph.pipelines.runtime import setup

    _, root = setup(data_root=data_root)
    res = ingest_source(source, manifest.path, quarantine.path, task=task or None, data_root=root)
    manifest.metadata.update({"rows": res["rows_out"], "source": source})
    quarantine.metadata.update({"rows": res["rows_quarantined"]})
    return namedtuple("IngestOutputs", ["rows_in", "rows_out", "rows_quarantined"])(
        res["rows_in"], res["rows_out"], res["rows_quarantined"])
