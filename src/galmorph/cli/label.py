"""``galmorph label``: labelling queue, web app, agreement report, export to a labelled manifest."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from galmorph.cli.base import echo_json, fail, main


@main.group("label")
def label_group() -> None:
    """Human labelling of lopsidedness: sample a queue, label in the browser, export for training.

    \b
    galmorph label sample --manifest M --out queue.parquet
    galmorph label serve --queue queue.parquet --labeller alice
    galmorph label agreement
    galmorph label export --out labels.parquet --dvc
    """


def _db_url(db: str | None) -> str:
    from galmorph.settings import get_settings

    url = db or get_settings().label_db_url
    if "://" not in url:  # a plain file path means a sqlite file
        url = f"sqlite:///{Path(url).expanduser().resolve()}"
    return url


def _labelled_ids(source: str, task: str) -> set[str]:
    """Object ids already labelled for ``task`` in a label database (URL or .db file) or a manifest."""
    from galmorph.labelling.store import LabelStore
    from galmorph.manifest import read_manifest

    if "://" in source or source.endswith((".db", ".sqlite", ".sqlite3")):
        return LabelStore(_db_url(source)).labelled_ids(task)
    df = read_manifest(source)
    sel = df["label"].notna()
    if "task" in df.columns:
        sel &= (df["task"].astype("string") == task).fillna(False)
    return set(df.loc[sel, "object_id"].astype(str))


@label_group.command("sample")
@click.option("--manifest", "manifest_path", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              required=True, help="Manifest to draw from (needs z; image_uri for A1 and the app).")
@click.option("--out", "out_path", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="Queue file to write (a manifest, kind label-queue).")
@click.option("--per-bin", type=click.IntRange(1), default=250, show_default=True, help="Objects per z bin.")
@click.option("--bins", "n_bins", type=click.IntRange(1), default=4, show_default=True, help="Equal-width z bins.")
@click.option("--z-min", type=float, default=0.01, show_default=True)
@click.option("--z-max", type=float, default=0.1, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed (same seed, same queue).")
@click.option("--exclude-labelled", "exclude", multiple=True,
              help="Label database (SQLAlchemy URL or .db file) or labelled manifest whose objects to skip; repeatable.")
@click.option("--rank-by-uncertainty", is_flag=True,
              help="Pick and order the most uncertain objects (entropy of --model-uri's prediction).")
@click.option("--model-uri", default="models:/galmorph-lopsided@champion", show_default=True,
              help="Model for --rank-by-uncertainty (MLflow model URI).")
@click.option("--tracking-uri", default=None,
              help="MLflow tracking URI [$MLFLOW_TRACKING_URI, else settings.mlflow_tracking_uri].")
@click.option("--measure-a1/--no-measure-a1", default=True, show_default=True,
              help="Measure A1 (centre, R50/R90) for the queued objects now, for the app's overlay.")
@click.option("--task", default="lopsided", show_default=True)
def sample_cmd(manifest_path, out_path, per_bin, n_bins, z_min, z_max, seed, exclude, rank_by_uncertainty, model_uri,
               tracking_uri, measure_a1, task) -> None:
    """Draw a redshift-stratified labelling queue from a manifest.

    Equal-width z bins over [--z-min, --z-max], up to --per-bin objects each, uniformly at random
    (reproducible by --seed, independent of the manifest's row order), excluding objects already
    labelled (in the manifest itself or in --exclude-labelled sources).
    """
    from galmorph.labelling.queue import add_a1, sample_queue, score_entropy, write_queue
    from galmorph.manifest import ManifestError, read_manifest
    from galmorph.settings import get_settings

    if not z_min < z_max:
        fail(f"--z-min ({z_min}) must be below --z-max ({z_max})", 2)
    s = get_settings()
    try:
        df = read_manifest(manifest_path)
        excl: set[str] = set()
        for src in exclude:
            excl |= _labelled_ids(src, task)
    except ManifestError as exc:
        fail(str(exc))
    scores = None
    if rank_by_uncertainty:
        import os

        import mlflow

        mlflow.set_tracking_uri(tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or s.mlflow_tracking_uri)
        z = df["z"].astype(float)
        cand = df[(z >= z_min) & (z <= z_max) & ~df["object_id"].astype(str).isin(excl)]
        try:
            scores = score_entropy(cand, model_uri, data_root=s.data_root)
        except Exception as exc:  # noqa: BLE001 - registry/model problems are reported, not traced
            fail(f"cannot score with {model_uri}: {type(exc).__name__}: {exc}")
    try:
        queue, summary = sample_queue(df, per_bin=per_bin, n_bins=n_bins, z_min=z_min, z_max=z_max, seed=seed,
                                      exclude_ids=excl, task=task, scores=scores)
    except ValueError as exc:
        fail(str(exc))
    if measure_a1 and len(queue):
        queue = add_a1(queue, data_root=s.data_root)
    summary["manifest"] = str(manifest_path)
    if rank_by_uncertainty:
        summary["model_uri"] = model_uri
    write_queue(queue, out_path, summary)
    click.echo(json.dumps({"queue": str(out_path), **summary}))


@label_group.command("serve")
@click.option("--queue", "queue_path", type=click.Path(path_type=Path, dir_okay=False, exists=True), required=True)
@click.option("--db", default=None, help="SQLAlchemy URL of the label database [settings.label_db_url].")
@click.option("--labeller", required=True, help="Your name; labels are stored per labeller.")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="Port [settings.label_port].")
@click.option("--host", default=None, help="Interface [settings.host = 127.0.0.1].")
@click.option("--image-root", "image_roots", multiple=True, type=click.Path(path_type=Path, file_okay=False),
              help="Extra folder images may be served from (besides the data root and the queue's folder).")
@click.option("--task", default="lopsided", show_default=True)
def serve_cmd(queue_path, db, labeller, port, host, image_roots, task) -> None:
    """Serve the labelling app (keys L/S/U/Z, O toggles the centre/R50/R90 overlay)."""
    import uvicorn

    from galmorph.labelling.app import create_app
    from galmorph.labelling.queue import read_queue
    from galmorph.labelling.store import LabelStore
    from galmorph.manifest import ManifestError
    from galmorph.settings import get_settings

    s = get_settings()
    try:
        queue = read_queue(queue_path)
    except ManifestError as exc:
        fail(str(exc))
    host = host or s.host
    if host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(f"warning: serving on {host}, not only on this machine", err=True)
    store = LabelStore(_db_url(db))
    app = create_app(queue, store, labeller, data_root=s.data_root,
                     image_roots=[queue_path.resolve().parent, *image_roots], task=task, queue_name=str(queue_path))
    port = port or s.label_port
    click.echo(f"labelling {len(queue)} objects as {labeller!r}: http://{host}:{port}/  (db {store.url})", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")


@label_group.command("agreement")
@click.option("--db", default=None, help="SQLAlchemy URL of the label database [settings.label_db_url].")
@click.option("--task", default="lopsided", show_default=True)
@click.option("--include-unsure", is_flag=True, help="Treat 'unsure' as a third category.")
@click.option("--json", "as_json", is_flag=True)
def agreement_cmd(db, task, include_unsure, as_json) -> None:
    """Agreement between labellers: Cohen's kappa per pair on the objects both labelled."""
    from galmorph.labelling.agreement import agreement_report
    from galmorph.labelling.store import LabelStore

    rep = agreement_report(LabelStore(_db_url(db)).labels(task), include_unsure=include_unsure)
    if as_json:
        echo_json(rep)
        return
    click.echo(f"{len(rep['labellers'])} labellers, {rep['n_objects']} objects labelled")
    for p in rep["pairs"]:
        click.echo(f"{p['a']} vs {p['b']}: n={p['n_common']} agreement={p['percent_agreement']:.2f} "
                   f"kappa={p['kappa']:.3f}")
    if not rep["pairs"]:
        click.echo("no pair of labellers yet")


@label_group.command("export")
@click.option("--db", default=None, help="SQLAlchemy URL of the label database [settings.label_db_url].")
@click.option("--out", "out_path", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="Labelled manifest to write (kind labelled-<task>).")
@click.option("--policy", type=click.Choice(["majority", "latest"]), default="majority", show_default=True,
              help="majority: most labellers (tie: most recent); latest: most recent label. 'unsure' never counts.")
@click.option("--labeller", default=None, help="Export only this labeller's labels.")
@click.option("--queue", "queue_path", type=click.Path(path_type=Path, dir_okay=False, exists=True), default=None,
              help="Only objects of this queue.")
@click.option("--task", default="lopsided", show_default=True)
@click.option("--dvc", "dvc", is_flag=True, help="`dvc add` the exported manifest (it must lie in a DVC repo).")
def export_cmd(db, out_path, policy, labeller, queue_path, task, dvc) -> None:
    """Export labels to a manifest for training (label = majority/latest per --policy)."""
    from galmorph.labelling.export import dvc_add, export_labels
    from galmorph.labelling.store import LabelStore

    ids = None
    if queue_path is not None:
        from galmorph.labelling.queue import read_queue

        ids = set(read_queue(queue_path)["object_id"].astype(str))
    res = export_labels(LabelStore(_db_url(db)), out_path, task=task, policy=policy, labeller=labeller,
                        object_ids=ids)
    if dvc:
        try:
            res["dvc_file"] = dvc_add(out_path)
        except RuntimeError as exc:
            click.echo(json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in res.items()}))
            fail(str(exc))
    click.echo(json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in res.items()}))
    if res["n_labelled"] == 0:
        click.echo("warning: no labelled objects exported", err=True)
    sys.exit(0)
