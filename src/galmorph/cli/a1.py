"""``galmorph a1``: lopsidedness (m = 1 Fourier amplitude) of galaxy images or a whole manifest."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from galmorph.cli.base import fail, main
from galmorph.cli.options import check_measure_mode, data_root_option, json_option


@main.command("a1")
@click.argument("files", nargs=-1, type=click.Path(path_type=Path))
@click.option("--r50", type=float, default=None, help="R50 in px (with --r90); default: curve of growth.")
@click.option("--r90", type=float, default=None, help="R90 in px (with --r50).")
@click.option("--x0", type=float, default=None, help="Expected centre column (display orientation).")
@click.option("--y0", type=float, default=None, help="Expected centre row from the top (display orientation).")
@click.option("--ra", type=float, default=None, help="Expected position RA (deg), through the FITS WCS.")
@click.option("--dec", type=float, default=None, help="Expected position Dec (deg), through the FITS WCS.")
@click.option("--no-mask", is_flag=True, help="Do not mask other sources.")
@click.option("--no-refine", is_flag=True, help="Use the start position as the centre (no peak search/moment).")
@click.option("--bkg-mesh", type=click.IntRange(4), default=64, show_default=True, help="sep background mesh (px).")
@click.option("--search-radius", type=click.FloatRange(0.5), default=5.0, show_default=True,
              help="Peak search radius around the expected position (px).")
@click.option("--n-annuli", type=click.IntRange(1), default=4, show_default=True, help="Log-spaced annuli between R50 and R90.")
@click.option("--saturation", type=float, default=None, help="Saturation level (default: FITS SATURATE if any).")
@click.option("--gain", type=click.FloatRange(min=0, min_open=True), default=None,
              help="e-/count of the image: adds the galaxy's Poisson noise to the assumed pixel variance.")
@click.option("--noise", "noise_model", type=click.Choice(["residual", "assumed", "chi2"]), default="residual",
              show_default=True, help="Pixel-noise model of the annulus fits (see docs/a1_labelling.md).")
@json_option("Print one JSON object per input (JSON lines).")
@click.option("--no-profile", is_flag=True, help="Leave the per-annulus A_m profile out of the JSON.")
@click.option("--manifest", "manifest_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Measure every row of this manifest instead of FILEs (needs --out).")
@click.option("--out", "out_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Output manifest with the a1 columns added (with --manifest).")
@click.option("--pixel-scale", type=float, default=0.396, show_default=True,
              help="arcsec/px of images without a FITS WCS (else the WCS scale; the output states which) "
                   "for r50_arcsec/r90_arcsec manifest columns and the radii in arcsec.")
@click.option("--workers", type=click.IntRange(1), default=1, show_default=True,
              help="Processes for --manifest (one per core; the measurement is single-threaded).")
@data_root_option()
def a1_cmd(files, r50, r90, x0, y0, ra, dec, no_mask, no_refine, bkg_mesh, search_radius, n_annuli, saturation,
           gain, noise_model, as_json, no_profile, manifest_path, out_path, pixel_scale, workers, data_root) -> None:
    """Measure the lopsidedness A1 of the galaxy at the centre of each image FILE (FITS/PNG/JPEG).

    Sky subtracted with sep, other sources masked by interpolation, centre = brightest pixel near the
    expected position refined by the 3x3 first moment, A_m (m = 1..5) fitted in log-spaced annuli
    between R50 and R90. See docs/a1_labelling.md.

    With --json one JSON object per input is printed (JSON lines); an unreadable file gives an
    object with "error" set and the flag "unreadable". Exit code: 0 when every input gave a finite
    A1; 1 when any input was unreadable or gave no A1 (the other inputs are still printed);
    2 for usage errors.
    """
    from galmorph.imaging.a1 import A1Error, measure_a1_file
    from galmorph.imaging.io import ImageError

    if (r50 is None) != (r90 is None):
        fail("give both --r50 and --r90, or neither", 2)
    check_measure_mode(files, manifest_path, out_path, x0, y0)
    kwargs = dict(mask_sources=not no_mask, refine_centre=not no_refine, bkg_mesh=bkg_mesh,
                  search_radius=search_radius, n_annuli=n_annuli, gain=gain, noise=noise_model)
    if saturation is not None:
        kwargs["saturation"] = saturation
    if manifest_path is not None:
        from galmorph.catalogue.a1 import measure_a1_manifest
        from galmorph.settings import resolve_settings

        root = resolve_settings(data_root=data_root).data_root
        res = measure_a1_manifest(manifest_path, out_path, data_root=root,
                                  pixel_scale=pixel_scale, workers=workers, **kwargs)
        click.echo(json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in res.items()}))
        sys.exit(0 if res["quarantined"] == 0 and res["finite_a1"] == res["rows_out"] else 1)
    if not files:
        fail("no input files (give FILE... or --manifest M --out O)", 2)
    n_failed = 0
    for f in files:
        try:
            res = measure_a1_file(f, x0=x0, y0=y0, r50=r50, r90=r90, ra=ra, dec=dec, pixel_scale=pixel_scale, **kwargs)
        except (ImageError, A1Error, OSError) as exc:
            n_failed += 1
            obj = {"file": str(f), "a1": None, "a1_err": None, "flags": ["unreadable"], "error": str(exc)}
            if as_json:
                click.echo(json.dumps(obj))
            else:
                click.echo(f"{f}: ERROR {exc}")
            continue
        if not res.ok:
            n_failed += 1
        d = res.to_dict(profile=not no_profile)
        if as_json:
            obj = {"file": str(f), **d, "error": None if res.ok else "no A1: " + ", ".join(res.flags)}
            click.echo(json.dumps(obj))
        else:
            a1s = f"{res.a1:.3f} +- {res.a1_err:.3f}" if res.ok else "nan"
            click.echo(f"{f}: A1 = {a1s}  centre=({res.x0:.2f}, {res.y0:.2f})  R50={res.r50:.1f} R90={res.r90:.1f} "
                       f"({res.radii_source})  masked={res.masked_fraction:.2f}  flags={','.join(res.flags) or '-'}")
    sys.exit(1 if n_failed else 0)
