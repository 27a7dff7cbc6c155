"""KFP component: pin the model a run uses (alias -> registry version)."""

from kfp import dsl

from galmorph.container_images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def resolve_model(task: str, model_alias: str = "champion", model_uri: str = "", tracking_uri: str = "") -> str:
    """galmorph.promotion.registry.pinned_model_uri: ``model_uri`` (default ``models:/galmorph-<task>@<model_alias>``)
    resolved to ``models:/NAME/VERSION``, so that every scoring worker uses the same version even if the
    alias moves during the run."""
    from galmorph import steps

    return steps.resolve_model(task, model_alias=model_alias, model_uri=model_uri, tracking_uri=tracking_uri)
