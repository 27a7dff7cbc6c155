"""Data commands: ingest, validate, cutout, crossmatch, sdss-query, data version."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from galmorph.cli.base import echo_json, fail, main
from galmorph.cli.options import data_root_option, json_option, task_option


def _data_root(opt: Path | None) -> Path | None:
    """--data-root through the settings resolver (flag > GALMORPH_DATA_ROOT > .env > default)."""
    from galmorph.settings import resolve_settings

    return resolve_settings(data_root=opt).data_root


@main.command("ingest")
@click.argument("source")
@click.option("--out", "out", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="Manifest to write (Parquet).")
@click.option("--quarantine", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Quarantine table (default: <out stem>.quarantine.parquet).")
@data_root_option()
@task_option(help="sim:/folder: sources: the task whose labels to use.")
@click.option("--image", type=click.Choice(["jpg", "png", "fits"]), default="jpg", show_default=True,
              help="sim: sources: which rendering image_uri points at.")
@click.option("--include-predicted", is_flag=True, help="lopsided: also the CNN-predicted (unlabelled) rows.")
@click.option("--survey", default="unknown", show_default=True, help="folder: sources: survey name.")
@click.option("--catalogue", type=click.Path(path_type=Path, exists=True), default=None,
              help="Override the source's catalogue file (labels.csv, catalog.csv, table, ...).")
@click.option("--images", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Override the source's image folder.")
@click.option("--sim-dir", type=click.Path(path_type=Path, file_okay=False), default=Path("data/sim"),
              show_default=True, help="Folder the plain `sim` source reads (the DVC simulate stage's output).")
@click.option("--path", "table_path", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="catalogue: the table to ingest (CSV/TSV/Parquet/FITS).")
@click.option("--map", "column_map", multiple=True, metavar="COLUMN=CATALOGUE_COLUMN",
              help="catalogue: manifest column from a catalogue column, e.g. --map object_id=objid "
                   "--map image_uri=file (repeatable; object_id image_uri ra dec z label task survey).")
@click.option("--require-coords", is_flag=True, help="catalogue: rows without RA/Dec are quarantined.")
@json_option("Print the summary as JSON.")
def ingest_cmd(source: str, out: Path, quarantine: Path | None, data_root: Path | None, task: str | None,
               image: str, include_predicted: bool, survey: str, catalogue: Path | None, images: Path | None,
               sim_dir: Path, table_path: Path | None, column_map: tuple[str, ...], require_coords: bool,
               as_json: bool) -> None:
    """Ingest SOURCE into a Parquet manifest (+ quarantine of rejected rows).

    SOURCE is one of gz1_chirality, gz2_arms, gz2_table, decals, lopsided, hart, sdss_fits (under the
    data root), sim:<folder> (a `galmorph simulate` output; plain `sim` reads --sim-dir) or
    folder:<folder> (any image folder) or catalogue (any table: --path FILE --map object_id=COL
    --map image_uri=COL ...; relative image paths under --images, else beside the table).
    """
    from galmorph.catalogue.ingest import IngestError, ingest, parse_column_map

    if source == "sim":
        source = f"sim:{sim_dir}"
    opts: dict = {"task": task, "image": image, "include_predicted": include_predicted, "survey": survey}
    if source == "catalogue":
        try:
            opts.update(path=table_path or catalogue, columns=parse_column_map(column_map),
                        coords_required=require_coords)
        except IngestError as exc:
            fail(str(exc))
        catalogue = None
    elif table_path is not None or column_map:
        fail(f"--path/--map are options of the catalogue source, not of {source!r}")
    if catalogue is not None:
        key = {"gz1_chirality": "labels", "gz2_arms": "labels", "gz2_table": "table", "decals": "catalog",
               "hart": "catalogue", "lopsided": "catalogue_dir"}.get(source)
        if key is None:
            fail(f"--catalogue is not used by source {source!r}")
        opts[key] = catalogue
    if images is not None:
        opts["images"] = images
    try:
        res = ingest(source, out, quarantine, data_root=_data_root(data_root), **opts)
    except (IngestError, FileNotFoundError) as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot write {out}: {exc.strerror or exc}")
    if as_json:
        echo_json(res.summary())
    else:
        click.echo(f"{source}: {res.n_in} rows in -> {res.n_out} in {res.manifest_path}, "
                   f"{res.n_quarantined} quarantined in {res.quarantine_path}; labels {res.label_counts}")


def _size(s: str | None) -> tuple[int, int] | None:
    if not s:
        return None
    try:
        h, w = (int(v) for v in s.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"expected HxW, got {s!r}") from None
    return h, w


@main.command("validate")
@click.argument("manifest", type=click.Path(path_type=Path, dir_okay=False))  # Parquet or CSV/TSV
@json_option('Print {"rows": N, "passed": n, "quarantined": [{"id", "reason"}], ...}.')
@click.option("--z-min", type=float, default=None, help="Selection: lowest z (rows with unknown z pass).")
@click.option("--z-max", type=float, default=None, help="Selection: highest z.")
@click.option("--max-failure-fraction", type=click.FloatRange(0, 1), default=0.05, show_default=True,
              help="The run fails when more than this fraction of rows is quarantined.")
@click.option("--expected-size", default=None, help="Exact image size HxW (e.g. 424x424).")
@click.option("--min-size", type=click.IntRange(1), default=16, show_default=True, help="Smallest image side (px).")
@click.option("--require-coords/--allow-missing-coords", default=None,
              help="Rows without ra/dec fail [default: when any row has them].")
@click.option("--require-z", is_flag=True, help="Rows without z fail.")
@click.option("--no-images", is_flag=True, help="Skip the per-row image checks.")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write the rows that passed as a manifest here.")
@click.option("--quarantine", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write the quarantine table here.")
@click.option("--report", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write the report (summary + great-expectations result) as JSON here.")
@click.option("--workers", type=click.IntRange(1), default=1, show_default=True, help="Image-check threads.")
@click.option("--model-image-size", type=click.IntRange(1), default=None,
              help="Framing check: the model's input size (px); galaxies smaller than --min-extent-px across "
                   "in that input are counted and warned about (not quarantined).")
@click.option("--model-crop-fraction", type=click.FloatRange(0, 1, min_open=True), default=1.0,
              show_default=True, help="Framing check: the fraction of the image the model crops before resizing.")
@click.option("--min-extent-px", type=click.FloatRange(0, min_open=True), default=40.0, show_default=True,
              help="Framing check: the smallest galaxy extent (about 2 R90) in the model's input.")
@click.option("--no-fail", is_flag=True, help="Exit 0 even when validation fails.")
@data_root_option()
def validate_cmd(manifest: Path, as_json: bool, z_min: float | None, z_max: float | None,
                 max_failure_fraction: float, expected_size: str | None, min_size: int,
                 require_coords: bool | None, require_z: bool, no_images: bool, out: Path | None, quarantine: Path | None, report: Path | None,
                 workers: int, model_image_size: int | None, model_crop_fraction: float, min_extent_px: float,
                 no_fail: bool, data_root: Path | None) -> None:
    """Validate MANIFEST (Parquet or CSV; great-expectations suite + image checks); exit 1 when it fails.

    Failing rows go to the quarantine (with reasons); the run fails only when more than
    --max-failure-fraction of the rows fail, or the schema is broken.
    """
    from galmorph.catalogue.manifest import ManifestError
    from galmorph.catalogue.validation import ValidationConfig, validate_manifest

    try:
        cfg = ValidationConfig(z_min=z_min, z_max=z_max, require_z=require_z, require_coords=require_coords,
                               check_images=not no_images, expected_size=_size(expected_size), min_size=min_size,
                               max_failure_fraction=max_failure_fraction, model_image_size=model_image_size,
                               model_crop_fraction=model_crop_fraction, min_extent_px=min_extent_px)
        res = validate_manifest(manifest, cfg, data_root=_data_root(data_root), out_manifest=out,
                                quarantine_path=quarantine, report_path=report, progress=not as_json,
                                workers=workers)
    except (ManifestError, ValueError) as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot write the validation outputs: {exc}")
    if as_json:
        echo_json(res.to_json())
    else:
        click.echo(f"{manifest}: {res.rows} rows, {res.passed} passed, {res.n_quarantined} quarantined "
                   f"({100 * res.failure_fraction:.2f}% > limit {100 * max_failure_fraction:.2f}%? "
                   f"{'no' if res.failure_fraction <= max_failure_fraction else 'yes'}) -> "
                   f"{'PASSED' if res.success else 'FAILED'}")
        for e in res.schema_errors:
            click.echo(f"  schema: {e}")
        for w in res.warnings:
            click.echo(f"  warning: {w}")
        for r in res.quarantine.head(20).itertuples():
            click.echo(f"  {r.object_id}: {r.reason}")
        if res.n_quarantined > 20:
            click.echo(f"  ... {res.n_quarantined - 20} more")
    sys.exit(0 if (res.success or no_fail) else 1)


@main.command("cutout")
@click.argument("manifest", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="Folder for png/, fits/, manifest.parquet, quarantine.parquet.")
@click.option("--size-arcsec", type=click.FloatRange(min=0), default=None,
              help="FITS: cutout side in arcsec (default or 0: full frame).")
@click.option("--size-r90", type=click.FloatRange(min=0), default=None,
              help="FITS: cutout side in multiples of R90 (see --r90-column; 0: unused).")
@click.option("--r90-column", default="r90_arcsec", show_default=True, help="Column with R90 in arcsec.")
@click.option("--crop-fraction", type=click.FloatRange(0, 1, min_open=True), default=1.0, show_default=True,
              help="Rasters: central fraction kept (424 -> 224 is 0.528).")
@click.option("--size-px", type=click.IntRange(8), default=None, help="Output side in pixels (resize).")
@click.option("--greyscale", type=bool, is_flag=False, flag_value=True, default=False, show_default=True,
              help="Average colour to one channel (`--greyscale` or `--greyscale true|false`).")
@click.option("--no-fits", is_flag=True, help="Do not write FITS cutouts for FITS sources.")
@data_root_option()
@json_option("Print the summary as JSON.")
def cutout_cmd(manifest: Path, out_dir: Path, size_arcsec: float | None, size_r90: float | None, r90_column: str,
               crop_fraction: float, size_px: int | None, greyscale: bool, no_fits: bool, data_root: Path | None,
               as_json: bool) -> None:
    """Cut MANIFEST's images into model-ready PNGs (+ FITS for FITS sources) and a cutout manifest."""
    from galmorph.catalogue.cutout import CutoutConfig, make_cutouts
    from galmorph.catalogue.manifest import ManifestError

    try:
        cfg = CutoutConfig(size_arcsec=size_arcsec or None, size_r90=size_r90 or None, r90_column=r90_column, size_px=size_px,
                           crop_fraction=crop_fraction, greyscale=greyscale, write_fits=not no_fits)
        res = make_cutouts(manifest, out_dir, cfg, data_root=_data_root(data_root), progress=not as_json)
    except (ManifestError, ValueError) as exc:
        fail(str(exc))
    if as_json:
        echo_json(res.summary())
    else:
        click.echo(f"{res.n_in} rows -> {res.n_out} cutouts in {res.out_dir} ({res.n_partial} partial), "
                   f"{res.n_quarantined} quarantined in {res.quarantine_path}")


@main.command("crossmatch")
@click.argument("left", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.argument("right", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--radius", type=click.FloatRange(min=0, min_open=True), default=3.0, show_default=True,
              help="Match radius in arcsec.")
@click.option("--left-id", default="object_id", show_default=True, help="Id column of LEFT.")
@click.option("--right-id", default="object_id", show_default=True, help="Id column of RIGHT.")
@click.option("--one-to-one", is_flag=True, help="A RIGHT row matches at most one LEFT row (the closest).")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write the pairs (Parquet) and <stem>.unmatched.parquet.")
@json_option("Print the summary as JSON.")
def crossmatch_cmd(left: Path, right: Path, radius: float, left_id: str, right_id: str, one_to_one: bool,
                   out: Path | None, as_json: bool) -> None:
    """Positional cross-match of LEFT and RIGHT (manifests or CSV/FITS catalogues) within --radius."""
    from galmorph.catalogue.crossmatch import CrossmatchError, crossmatch_files
    from galmorph.catalogue.ingest import IngestError

    try:
        res = crossmatch_files(left, right, radius, out=out, left_id=left_id, right_id=right_id,
                               one_to_one=one_to_one)
    except (CrossmatchError, IngestError) as exc:
        fail(str(exc))
    if as_json:
        echo_json(res.summary())
    else:
        s = res.summary()
        click.echo(f"{s['matches']} matches within {radius}\" ({s['n_left']} x {s['n_right']} rows); "
                   f"unmatched: {s['unmatched_left']} left, {s['unmatched_right']} right"
                   + (f"; pairs in {out}" if out else ""))


@main.command("sdss-query")
@click.option("--fallback-gz2", is_flag=True, help="The GZ2 spiral fallback (t04 spiral debiased > 0.6).")
@click.option("--z-min", type=float, default=0.01, show_default=True)
@click.option("--z-max", type=float, default=0.1, show_default=True)
@click.option("--mag-g-max", type=float, default=16.0, show_default=True, help="Extinction-corrected modelMag_g.")
@click.option("--r90-min", type=float, default=3.0, show_default=True, help="petroR90_g lower limit (arcsec).")
@click.option("--fracdev-max", type=float, default=0.5, show_default=True)
@click.option("--expab-min", type=float, default=0.6, show_default=True)
@click.option("--spiral-min", type=float, default=0.6, show_default=True, help="GZ2 fallback threshold.")
@click.option("--top", type=click.IntRange(1), default=None, help="TOP n rows.")
@click.option("--fetch", is_flag=True, help="Run it on SkyServer (needs the `fetch` extra and network).")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="With --fetch: save the result (CSV).")
@click.option("--result", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="Read a saved result (CSV/FITS) offline and report how many rows pass the selection.")
def sdss_query_cmd(fallback_gz2: bool, z_min: float, z_max: float, mag_g_max: float, r90_min: float,
                   fracdev_max: float, expab_min: float, spiral_min: float, top: int | None, fetch: bool,
                   out: Path | None, result: Path | None) -> None:
    """Print the SkyServer SQL of the lopsided study's selection (or the GZ2 fallback); optionally run it."""
    from galmorph.catalogue.sdss_query import SdssSelection, apply_selection, build_sql, fetch as do_fetch, read_query_result

    try:
        sel = SdssSelection(z_min=z_min, z_max=z_max, mag_g_max=mag_g_max, petro_r90_g_min=r90_min,
                            frac_dev_g_max=fracdev_max, exp_ab_g_min=expab_min, spiral_debiased_min=spiral_min,
                            top=top)
    except ValueError as exc:
        fail(str(exc))
    sql = build_sql(sel, fallback_gz2=fallback_gz2)
    if result is not None:
        try:
            df = read_query_result(result)
        except (ValueError, FileNotFoundError) as exc:
            fail(str(exc))
        if fallback_gz2:
            click.echo(f"{result}: {len(df)} rows")
        else:
            try:
                n = int(apply_selection(df, sel).sum())
            except KeyError as exc:
                fail(f"{result}: {exc}")
            click.echo(f"{result}: {len(df)} rows, {n} pass the selection")
        return
    if not fetch:
        click.echo(sql)
        return
    try:
        df = do_fetch(sql)
    except RuntimeError as exc:
        fail(str(exc))
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(out, index=False)
        click.echo(f"{len(df)} rows -> {out}")
    else:
        click.echo(df.to_csv(index=False))


@main.group("data")
def data_group() -> None:
    """Data versions (DVC) of manifests and cutout sets."""


@data_group.command("version")
@click.argument("path", type=click.Path(path_type=Path, exists=True))
@json_option("Print path, md5 and where it came from as JSON.")
def data_version_cmd(path: Path, as_json: bool) -> None:
    """Print the DVC md5 of PATH (dvc.lock / .dvc entry, else computed with DVC's hashing)."""
    from galmorph.catalogue.dvcops import data_version_info

    info = data_version_info(path)
    if as_json:
        echo_json(info.to_dict())
    else:
        click.echo(info.md5)
