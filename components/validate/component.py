"""KFP component: validate a manifest (great-expectations suite + per-image checks)."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Output

from galmorph.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def validate(manifest: Input[Dataset], passed: Output[Dataset], quarantine: Output[Dataset],
             report: Output[Artifact], metrics: Output[Metrics], z_min: float = 0.01, z_max: float = 0.1,
             max_failure_fraction: float = 0.05, check_images: bool = True,
             data_root: str = "") -> bool:
    """galmorph.validation.validate_manifest. Returns ``success`` (the single ``Output``): False above
    ``max_failure_fraction``, and the pipelines stop there through ``dsl.If(validate.output == True)``.
    Row counts are in ``metrics`` (rows, passed, quarantined, failure_fraction)."""
    from galmorph.manifest import write_manifest
    from galmorph.validation import ValidationConfig, validate_manifest
    from galmorph.pipelines.runtime import setup

    _, root = setup(data_root=data_root)
    cfg = ValidationConfig(z_min=z_min, z_max=z_max, max_failure_fraction=max_failure_fraction,
                           check_images=check_images)
    res = validate_manifest(manifest.path, cfg, data_root=root, out_manifest=passed.path,
                            quarantine_path=quarantine.path, report_path=report.path, log_to_mlflow=False,
                            progress=False)
    if res.out_manifest is None and res.passed_manifest is not None:  # schema errors: still a valid output
        write_manifest(res.passed_manifest, passed.path, kind="validated")
    for k, v in (("rows", res.rows), ("passed", res.passed), ("quarantined", res.n_quarantined),
                 ("failure_fraction", res.failure_fraction), ("success", float(res.success))):
        metrics.log_metric(k, float(v))
    return bool(res.success)
