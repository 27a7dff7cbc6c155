"""Names of the galmorph container images (built from infra/docker/ by ``make images``).

One project image serves the CPU and the GPU steps (the locked torch is the CUDA build); it carries
both names below so that clusters may still point the GPU steps elsewhere. The app image (MLflow
server, Evidently UI, labelling app) is a thin layer on it. Registry and tag come from the settings
(``GALMORPH_IMAGE_REGISTRY``, ``GALMORPH_IMAGE_TAG``); the compiled pipelines embed the names, so
recompile them (``galmorph pipeline compile``) after changing either.
"""

from __future__ import annotations

from galmorph.settings import get_settings


#: The Dockerfile each image is built from (relative to the project root; ``infra/docker/build-images.sh``).
DOCKERFILES: dict[str, str] = {"cpu": "infra/docker/project/Dockerfile", "gpu": "infra/docker/project/Dockerfile",
                               "app": "infra/docker/app/Dockerfile"}


def image_names(registry: str | None = None, tag: str | None = None) -> dict[str, str]:
    """``{"cpu", "gpu", "app"}`` -> image reference, for ``registry``/``tag`` (default: the settings)."""
    s = get_settings()
    registry = (registry or s.image_registry).rstrip("/")
    tag = tag or s.image_tag
    return {kind: f"{registry}/galmorph-{kind}:{tag}" for kind in ("cpu", "gpu", "app")}


_NAMES = image_names()
REGISTRY = get_settings().image_registry.rstrip("/")
VERSION = get_settings().image_tag
CPU_IMAGE = _NAMES["cpu"]
GPU_IMAGE = _NAMES["gpu"]
APP_IMAGE = _NAMES["app"]
