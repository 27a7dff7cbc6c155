"""Kubeflow Pipelines v2 integration: component loading, pipeline compilation, local and remote runs,
schedules, and the small dataset helpers the components share.

The pipeline definitions live in ``pipelines/<name>.py`` and the components in
``components/<name>/component.py`` at the repository root (the layout users browse); this package
loads them by path. Compiled IR YAML packages are ``pipelines/<name>.yaml``.
"""

from __future__ import annotations

from pathlib import Path

from galmorph.settings import REPO_ROOT

PIPELINES: tuple[str, ...] = ("training", "rescoring", "labelling")
COMPONENTS: tuple[str, ...] = ("ingest", "validate", "cutout", "a1", "split", "train", "evaluate", "promote",
                               "shard", "resolve_model", "score", "merge", "drift", "publish", "label_sample", "label_queue",
                               "label_export")


def repo_dir(name: str) -> Path:
    """``components/`` or ``pipelines/`` of the checkout (or of the image's /opt/galmorph)."""
    for base in (REPO_ROOT, Path.cwd()):
        p = base / name
        if p.is_dir():
            return p
    raise FileNotFoundError(f"no {name}/ folder beside {REPO_ROOT} or in {Path.cwd()}")


__all__ = ["COMPONENTS", "PIPELINES", "repo_dir"]
