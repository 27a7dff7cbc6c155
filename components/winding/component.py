"""KFP component: measure the winding sense (CW / ACW / none) of the spiral arms of every galaxy of a manifest."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from galmorph.container_images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def winding(manifest: Input[Dataset], measured: Output[Dataset], quarantine: Output[Dataset],
            min_confidence: float = 2.0, options_json: str = "{}", data_root: str = "",
            workers: int = 1) -> NamedTuple("WindingOutputs", [("rows_out", int), ("decided", int)]):
    """galmorph.catalogue.winding.write_winding_manifest: adds the winding columns (winding CW/ACW/None,
    winding_score > 0 = CW, winding_z, winding_confidence = |z|, the annulus radii, flags).

    ``min_confidence``: |z| below it leaves ``winding`` None; ``options_json``: further WindingOptions
    fields; ``workers``: processes (match the step's CPU request)."""
    from galmorph import steps

    return steps.winding(manifest.path, measured.path, quarantine.path, min_confidence=min_confidence,
                         options_json=options_json, data_root=data_root, workers=workers,
                         measured_metadata=measured.metadata)
