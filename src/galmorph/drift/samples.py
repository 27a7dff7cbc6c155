"""Manifests of the real survey samples used to demonstrate and test drift monitoring.

:func:`real_manifest` reads them with the data-foundation ingest (:func:`galmorph.catalogue.ingest.load_source`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from galmorph.catalogue.ingest import load_source

log = logging.getLogger(__name__)

SOURCES = ("gz1_chirality", "gz2_arms", "decals", "hart")


def real_manifest(source: str, data_root: Path | str) -> pd.DataFrame:
    """Manifest of one real sample under ``data_root`` (``gz1_chirality``, ``gz2_arms``,
    ``decals`` or ``hart``); catalogue rows the ingest quarantines are logged and left out."""
    if source not in SOURCES:
        raise ValueError(f"unknown sample {source!r}; expected one of {SOURCES}")
    man, quarantine, _ = load_source(source, Path(data_root))
    if quarantine:
        log.info("%s: %d catalogue rows quarantined by ingest", source, len(quarantine))
    return man
