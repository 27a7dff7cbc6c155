"""Load components (``components/<name>/component.py``) and pipelines (``pipelines/<name>.py``) by path."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

from galmorph.pipelines import COMPONENTS, PIPELINES, repo_dir


def _load(modname: str, path) -> ModuleType:
    if modname in sys.modules:
        return sys.modules[modname]
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    spec = importlib.util.spec_from_file_location(modname, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[modname] = mod
    spec.loader.exec_module(mod)
    return mod


def load_component(name: str):
    """The KFP component object defined in ``components/<name>/component.py``."""
    if name not in COMPONENTS:
        raise ValueError(f"unknown component {name!r}; expected one of {list(COMPONENTS)}")
    mod = _load(f"galmorph_components.{name}", repo_dir("components") / name / "component.py")
    return getattr(mod, name)


def load_pipeline_module(name: str) -> ModuleType:
    if name not in PIPELINES:
        raise ValueError(f"unknown pipeline {name!r}; expected one of {list(PIPELINES)}")
    return _load(f"galmorph_pipelines.{name}", repo_dir("pipelines") / f"{name}.py")


def load_pipeline(name: str):
    """The ``@dsl.pipeline`` function of ``pipelines/<name>.py`` (attribute ``pipeline``)."""
    return load_pipeline_module(name).pipeline
