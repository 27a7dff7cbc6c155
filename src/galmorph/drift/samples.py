"""Manifests of the real survey samples used to demonstrate and test drift monitoring.

:func:`real_manifest` uses the data-foundation ingest (:func:`galmorph.ingest.load_source`) when it
is installed and falls back to a small local reader of the same files otherwise, so that drift
monitoring can be shown on real sky independently of the ingest stage.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from galmorph.manifest import assign_z_bin, conform, data_uri

log = logging.getLogger(__name__)

SOURCES = ("gz1_chirality", "gz2_arms", "decals", "hart")


def real_manifest(source: str, data_root: Path | str) -> pd.DataFrame:
    """Manifest of one real sample under ``data_root`` (``gz1_chirality``, ``gz2_arms``,
    ``decals`` or ``hart``)."""
    if source not in SOURCES:
        raise ValueError(f"unknown sample {source!r}; expected one of {SOURCES}")
    root = Path(data_root)
    try:
        from galmorph.ingest import load_source
    except ImportError:
        load_source = None
    if load_source is not None:
        man, quarantine, _ = load_source(source, root)
        if quarantine:
            log.info("%s: %d catalogue rows quarantined by ingest", source, len(quarantine))
        return man
    return _local_manifest(source, root)


def _local_manifest(source: str, root: Path) -> pd.DataFrame:
    if source == "gz1_chirality":
        lab = pd.read_csv(root / "gz1_chirality/labels.csv", dtype={"dr7objid": str})
        df = pd.DataFrame({"object_id": lab["dr7objid"], "survey": "sdss", "z": np.nan,
                           "image_uri": [data_uri(f"gz1_chirality/images/{o}.jpeg") for o in lab["dr7objid"]],
                           "label": lab["gz1_class"].map({"clockwise": "CW", "anticlockwise": "ACW"}).fillna("other"),
                           "task": "chirality", "provenance": "gz1_chirality/labels.csv"})
    elif source == "gz2_arms":
        lab = pd.read_csv(root / "gz2_arms/labels.csv", dtype={"dr7objid": str})
        df = lab.rename(columns={"dr7objid": "object_id"}).assign(
            survey="sdss", image_uri=[data_uri(f"gz2_arms/images/{o}.png") for o in lab["dr7objid"]],
            label=None, task=None, provenance="gz2_arms/labels.csv")
    elif source == "decals":
        cat = pd.read_csv(root / "decals/catalog.csv")
        df = cat.rename(columns={"iauname": "object_id"}).assign(
            survey="decals", z=np.nan, image_uri=[data_uri(f"decals/images/{o}.jpg") for o in cat["iauname"]],
            label=None, task=None, provenance="decals/catalog.csv")
    else:  # hart
        cat = pd.read_csv(root / "catalogues/hart2017_spirals.csv", dtype={"dr7objid": str})
        keep = ["dr7objid", "ra", "dec", "Z", "logMstar", "PETRO_THETA", "SERSIC_BA", "p_bar"]
        df = cat[keep].rename(columns={"dr7objid": "object_id", "Z": "z"}).assign(
            survey="sdss", image_uri="", label=None, task=None, provenance="catalogues/hart2017_spirals.csv")
    df["z_bin"] = assign_z_bin(df["z"])
    return conform(df)
