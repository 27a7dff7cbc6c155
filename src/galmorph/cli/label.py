"""``galmorph label``: labelling queue, web app, agreement report, export to a labelled manifest."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from galmorph.cli.base import echo_json, fail, main
from galmorph.cli.options import data_root_option, json_option, task_option, tracking_uri_option, use_tracking_uri


@main.group("label")
def label_group() -> None:
    """Human labelling (any task): sample a queue, label in the browser, export for training.

    \b
    galmorph label sample --manifest M --out queue.parquet [--task chirality]
    galmorph label serve --queue queue.parquet --labeller alice
    galmorph label agreement [--task chirality]
    galmorph label export --out labels.parquet --queue queue.parquet --dvc
    """


def _db_url(db: str | None) -> str:
    from galmorph.settings import resolve_settings

    url = db or resolve_settings().label_db_url
    if "://" not in url:  # a plain file path means a sqlite file
        url = f"sqlite:///{Path(url).expanduser().resolve()}"
    return url


def _db_problem(exc: BaseException) -> str:
    """A database error as one line (SQLAlchemy appends the SQL and its parameters, a token hash among them)."""
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return f"{type(exc).__name__}: {reason[0] if reason else ''}"


def _db_errors(fn):
    """A label database that cannot be opened, written or reached (read-only file, server down, missing
    driver) ends the command with one clear line naming the database, not a traceback."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from sqlalchemy.exc import SQLAlchemyError

        try:
            return fn(*args, **kwargs)
        except (SQLAlchemyError, ModuleNotFoundError) as exc:
            where = _db_url(kwargs.get("db")) if "db" in kwargs else ", ".join(kwargs.get("exclude") or ())
            fail(f"label database {where}: {_db_problem(exc)}")

    return wrapper


def _labelled_ids(source: str, task: str) -> set[str]:
    """Object ids already labelled for ``task`` in a label database (URL or .db file) or a manifest."""
    from galmorph.labelling.store import LabelStore
    from galmorph.catalogue.manifest import read_manifest

    if "://" in source or source.endswith((".db", ".sqlite", ".sqlite3")):
        url = _db_url(source)
        if url.startswith("sqlite:///") and url != "sqlite:///:memory:" and \
                not Path(url[len("sqlite:///"):]).expanduser().is_file():
            from galmorph.catalogue.manifest import ManifestError

            # reading must not create the database (or its folder) as a side effect
            raise ManifestError(f"--exclude-labelled {source}: no such label database")
        return LabelStore(url).labelled_ids(task)
    df = read_manifest(source)
    sel = df["label"].notna()
    if "task" in df.columns:
        sel &= (df["task"].astype("string") == task).fillna(False)
    return set(df.loc[sel, "object_id"].astype(str))


def _queue_task(queue) -> str | None:
    """The task a queue was sampled for (its ``task`` column), or None."""
    if "task" not in queue.columns:
        return None
    tasks = sorted({str(t) for t in queue["task"].dropna()})
    return tasks[0] if len(tasks) == 1 else None


def _task_of_queue(queue, queue_path: Path, task: str | None) -> str:
    """``--task``, else the queue's task, else lopsided; a --task that is not the queue's is a usage error."""
    queued = _queue_task(queue)
    if task and queued and task != queued:
        fail(f"--task {task}: the queue {queue_path} was sampled for task {queued!r} "
             f"(give --task {queued} or sample a {task} queue)", 2)
    return task or queued or "lopsided"


def _warn_images_outside(outside: list, n: int) -> None:
    """One warning line when queued images lie outside the image roots (they would answer 403)."""
    if not outside:
        return
    import os

    folders = sorted({str(p.parent) for _, p in outside})
    common = os.path.commonpath(folders) if folders else ""
    click.echo(f"warning: {len(outside)} of {n} queued images lie outside the image roots (data root, the queue's "
               f"folder, --image-root) and will answer 403 (e.g. {outside[0][1]}): serve with --image-root "
               f"{common or folders[0]}", err=True)


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
@click.option("--model-uri", default=None,
              help="Model for --rank-by-uncertainty (MLflow model URI, or a task name for its champion) "
                   "[the task's champion, models:/galmorph-<task>@champion].")
@tracking_uri_option()
@data_root_option()
@click.option("--measure-a1/--no-measure-a1", default=None,
              help="Measure A1 (centre, R50/R90) for the queued objects now, for the app's overlay "
                   "[on for the tasks whose app shows it: lopsided].")
@task_option(default="lopsided", help="Labelling task.")
@_db_errors
def sample_cmd(manifest_path, out_path, per_bin, n_bins, z_min, z_max, seed, exclude, rank_by_uncertainty, model_uri,
               tracking_uri, data_root, measure_a1, task) -> None:
    """Draw a redshift-stratified labelling queue from a manifest.

    Equal-width z bins over [--z-min, --z-max], up to --per-bin objects each, uniformly at random
    (reproducible by --seed, independent of the manifest's row order), excluding objects already
    labelled (in the manifest itself or in --exclude-labelled sources).
    """
    from galmorph.labelling.queue import add_a1, sample_queue, score_entropy, write_queue
    from galmorph.catalogue.manifest import ManifestError, read_manifest
    from galmorph.promotion.registry import model_ref
    from galmorph.settings import resolve_settings

    if not z_min < z_max:
        fail(f"--z-min ({z_min}) must be below --z-max ({z_max})", 2)
    s = resolve_settings(tracking_uri=tracking_uri, data_root=data_root)
    model_uri = model_ref(model_uri or task)
    try:
        df = read_manifest(manifest_path)
        excl: set[str] = set()
        for src in exclude:
            excl |= _labelled_ids(src, task)
    except ManifestError as exc:
        fail(str(exc))
    scores = None
    if rank_by_uncertainty:
        use_tracking_uri(s)
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
    if measure_a1 is None:
        from galmorph.labelling.choices import labelling_for

        measure_a1 = "a1" in labelling_for(task).overlays
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
@click.option("--labeller", default=None,
              help="Without auth: your name (default: your login name). With auth the labeller is the token's owner.")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="Port [settings.label_port].")
@click.option("--host", default=None,
              help="Interface [settings.host = 127.0.0.1]; anything but loopback needs --auth token or a proxy header.")
@click.option("--auth", "auth_mode", type=click.Choice(["none", "token"]), default="none", show_default=True,
              help="token: every labeller signs in with their token (`galmorph label token add NAME`).")
@click.option("--tokens-file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Extra tokens, one NAME:sha256:HEX (or NAME:TOKEN) a line, e.g. a mounted Secret (implies --auth token).")
@click.option("--trust-proxy-header", default=None, metavar="HEADER",
              help="Take the labeller from this header set by a trusted auth proxy (e.g. X-Forwarded-User). Off by default.")
@click.option("--allowed-host", "allowed_hosts", multiple=True,
              help="Host header value the app answers to (repeatable) [loopback names + --host].")
@click.option("--max-body-bytes", type=click.IntRange(1), default=1_000_000, show_default=True,
              help="Request body limit.")
@click.option("--secure-cookies", is_flag=True, help="Mark the sign-in cookie Secure (served behind TLS).")
@click.option("--image-root", "image_roots", multiple=True, type=click.Path(path_type=Path, file_okay=False),
              help="Extra folder images may be served from (besides the data root and the queue's folder).")
@data_root_option()
@task_option(help="Labelling task: its labels, keys and overlay [the queue's task].")
def serve_cmd(queue_path, db, labeller, port, host, auth_mode, tokens_file, trust_proxy_header, allowed_hosts,
              max_body_bytes, secure_cookies, image_roots, data_root, task) -> None:
    """Serve the labelling app for the queue's task.

    \b
    Keys: lopsided S symmetric, L lopsided; arms 1-5 (5 = 5+), X can't tell;
    chirality C CW, A ACW, X other; every task U unsure/skip, Z undo, O overlay
    (lopsided: A1 centre and R50/R90; chirality and arms: winding annulus and sense).
    Images are served from the data root, the queue's folder and --image-root folders only.
    """
    from galmorph.labelling.security import (LOOPBACK_HOSTS, AuthError, LabelAuth, read_tokens_file,
                                             trusted_host_patterns)
    from galmorph.settings import resolve_settings

    # usage errors first, before the queue is read and the app imported (fast, and nothing half-started)
    s = resolve_settings(data_root=data_root)
    host = host or s.host
    auth = None
    try:
        if auth_mode == "token" or tokens_file is not None or trust_proxy_header:
            auth = LabelAuth(tokens=auth_mode == "token" or tokens_file is not None,
                             token_hashes=read_tokens_file(tokens_file) if tokens_file else {},
                             proxy_header=trust_proxy_header)
    except AuthError as exc:
        fail(str(exc), 2)
    if auth is None and host not in LOOPBACK_HOSTS:
        fail(f"refusing to serve on {host} without authentication: use --auth token (labellers sign in with "
             "`galmorph label token add NAME` tokens) or --trust-proxy-header behind an auth proxy, "
             "or serve on 127.0.0.1", 2)
    if auth is not None and labeller:
        fail("--labeller is not used with authentication: each labeller is the owner of their token", 2)
    if auth is None:
        import getpass

        labeller = labeller or getpass.getuser()
    hosts = list(allowed_hosts) or [*LOOPBACK_HOSTS, *([host] if host not in ("0.0.0.0", "::") else [])]
    try:
        hosts = trusted_host_patterns(hosts)
    except ValueError as exc:
        fail(f"--allowed-host: {exc}", 2)
    import uvicorn

    from galmorph.catalogue.manifest import ManifestError
    from galmorph.labelling.app import create_app
    from galmorph.labelling.queue import read_queue
    from galmorph.labelling.store import LabelStore

    try:
        queue = read_queue(queue_path)
    except ManifestError as exc:
        fail(str(exc))
    task = _task_of_queue(queue, queue_path, task)
    try:
        store = LabelStore(_db_url(db))
        app = create_app(queue, store, labeller, data_root=s.data_root,
                         image_roots=[queue_path.resolve().parent, *image_roots], task=task, queue_name=str(queue_path),
                         auth=auth, allowed_hosts=hosts, max_body_bytes=max_body_bytes, secure_cookies=secure_cookies)
    except Exception as exc:  # noqa: BLE001 - database/state-dir problems (read-only, unreachable) are reported
        fail(f"label database {_db_url(db)}: {_db_problem(exc)}")
    _warn_images_outside(app.state.images_outside_roots, len(queue))
    port = port or s.label_port
    who = f"as {labeller!r}" if auth is None else "with sign-in"
    click.echo(f"labelling {len(queue)} objects for {task} {who}: http://{host}:{port}/  (db {store.url})", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")


@label_group.group("token")
def token_group() -> None:
    """Labeller access tokens for `label serve --auth token` (only their hashes are stored)."""


@token_group.command("add")
@click.argument("name")
@click.option("--db", default=None, help="SQLAlchemy URL of the label database [settings.label_db_url].")
@click.option("--tokens-file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Append NAME:sha256:HEX to this file (e.g. to build the chart's Secret) instead of the database.")
def token_add_cmd(name, db, tokens_file) -> None:
    """Create a token for labeller NAME and print it once (store it now: it cannot be shown again)."""
    from galmorph.labelling.store import LabelError, LabelStore, hash_token, new_token

    name = name.strip()
    if not name or len(name) > 100 or ":" in name or "\n" in name:
        fail("labeller name must have 1 to 100 characters and no ':'", 2)
    if tokens_file is not None:
        token = new_token()
        try:
            with open(tokens_file, "a") as fh:
                fh.write(f"{name}:sha256:{hash_token(token)}\n")
        except OSError as exc:
            fail(f"tokens file {tokens_file}: {exc.strerror or exc}")
    else:
        try:
            token = LabelStore(_db_url(db)).add_token(name)
        except LabelError as exc:
            fail(str(exc), 2)
        except Exception as exc:  # noqa: BLE001 - database problems are reported, not traced
            fail(f"label database {_db_url(db)}: {_db_problem(exc)}")
    click.echo(token)


@token_group.command("revoke")
@click.argument("name")
@click.option("--db", default=None, help="SQLAlchemy URL of the label database [settings.label_db_url].")
@_db_errors
def token_revoke_cmd(name, db) -> None:
    """Revoke every database token of labeller NAME."""
    from galmorph.labelling.store import LabelStore

    n = LabelStore(_db_url(db)).revoke_tokens(name)
    click.echo(f"revoked {n} token(s) of {name!r}", err=True)


@label_group.command("agreement")
@click.option("--db", default=None, help="SQLAlchemy URL of the label database [settings.label_db_url].")
@task_option(default="lopsided", help="Labelling task.")
@click.option("--include-unsure", is_flag=True, help="Treat 'unsure' as a third category.")
@json_option("Print the report as JSON.")
@_db_errors
def agreement_cmd(db, task, include_unsure, as_json) -> None:
    """Agreement between labellers: Cohen's kappa per pair on the objects both labelled."""
    from galmorph.labelling.agreement import agreement_report
    from galmorph.labelling.store import LabelStore

    rep = agreement_report(LabelStore(_db_url(db)).labels(task), include_unsure=include_unsure, task=task)
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
@task_option(help="Labelling task [the --queue's task, else lopsided].")
@click.option("--dvc", "dvc", is_flag=True, help="`dvc add` the exported manifest (it must lie in a DVC repo).")
@_db_errors
def export_cmd(db, out_path, policy, labeller, queue_path, task, dvc) -> None:
    """Export labels to a manifest for training (label = majority/latest per --policy)."""
    from galmorph.labelling.export import dvc_add, export_labels
    from galmorph.labelling.store import LabelStore

    ids = None
    if queue_path is not None:
        from galmorph.labelling.queue import read_queue

        queue = read_queue(queue_path)
        ids = set(queue["object_id"].astype(str))
        task = _task_of_queue(queue, queue_path, task)
    task = task or "lopsided"
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
