"""KFP component: cut out every galaxy of a manifest (FITS + WCS or raster centre crop) into a dataset folder."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from galmorph.container_images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def cutout(manifest: Input[Dataset], cutouts: Output[Dataset], quarantine: Output[Dataset], size_px: int = 64,
           crop_fraction: float = 1.0, greyscale: bool = False, size_r90: float = 0.0,
           data_root: str = "") -> NamedTuple("CutoutOutputs", [("rows_out", int), ("rows_quarantined", int)]):
    """galmorph.cutout.make_cutouts into the ``cutouts`` folder (png/ + manifest.parquet with image URIs
    relative to the folder); failed rows go to ``quarantine``."""
    from galmorph.pipelines import steps

    return steps.cutout(manifest.path, cutouts.path, quarantine.path, size_px=size_px, crop_fraction=crop_fraction,
                        greyscale=greyscale, size_r90=size_r90, data_root=data_root,
                        cutouts_metadata=cutouts.metadata)
