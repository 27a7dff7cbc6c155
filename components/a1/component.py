"""KFP component: measure the m = 1 Fourier amplitude A1 (lopsidedness) of every galaxy of a manifest."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from galmorph.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def a1(manifest: Input[Dataset], measured: Output[Dataset], quarantine: Output[Dataset], pixel_scale: float = 0.396,
       data_root: str = "", workers: int = 1) -> NamedTuple("A1Outputs", [("rows_out", int), ("finite_a1", int)]):
    """galmorph.imaging.a1.measure_a1_manifest: adds the A1 columns (a1, a1_err, centre, radii, flags).

    ``workers``: processes (match the step's CPU request)."""
    from collections import namedtuple

    from galmorph.imaging.a1 import measure_a1_manifest
    from galmorph.pipelines.runtime import open_dataset, setup

    _, root = setup(data_root=data_root)
    res = measure_a1_manifest(open_dataset(manifest.path), measured.path, quarantine_path=quarantine.path,
                              data_root=root, pixel_scale=pixel_scale, progress=False, workers=workers)
    measured.metadata.update({"rows": res["rows_out"], "finite_a1": res["finite_a1"]})
    return namedtuple("A1Outputs", ["rows_out", "finite_a1"])(res["rows_out"], res["finite_a1"])
