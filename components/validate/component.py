"""KFP component: validate a manifest (great-expectations suite + per-image checks)."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Output

from galmorph.container_images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def validate(manifest: Input[Dataset], passed: Output[Dataset], quarantine: Output[Dataset],
             report: Output[Artifact], metrics: Output[Metrics], z_min: float = 0.01, z_max: float = 0.1,
             max_failure_fraction: float = 0.05, check_images: bool = True,
             data_root: str = "") -> bool:
    """galmorph.catalogue.validation.validate_manifest. Returns ``success`` (the single ``Output``): False above
    ``max_failure_fraction``, and the pipelines stop there through ``dsl.If(validate.output == True)``.
    Row counts are in ``metrics`` (rows, passed, quarantined, failure_fraction)."""
    from galmorph import steps

    return steps.validate(manifest.path, passed.path, quarantine.path, report.path, z_min=z_min, z_max=z_max,
                          max_failure_fraction=max_failure_fraction, check_images=check_images, data_root=data_root,
                          metrics=metrics.metadata)
