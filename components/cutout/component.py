"""KFP component: cut out every galaxy of a manifest (FITS + WCS or raster centre crop) into a dataset folder."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from galmorph.container_images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def cutout(manifest: Input[Dataset], cutouts: Output[Dataset], quarantine: Output[Dataset], size_px: int = 64,
           crop_fraction: float = 1.0, greyscale: bool = False, size_r90: float = 0.0,
           data_root: str = "", task: str = "", preset: str = "", overrides_json: str = "{}", model_uri: str = "",
           min_extent_px: float = 40.0, tracking_uri: str = "",
           write_images: bool = True) -> NamedTuple("CutoutOutputs", [("rows_out", int), ("rows_quarantined", int)]):
    """galmorph.catalogue.cutout.make_cutouts into the ``cutouts`` folder (png/ + manifest.parquet with image URIs
    relative to the folder); failed rows go to ``quarantine``.

    Framing from the model: ``model_uri`` (its ModelSpec, rescoring) or ``task`` + ``preset`` (training):
    full-frame cutouts the model crops itself (``size_px`` 0: image_size / crop); a ``crop_fraction`` < 1
    as well is refused (cropped twice). Galaxies under ``min_extent_px`` in the model's input are counted
    (``n_small_extent`` + a warning in the metadata). ``write_images`` false (the rescoring pipeline's default):
    raster rows pass through undecoded with their own images (the scoring pass decodes and frames them once);
    FITS rows are still cut at their WCS position."""
    from galmorph import steps

    return steps.cutout(manifest.path, cutouts.path, quarantine.path, size_px=size_px, crop_fraction=crop_fraction,
                        greyscale=greyscale, size_r90=size_r90, data_root=data_root, task=task, preset=preset,
                        overrides_json=overrides_json, model_uri=model_uri, min_extent_px=min_extent_px,
                        tracking_uri=tracking_uri, write_images=write_images, cutouts_metadata=cutouts.metadata)
