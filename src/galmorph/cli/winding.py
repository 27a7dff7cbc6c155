"""``galmorph winding``: spiral winding sense (CW/ACW) of galaxy images or a whole manifest."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from galmorph.cli.base import fail, main
from galmorph.cli.options import check_measure_mode, data_root_option, json_option


@main.command("winding")
@click.argument("files", nargs=-1, type=click.Path(path_type=Path))
@click.option("--x0", type=float, default=None, help="Expected centre column (display orientation).")
@click.option("--y0", type=float, default=None, help="Expected centre row from the top (display orientation).")
@click.option("--min-confidence", type=click.FloatRange(0), default=None,
              help="|z| below which winding is null [default: the library's].")
@click.option("--option", "extra", multiple=True, metavar="NAME=VALUE",
              help="Any other WindingOptions field (repeatable), e.g. --option sigma_low=1.5.")
@json_option("Print one JSON object per input (JSON lines).")
@click.option("--manifest", "manifest_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Measure every row of this manifest instead of FILEs (needs --out).")
@click.option("--out", "out_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Output manifest with the winding columns added (with --manifest); quarantine beside it.")
@click.option("--image-column", default="image_uri", show_default=True, help="Manifest column with the image URI.")
@click.option("--workers", type=click.IntRange(1), default=1, show_default=True,
              help="Processes for --manifest (one per core).")
@data_root_option()
def winding_cmd(files, x0, y0, min_confidence, extra, as_json, manifest_path, out_path, image_column, workers,
                data_root) -> None:
    """Measure the winding sense of the spiral arms of the galaxy at the centre of each image FILE.

    The tilt of the arms against the radial direction, from the band-passed image's structure tensor in
    an annulus around the centre (docs/winding.md). "CW" = GZ "clockwise" = Z-wise as displayed;
    score > 0 means CW; confidence is a z-like statistic; winding is null below --min-confidence.

    With --json one JSON object per input is printed (JSON lines: file, winding, score, confidence,
    diagnostics); an unreadable file gives an object with "error" set and the flag "unreadable". Exit
    code: 0 when every input was measured; 1 when any input was unreadable or could not be measured
    (the others are still printed); 2 for usage errors. With --manifest/--out the rows whose image
    cannot be read go to <out>.quarantine.parquet and the exit code is 1 if any did.
    """
    from galmorph.imaging.io import ImageError
    from galmorph.imaging.winding import (
        WindingError,
        WindingOptions,
        measure_winding_file,
    )

    opts = {}
    for item in extra:
        if "=" not in item:
            fail(f"--option needs NAME=VALUE, got {item!r}", 2)
        k, v = item.split("=", 1)
        try:
            opts[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            opts[k.strip()] = v
    if min_confidence is not None:
        opts["min_confidence"] = min_confidence
    try:
        options = WindingOptions.from_dict(opts)
    except (WindingError, TypeError) as exc:
        fail(f"bad winding options: {exc}", 2)
    check_measure_mode(files, manifest_path, out_path, x0, y0)
    if manifest_path is not None:
        from galmorph.catalogue.winding import write_winding_manifest
        from galmorph.catalogue.manifest import ManifestError
        from galmorph.settings import resolve_settings

        root = resolve_settings(data_root=data_root).data_root
        try:
            res = write_winding_manifest(manifest_path, out_path, data_root=root, options=options, workers=workers,
                                         image_column=image_column)
        except ManifestError as exc:
            fail(str(exc))
        click.echo(json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in res.items()}))
        sys.exit(0 if res["quarantined"] == 0 else 1)
    if not files:
        fail("no input files (give FILE... or --manifest M --out O)", 2)
    n_failed = 0
    for f in files:
        try:
            res = measure_winding_file(f, options, x0=x0, y0=y0)
        except (ImageError, WindingError, OSError) as exc:
            n_failed += 1
            obj = {"file": str(f), "winding": None, "score": None, "confidence": None, "flags": ["unreadable"],
                   "error": str(exc)}
            click.echo(json.dumps(obj) if as_json else f"{f}: ERROR {exc}")
            continue
        if not res.ok:
            n_failed += 1
        d = res.to_dict()
        if as_json:
            obj = {"file": str(f), **d, "error": None if res.ok else "no measurement: " + ", ".join(res.flags)}
            click.echo(json.dumps(obj))
        else:
            sc = f"{res.score:+.3f} (confidence {res.confidence:.1f})" if res.ok else "nan"
            click.echo(f"{f}: winding = {res.winding or '-'}  score = {sc}  annulus {res.r_inner:.1f}-"
                       f"{res.r_outer:.1f} px ({res.n_pixels} px)  flags={','.join(res.flags) or '-'}")
    sys.exit(1 if n_failed else 0)
