"""KFP component: measure the m = 1 Fourier amplitude A1 (lopsidedness) of every galaxy of a manifest."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from galmorph.container_images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def a1(manifest: Input[Dataset], measured: Output[Dataset], quarantine: Output[Dataset], pixel_scale: float = 0.396,
       data_root: str = "", workers: int = 1) -> NamedTuple("A1Outputs", [("rows_out", int), ("finite_a1", int)]):
    """galmorph.catalogue.a1.measure_a1_manifest: adds the A1 columns (a1, a1_err, centre, radii, flags).

    ``workers``: processes (match the step's CPU request)."""
    from galmorph import steps

    return steps.a1(manifest.path, measured.path, quarantine.path, pixel_scale=pixel_scale, data_root=data_root,
                    workers=workers, measured_metadata=measured.metadata)
