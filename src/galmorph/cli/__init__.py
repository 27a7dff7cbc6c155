"""The ``galmorph`` command-line interface.

Each area keeps its commands in its own module here; importing this package registers them all.
Heavy libraries (torch, mlflow, evidently, kfp) are imported inside the commands so that
``galmorph --help`` stays fast.
"""

from __future__ import annotations

import importlib
import pkgutil

from galmorph.cli.base import main

for _m in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _m != "base":
        importlib.import_module(f"{__name__}.{_m}")

__all__ = ["main"]
