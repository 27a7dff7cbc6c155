"""Kubeflow Pipelines v2 integration: the pipeline steps (one library call per component), pipeline
compilation, local and remote runs, schedules, and the small dataset helpers the components share.

The pipeline definitions are the package ``galmorph_pipelines`` (the top-level ``pipelines/`` folder,
``pipelines/<name>.py``) and the components the package ``galmorph_components``
(``components/<name>/component.py``); both are installed with galmorph (editable or wheel) and imported
normally (:mod:`galmorph.pipelines.loader` looks them up by name). Compiled IR YAML packages are
``pipelines/<name>.yaml`` (:func:`compiled_dir`).
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
