"""The measurements the labelling app draws over a galaxy (the task's overlays,
:mod:`galmorph.labelling.choices`): ``a1`` (the A1 centre and R50/R90 circles, lopsided) and
``winding`` (the winding annulus and sense, chirality and arms). Each is read from the queue's own
columns when the labelling pipeline measured them, else measured on the image when first asked."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

A1_FIELDS = ("a1", "a1_err", "a1_x0", "a1_y0", "a1_r50_px", "a1_r90_px", "a1_width", "a1_height", "a1_flags",
             "a1_error", "a1_radii_source")


def clean(v):
    """A JSON-ready scalar: None for missing values (None, NA, NaN), numpy scalars as Python ones."""
    if v is None or v is pd.NA:
        return None
    try:
        if isinstance(v, float) and math.isnan(v):
            return None
        if pd.isna(v):
            return None
    except (TypeError, ValueError):
        pass
    return v.item() if hasattr(v, "item") else v


def a1_info(row: dict, data_root: Path | str | None = None, measure_missing: bool = True) -> dict:
    """The A1 overlay of one queue row: the queue's ``a1*`` columns, or A1 measured now when the queue
    has neither a value nor an error (and ``measure_missing``)."""
    info = {k: clean(row.get(k)) for k in A1_FIELDS}
    if info["a1"] is None and info["a1_error"] is None and measure_missing:
        from galmorph.catalogue.a1 import measure_a1_frame

        measured, quarantine = measure_a1_frame(pd.DataFrame([row]), data_root=data_root, progress=False)
        if len(measured):
            info = {k: clean(measured.iloc[0].get(k)) for k in A1_FIELDS}
        else:
            info["a1_error"] = quarantine[0]["reason"] if quarantine else "not measured"
    return info


def winding_info(row: dict, data_root: Path | str | None = None) -> dict:
    """The winding overlay of one queue row: the measured winding sense (``CW``/``ACW``/None),
    score and confidence (the queue's ``winding*`` columns when the labelling pipeline measured them,
    else measured now), the centre and annulus radii and the image size (measured on the image)."""
    from galmorph.catalogue.manifest import ManifestError, resolve_image_uri
    from galmorph.imaging.io import ImageError
    from galmorph.imaging.winding import WindingError, WindingOptions, load_for_winding, options_for_file, winding_sense

    info: dict = {"winding": None, "winding_score": None, "winding_confidence": None, "x0": None, "y0": None,
                  "r_inner": None, "r_outer": None, "width": None, "height": None, "error": None, "source": None}
    try:
        img, linear = load_for_winding(resolve_image_uri(str(row.get("image_uri")), data_root))
        res = winding_sense(img, options_for_file(WindingOptions(), linear))
    except (ImageError, ManifestError, WindingError, OSError) as exc:
        info["error"] = str(exc)
        return info
    info.update(winding=res.winding, winding_score=clean(res.score), winding_confidence=clean(res.confidence),
                x0=clean(res.x0), y0=clean(res.y0), r_inner=clean(res.r_inner), r_outer=clean(res.r_outer),
                width=int(img.shape[1]), height=int(img.shape[0]), source="measured")
    if clean(row.get("winding_score")) is not None:  # the queue's own measurement wins
        info.update(winding=clean(row.get("winding")), winding_score=clean(row.get("winding_score")),
                    winding_confidence=clean(row.get("winding_confidence")), source="queue")
    return info


class OverlayCache:
    """The overlays of ``overlays`` per object, measured once each."""

    def __init__(self, overlays: tuple[str, ...], data_root: Path | str | None, measure_missing_a1: bool = True):
        self.overlays, self.data_root, self.measure_missing_a1 = tuple(overlays), data_root, measure_missing_a1
        self._cache: dict[tuple[str, str], dict] = {}

    def get(self, row: dict) -> dict:
        """``{overlay name: info}`` of the row's object."""
        out = {}
        for name in self.overlays:
            key = (name, str(row["object_id"]))
            if key not in self._cache:
                self._cache[key] = (a1_info(row, self.data_root, self.measure_missing_a1) if name == "a1"
                                    else winding_info(row, self.data_root))
            out[name] = self._cache[key]
        return out
