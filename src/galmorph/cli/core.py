"""Core commands: settings, stack, simulate."""

from __future__ import annotations

from pathlib import Path

import click

from galmorph.cli.base import echo_json, fail, main
from galmorph.cli.options import (audit_log_option, data_root_option, json_option, state_dir_option, task_option,
                                  tracking_uri_option)


@main.command("settings")
@tracking_uri_option()
@data_root_option()
@state_dir_option()
@audit_log_option()
def settings_cmd(tracking_uri: str | None, data_root: Path | None, state_dir: Path | None,
                 audit_log: Path | None) -> None:
    """Print the resolved settings as JSON.

    Every command, pipeline component, DVC stage and MLflow Project entry resolves its run settings
    (tracking URI, data root, state folder, audit log) in this order, highest first:

    \b
      1. the command-line flag (--tracking-uri, --data-root, --state-dir, --audit-log)
      2. the environment variable GALMORPH_<NAME> (GALMORPH_MLFLOW_TRACKING_URI, GALMORPH_DATA_ROOT,
         GALMORPH_STATE_DIR, GALMORPH_AUDIT_LOG; every other field likewise)
      3. MLFLOW_TRACKING_URI (the tracking URI only)
      4. GALMORPH_<NAME> in the .env file of the working directory
      5. the default (tracking URI: the local stack's server http://<host>:<mlflow_port>)
    """
    from galmorph.settings import resolve_settings

    echo_json(resolve_settings(tracking_uri=tracking_uri, data_root=data_root, state_dir=state_dir,
                               audit_log=audit_log).model_dump(mode="json"))


@main.group()
def stack() -> None:
    """Start, stop and inspect the local platform stack (MLflow server, Evidently UI, registry-event receiver)."""


_SERVICES = click.option("--service", "services", multiple=True, type=click.Choice(["mlflow", "evidently", "hooks"]),
                         help="Limit to these services (default: all).")


@stack.command("up")
@_SERVICES
def stack_up_cmd(services: tuple[str, ...]) -> None:
    """Start the stack (idempotent) and print the URLs."""
    from galmorph.settings import resolve_settings
    from galmorph.ops.stack import stack_up

    s = resolve_settings()
    try:
        res = stack_up(s, services or ("mlflow", "evidently", "hooks"))
    except (RuntimeError, TimeoutError) as exc:
        fail(str(exc))
    for r in res:
        click.echo(f"{r['service']:10s} {'started' if r['started'] else 'running'}  {r['url']}  (log {r['log']})")
    click.echo(f"state folder: {s.state_dir}")


@stack.command("down")
@_SERVICES
def stack_down_cmd(services: tuple[str, ...]) -> None:
    """Stop the services started by `stack up`."""
    from galmorph.settings import resolve_settings
    from galmorph.ops.stack import StackError, stack_down

    try:
        res = stack_down(resolve_settings(), services or ("mlflow", "evidently", "hooks"))
    except StackError as exc:
        fail(str(exc))
    for r in res:
        click.echo(f"{r['service']:10s} {'stopped' if r['stopped'] else 'not running'}")


@stack.command("status")
@_SERVICES
@json_option("Print JSON.")
def stack_status_cmd(services: tuple[str, ...], as_json: bool) -> None:
    """Health of each service; exit code 1 when any is down."""
    import sys

    from galmorph.settings import resolve_settings
    from galmorph.ops.stack import stack_status

    try:
        res = stack_status(resolve_settings(), services or ("mlflow", "evidently", "hooks"))
    except (OSError, RuntimeError) as exc:
        fail(f"stack status: {exc}")
    if as_json:
        echo_json(res)
    else:
        for r in res:
            state = "healthy" if r["healthy"] and r.get("ours", True) else ("FOREIGN" if r["healthy"] else "DOWN")
            click.echo(f"{r['service']:10s} {state:8s} {r['url']}")
    sys.exit(0 if all(r["healthy"] and r.get("ours", True) for r in res) else 1)


def _print_parts(res: dict) -> None:
    for p in res.get("parts", res.get("restored", [])):
        click.echo(f"{p['name']:20s} {p.get('to') or p.get('path')}")
    for p in res.get("skipped", []):
        click.echo(f"{p['name']:20s} skipped: {p['reason']}")


@stack.command("backup")
@click.argument("dest", type=click.Path(path_type=Path))
@json_option("Print the manifest as JSON.")
def stack_backup_cmd(dest: Path, as_json: bool) -> None:
    """Save the stack's state into DEST (a new or empty folder): the MLflow store and artifacts, the label
    database, the promotion audit log(s) and the Evidently workspace, with a manifest of sha256s
    (galmorph-backup.json). Safe while the stack runs: the sqlite databases are copied with sqlite's
    online backup API. A Postgres database (the chart) is skipped: see docs/deployment.md."""
    from galmorph.ops.backup import BackupError, backup
    from galmorph.settings import resolve_settings

    try:
        res = backup(resolve_settings(), dest)
    except (BackupError, OSError) as exc:
        fail(f"stack backup: {exc}")
        return
    if as_json:
        echo_json(res)
        return
    _print_parts(res)
    click.echo(f"backup of {res['source_state_dir']}: {len(res['files'])} files in {res['dir']}")


@stack.command("restore")
@click.argument("src", type=click.Path(path_type=Path))
@click.option("--force", is_flag=True, help="Replace the state already in the state folder.")
@json_option("Print the result as JSON.")
def stack_restore_cmd(src: Path, force: bool, as_json: bool) -> None:
    """Restore the backup SRC (made by `stack backup`) into the state folder, after checking every file's
    sha256. Refused while this state folder's stack runs, and over existing state unless --force; then
    `galmorph stack up` serves it."""
    from galmorph.ops.backup import BackupError, restore
    from galmorph.settings import resolve_settings

    try:
        res = restore(resolve_settings(), src, force=force)
    except (BackupError, OSError) as exc:
        fail(f"stack restore: {exc}")
        return
    if as_json:
        echo_json(res)
        return
    _print_parts(res)
    click.echo(f"restored {res['verified_files']} verified files into {res['state_dir']}; run `galmorph stack up`")


@main.command("simulate")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True, help="Output folder.")
@click.option("-n", "--n", "n", type=click.IntRange(1), default=100, show_default=True, help="Galaxies.")
@click.option("--seed", type=int, default=0, show_default=True)
@task_option(help="Draw balanced classes and label the manifest for this task.")
@click.option("--size", type=click.IntRange(32), default=128, show_default=True, help="Image size (px).")
@click.option("--z-min", type=float, default=0.01, show_default=True)
@click.option("--z-max", type=float, default=0.1, show_default=True)
@click.option("--survey", default="sim", show_default=True, help="Survey name written to the manifest.")
def simulate_cmd(out_dir: Path, n: int, seed: int, task: str | None, size: int, z_min: float, z_max: float,
                 survey: str) -> None:
    """Simulate face-on disc galaxies (FITS + PNG/JPEG + truth table + manifest)."""
    from galmorph.simulate import simulate_dataset

    if not z_min < z_max:
        fail(f"--z-min ({z_min}) must be below --z-max ({z_max})")
    res = simulate_dataset(out_dir, n, seed=seed, task=task, size=size, z_range=(z_min, z_max), survey=survey)
    click.echo(f"wrote {n} galaxies: manifest {res['manifest']}, truth {res['truth']}")
