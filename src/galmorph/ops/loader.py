"""Components and pipelines by name (for the CLI and the compiler), imported as normal modules:
``galmorph_components.<name>.component`` and ``galmorph_pipelines.<name>``."""

from __future__ import annotations

import importlib
from types import ModuleType

from galmorph.ops import COMPONENTS, PIPELINES


def load_component(name: str):
    """The KFP component ``<name>`` of ``galmorph_components.<name>.component``."""
    if name not in COMPONENTS:
        raise ValueError(f"unknown component {name!r}; expected one of {list(COMPONENTS)}")
    return getattr(importlib.import_module(f"galmorph_components.{name}.component"), name)


def load_pipeline_module(name: str) -> ModuleType:
    """The module ``galmorph_pipelines.<name>`` (``pipelines/<name>.py``)."""
    if name not in PIPELINES:
        raise ValueError(f"unknown pipeline {name!r}; expected one of {list(PIPELINES)}")
    return importlib.import_module(f"galmorph_pipelines.{name}")


def load_pipeline(name: str):
    """The ``@dsl.pipeline`` function ``galmorph_pipelines.<name>.pipeline``."""
    return load_pipeline_module(name).pipeline
