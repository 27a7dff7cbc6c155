"""KFP component: cut out every galaxy of a manifest (FITS + WCS or raster centre crop) into a dataset folder."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from galmorph.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def cutout(manifest: Input[Dataset], cutouts: Output[Dataset], quarantine: Output[Dataset], size_px: int = 64,
           crop_fraction: float = 1.0, greyscale: bool = False, size_r90: float = 0.0,
           data_root: str = "") -> NamedTuple("CutoutOutputs", [("rows_out", int), ("rows_quarantined", int)]):
    """galmorph.cutout.make_cutouts into the ``cutouts`` folder (png/ + manifest.parquet with image URIs
    relative to the folder); failed rows go to ``quarantine``."""
    import shutil
    from collections import namedtuple

    from galmorph.cutout import CutoutConfig, make_cutouts
    from galmorph.pipelines.artifacts import relativize_images
    from galmorph.pipelines.runtime import as_dir, open_dataset, setup

    _, root = setup(data_root=data_root)
    cfg = CutoutConfig(size_px=size_px, crop_fraction=crop_fraction, greyscale=greyscale,
                       size_r90=size_r90 or None)
    out = as_dir(cutouts.path)
    res = make_cutouts(open_dataset(manifest.path), out, cfg, data_root=root, progress=False)
    relativize_images(out)
    shutil.copyfile(res.quarantine_path, quarantine.path)
    cutouts.metadata.update({"rows": res.n_out})
    return namedtuple("CutoutOutputs", ["rows_out", "rows_quarantined"])(res.n_out, res.n_quarantined)
