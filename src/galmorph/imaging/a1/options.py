"""How the A1 measurement runs: :class:`A1Options`, one frozen object for every method option.

Per-image inputs (the expected position, R50/R90) are arguments of :func:`lopsidedness_a1`, not
options. The fields are grouped by the step of the measurement they set.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from galmorph.imaging.a1.result import A1Error

#: Pixel-noise models for the annulus fits (``A1Options.noise``).
NOISE_MODELS: dict[str, str] = {
    "residual": "assumed variance + k I, k measured from the robust (MAD) fit residuals of all annuli",
    "assumed": "background rms^2 (+ I/gain when gain is given), as is",
    "chi2": "assumed variance inflated by each annulus' reduced chi-square where it exceeds 1",
}

#: Weightings of the annuli in the mean A1 (``A1Options.weighting``).
WEIGHTINGS: dict[str, str] = {
    "inverse_variance": "1 / noise variance of each A1(r) (independent of the measured amplitude)",
    "uniform": "plain mean over the valid annuli",
}


@dataclass(frozen=True)
class A1Options:
    """Method options of :func:`lopsidedness_a1` (defaults: the documented measurement).

    1. Sky and other sources
        subtract_background: subtract the two-pass ``sep`` background.
        bkg_mesh, bkg_filter: sep background mesh (px, capped at the image size) and filter size.
        bkg_galaxy_factor: in the second pass the galaxy is masked out to this many isophotal radii.
        mask_sources: detect other sources with ``sep`` and interpolate over them.
        detect_thresh, detect_minarea, deblend_cont: sep detection threshold (x rms), minimum
            area (px) and deblending contrast.
        detect_bin: detect on an n x n binned image (1; 2 makes sep ~3x faster on large cutouts but
            deblends stars lying on the galaxy less well; None = 2 for images >= 128 px).
        detect_radius: detect only within this many px of the expected position (default, when R90
            is given: 1.2 R90 + search_radius + 6; without radii the whole image).
        mask_dilate: px by which the other sources' segments are grown.
    3. Centre
        refine_centre: search the brightest pixel and take the 3x3 first moment; without, the
            expected position is the centre.
        search_radius: px around the expected position searched for the peak.
        centre_iterations: sub-pixel iterations of the 3x3 first moment (0 = a single moment).
    5. Annuli and fits
        n_annuli: log-spaced annuli between R50 and R90 (reduced so each is >= 1 px wide).
        mmax: highest Fourier mode fitted.
        min_pixels: fewest unmasked pixels an annulus needs; ``min_coverage`` the fraction of its
            full ring that must fall inside the image.
        noise: pixel-noise model (:data:`NOISE_MODELS`).
        gain: e-/count; adds the source Poisson noise I/gain to the assumed pixel variance.
    6. Mean A1
        debias: correct A1 for the noise bias of amplitudes (the profile in quadrature).
        weighting: :data:`WEIGHTINGS`.
    Quality flags
        saturation: raw pixel level (before sky subtraction) at or above which pixels inside R90
            raise ``saturated``; None = none known (the file driver then uses the FITS SATURATE).
        edge_margin: px from the image edge within which the centre raises ``centre_near_edge``.
        max_masked_fraction: masked fraction between R50 and R90 above which
            ``high_masked_fraction`` is raised.
    """

    # 1. sky and other sources
    subtract_background: bool = True
    bkg_mesh: int = 64
    bkg_filter: int = 3
    bkg_galaxy_factor: float = 2.0
    mask_sources: bool = True
    detect_thresh: float = 1.5
    detect_minarea: int = 5
    deblend_cont: float = 0.005
    detect_bin: int | None = 1
    detect_radius: float | None = None
    mask_dilate: int = 2
    # 3. centre
    refine_centre: bool = True
    search_radius: float = 5.0
    centre_iterations: int = 30
    # 5. annuli and fits
    n_annuli: int = 4
    mmax: int = 5
    min_pixels: int = 30
    min_coverage: float = 0.6
    noise: str = "residual"
    gain: float | None = None
    # 6. mean A1
    debias: bool = True
    weighting: str = "inverse_variance"
    # quality flags
    saturation: float | None = None
    edge_margin: float = 5.0
    max_masked_fraction: float = 0.3

    def __post_init__(self) -> None:
        if self.mmax < 1:
            raise A1Error("mmax must be >= 1")
        if self.noise not in NOISE_MODELS:
            raise A1Error(f"unknown noise model {self.noise!r} (one of {', '.join(NOISE_MODELS)})")
        if self.weighting not in WEIGHTINGS:
            raise A1Error(f"unknown weighting {self.weighting!r} (one of {', '.join(WEIGHTINGS)})")

    def with_overrides(self, **overrides: Any) -> A1Options:
        """A copy with the named fields changed (unknown names raise ``TypeError`` listing the fields)."""
        if not overrides:
            return self
        unknown = sorted(set(overrides) - {f.name for f in fields(self)})
        if unknown:
            raise TypeError(f"unknown A1 option(s) {', '.join(unknown)}; "
                            f"A1Options fields: {', '.join(f.name for f in fields(self))}")
        return replace(self, **overrides)


def resolve_options(options: A1Options | None, overrides: dict[str, Any]) -> A1Options:
    """``options`` (default :class:`A1Options`) with the keyword ``overrides`` applied."""
    return (options if options is not None else A1Options()).with_overrides(**overrides)
