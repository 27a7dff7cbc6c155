"""Lopsidedness: the m = 1 Fourier amplitude A1 of a galaxy's light between R50 and R90.

- :mod:`~galmorph.imaging.a1.core`: :func:`lopsidedness_a1` on an array, a composition of the
  measurement's steps (listed in that module's docstring), with the method options in one
  :class:`A1Options` (:mod:`~galmorph.imaging.a1.options`);
- the steps' building blocks: :mod:`~galmorph.imaging.a1.sky` (background, detection, masking),
  :mod:`~galmorph.imaging.a1.centre` (centre, curve of growth), :mod:`~galmorph.imaging.a1.fourier`
  (annulus fits, amplitudes, debiased mean);
- :mod:`~galmorph.imaging.a1.result`: :class:`A1Result`, :class:`A1Profile`, the flags, :class:`A1Error`;
- :mod:`~galmorph.imaging.a1.driver`: files (pixel scale from the FITS WCS, else 0.396″) and
  manifests (process pool, quarantine).

Everything public is importable from here.
"""

from galmorph.imaging.a1.centre import curve_of_growth_radii, find_centre
from galmorph.imaging.a1.core import (
    AnnulusFit,
    FirstPassSky,
    edge_distance,
    first_pass_sky,
    fit_annulus_profile,
    galaxy_segment,
    locate_centre,
    lopsidedness_a1,
    mask_other_sources,
    measurement_radii,
    prepare_image,
    saturated_within,
    second_pass_sky,
)
from galmorph.imaging.a1.driver import (
    A1_COLUMNS,
    SDSS_PIXEL_SCALE,
    A1Image,
    load_for_a1,
    measure_a1_file,
    measure_a1_image,
    wcs_pixel_scale,
)
from galmorph.imaging.a1.fourier import (
    amplitudes_from_coef,
    annulus_snr,
    combine_annuli,
    debiased_mean_amplitude,
    fit_annuli,
    fourier_basis,
    rice_mean,
    source_noise_scale,
)
from galmorph.imaging.a1.options import NOISE_MODELS, WEIGHTINGS, A1Options, resolve_options
from galmorph.imaging.a1.result import FLAG_DESCRIPTIONS, A1Error, A1Profile, A1Result
from galmorph.imaging.a1.sky import (
    clipped_stats,
    detect_sources,
    dilate_mask,
    estimate_background,
    fill_masked,
    masked_background,
    padding_mask,
    ring_profile,
)

__all__ = [
    "A1_COLUMNS", "FLAG_DESCRIPTIONS", "NOISE_MODELS", "SDSS_PIXEL_SCALE", "WEIGHTINGS",
    "A1Error", "A1Image", "A1Options", "A1Profile", "A1Result", "AnnulusFit", "FirstPassSky",
    "amplitudes_from_coef", "annulus_snr", "clipped_stats", "combine_annuli", "curve_of_growth_radii",
    "debiased_mean_amplitude", "detect_sources", "dilate_mask", "edge_distance", "estimate_background",
    "fill_masked", "find_centre", "first_pass_sky", "fit_annuli", "fit_annulus_profile", "fourier_basis",
    "galaxy_segment", "load_for_a1", "locate_centre", "lopsidedness_a1", "mask_other_sources",
    "masked_background", "measure_a1_file", "measure_a1_image", 
    "measurement_radii", "padding_mask", "prepare_image", "resolve_options", "rice_mean", "ring_profile",
    "saturated_within", "second_pass_sky", "source_noise_scale", "wcs_pixel_scale",
]
