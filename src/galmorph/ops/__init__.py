"""The operations layer: everything that drives the Kubeflow layer from above. Pipeline lookup by name
(:mod:`~galmorph.ops.loader`), compilation (:mod:`~galmorph.ops.compile`), local and remote runs and
schedules (:mod:`~galmorph.ops.run`), the podman-backed Docker runner (:mod:`~galmorph.ops.docker_runner`),
component README generation (:mod:`~galmorph.ops.docs`), the demo (:mod:`~galmorph.ops.demo`), the release
watcher (:mod:`~galmorph.ops.release`) and the local stack (:mod:`~galmorph.ops.stack`).

It is the only part of the library that imports the pipeline definitions (``galmorph_pipelines``, the
top-level ``pipelines/`` folder), the components (``galmorph_components``, ``components/<name>/``) or the
dashboards (``galmorph_monitoring``, ``monitoring/``); the step library the components call
(:mod:`galmorph.steps`) and the area packages below it never do (import contracts in ``pyproject.toml``).
Compiled IR YAML packages are ``pipelines/<name>.yaml`` (:func:`compiled_dir`).
"""

from __future__ import annotations

from pathlib import Path

PIPELINES: tuple[str, ...] = ("training", "rescoring", "labelling")
COMPONENTS: tuple[str, ...] = ("ingest", "validate", "cutout", "a1", "winding", "split", "train", "evaluate", "promote",
                               "shard", "resolve_model", "score", "merge", "drift", "publish", "label_sample", "label_queue",
                               "label_export")


def compiled_dir() -> Path:
    """The folder of the compiled pipeline packages: the ``galmorph_pipelines`` package folder
    (``pipelines/`` in a checkout, shipped with the wheel)."""
    import galmorph_pipelines

    return galmorph_pipelines.PACKAGE_DIR


__all__ = ["COMPONENTS", "PIPELINES", "compiled_dir"]
