"""A1 results and errors: :class:`A1Result` (one measurement), :class:`A1Profile` (per annulus),
the quality flags and :class:`A1Error`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Quality flags that :func:`lopsidedness_a1` can raise (``A1Result.flags``).
FLAG_DESCRIPTIONS: dict[str, str] = {
    "annulus_few_pixels": "an annulus had fewer unmasked in-image pixels than min_pixels (dropped)",
    "annuli_truncated": "the R90 circle crosses the image edge (partial annuli)",
    "centre_near_edge": "the centre is within edge_margin px of the image edge",
    "peak_at_search_edge": "the brightest pixel lies on the rim of the search radius (centre may be elsewhere)",
    "saturated": "pixels at or above the saturation level inside R90",
    "galaxy_not_detected": "sep found no source at the centre",
    "high_masked_fraction": "more than max_masked_fraction of the pixels between R50 and R90 were masked",
    "cog_not_converged": "the curve of growth never reached the Petrosian criterion; total flux at the largest radius",
    "nonpositive_a0": "an annulus had mean intensity <= 0 (dropped)",
    "no_valid_annuli": "no annulus could be fitted; A1 is NaN",
    "invalid_radii": "R50/R90 unusable (non-finite, <= 0 or R90 <= R50)",
    "background_failed": "the masked second background pass failed; first pass used",
    "nonfinite_pixels": "the image has NaN/inf pixels (excluded)",
    "image_padding": "the image has constant-valued padding (frame edge; excluded)",
}



class A1Error(ValueError):
    """The A1 measurement cannot run on this input (bad array, bad arguments)."""


def _f(v: Any) -> Any:
    """JSON-safe float (NaN/inf -> None)."""
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


@dataclass
class A1Profile:
    """Per-annulus Fourier profile (arrays of length n_annuli; ``amp``/``phase`` are (n, mmax))."""

    r_inner: np.ndarray
    r_outer: np.ndarray
    radius: np.ndarray  # geometric mid radius of each annulus
    n_pixels: np.ndarray  # in-image pixels fitted
    n_masked: np.ndarray  # of which were interpolated
    valid: np.ndarray  # bool: used for A1
    a0: np.ndarray
    a0_err: np.ndarray
    amp: np.ndarray  # A_m = sqrt(a_m^2 + b_m^2) / a0, m = 1..mmax
    amp_err: np.ndarray
    phase: np.ndarray  # radians in [0, 2 pi / m)
    chi2_red: np.ndarray

    @property
    def a1(self) -> np.ndarray:
        return self.amp[:, 0]

    @property
    def a1_err(self) -> np.ndarray:
        return self.amp_err[:, 0]

    def to_dict(self) -> dict:
        mmax = self.amp.shape[1] if self.amp.ndim == 2 else 0
        out: dict[str, Any] = {
            "radius": [_f(v) for v in self.radius],
            "r_inner": [_f(v) for v in self.r_inner],
            "r_outer": [_f(v) for v in self.r_outer],
            "n_pixels": [int(v) for v in self.n_pixels],
            "n_masked": [int(v) for v in self.n_masked],
            "valid": [bool(v) for v in self.valid],
            "a0": [_f(v) for v in self.a0],
            "chi2_red": [_f(v) for v in self.chi2_red],
        }
        for m in range(1, mmax + 1):
            out[f"A{m}"] = [_f(v) for v in self.amp[:, m - 1]]
            out[f"A{m}_err"] = [_f(v) for v in self.amp_err[:, m - 1]]
            out[f"phase{m}"] = [_f(v) for v in self.phase[:, m - 1]]
        return out


@dataclass
class A1Result:
    """Outcome of one A1 measurement (see :func:`lopsidedness_a1`)."""

    a1: float
    a1_err: float
    x0: float  # measured centre, column (display orientation)
    y0: float  # measured centre, row from the top
    r50: float
    r90: float
    radii_source: str  # "given" | "curve_of_growth"
    centre_source: str  # "peak+moment" | "given"
    masked_fraction: float
    n_masked_sources: int
    background: float  # median sky level subtracted
    background_rms: float
    flags: list[str] = field(default_factory=list)
    profile: A1Profile | None = None
    a1_phase: float = float("nan")  # weighted circular mean of the m=1 phase (radians)
    start: tuple[float, float] = (float("nan"), float("nan"))
    shape: tuple[int, int] = (0, 0)
    # arcsec/px of the image and where it came from ("wcs" | "default"); None for a bare array
    pixel_scale: float | None = None
    pixel_scale_source: str | None = None

    @property
    def ok(self) -> bool:
        return math.isfinite(self.a1)

    def _arcsec(self, r_px: float) -> float | None:
        return None if self.pixel_scale is None else _f(r_px * self.pixel_scale)

    def to_dict(self, profile: bool = True) -> dict:
        d: dict[str, Any] = {
            "a1": _f(self.a1), "a1_err": _f(self.a1_err), "a1_phase": _f(self.a1_phase),
            "centre": {"x": _f(self.x0), "y": _f(self.y0), "source": self.centre_source},
            "start": {"x": _f(self.start[0]), "y": _f(self.start[1])},
            "r50": _f(self.r50), "r90": _f(self.r90), "radii_source": self.radii_source,
            "masked_fraction": _f(self.masked_fraction), "n_masked_sources": int(self.n_masked_sources),
            "background": _f(self.background), "background_rms": _f(self.background_rms),
            "shape": list(self.shape), "flags": list(self.flags),
            "pixel_scale_arcsec": _f(self.pixel_scale), "pixel_scale_source": self.pixel_scale_source,
            "r50_arcsec": self._arcsec(self.r50), "r90_arcsec": self._arcsec(self.r90),
        }
        if profile:
            d["profile"] = self.profile.to_dict() if self.profile is not None else None
        return d

