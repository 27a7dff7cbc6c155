"""``galmorph monitor``: the Evidently UI over the drift workspace and its dashboard."""

from __future__ import annotations

from pathlib import Path

import click

from galmorph.cli.base import echo_json, fail, main


@main.group()
def monitor() -> None:
    """Drift dashboards: serve the Evidently UI, (re)create the project dashboard."""


def _settings(port: int | None):
    """The settings, with the Evidently port overridden when ``port`` is given."""
    from galmorph.settings import resolve_settings

    return resolve_settings(evidently_port=port)


@monitor.command("serve")
@click.option("--port", type=click.IntRange(1, 65535), default=None,
              help="Port on 127.0.0.1 [default: settings.evidently_port].")
@click.option("--project", default=None, help="Project whose dashboard is refreshed first [default: params].")
@click.option("--foreground", is_flag=True, help="Stay attached; stop the UI on Ctrl-C.")
def serve_cmd(port: int | None, project: str | None, foreground: bool) -> None:
    """Start the Evidently UI on 127.0.0.1 over the drift workspace (idempotent) and print its URL.

    The dashboard of the drift project is re-applied from monitoring/dashboards.py first, so
    panel changes in code show up without touching the UI.
    """
    import time

    from galmorph.drift.config import DriftConfig
    from galmorph.drift.workspace import ensure_dashboard, get_or_create_project, open_workspace
    from galmorph.ops.stack import start_service, stop_service

    s = _settings(port)
    cfg = DriftConfig.from_params(s.params_file)
    ws = open_workspace(s.evidently_workspace)
    proj = get_or_create_project(ws, project or cfg.project)
    ensure_dashboard(ws, proj, high_confidence=cfg.high_confidence)
    try:
        st = start_service(s, "evidently")
    except (RuntimeError, TimeoutError) as exc:
        fail(str(exc))
    click.echo(f"Evidently UI {'started' if st['started'] else 'running'} at {st['url']} "
               f"(workspace {s.evidently_workspace})")
    click.echo(f"drift dashboard: {st['url']}/projects/{proj.id}")
    if foreground:
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            stop_service(s, "evidently")
            click.echo("stopped")


@monitor.command("stop")
def stop_cmd() -> None:
    """Stop the Evidently UI started by `monitor serve` / `stack up`."""
    from galmorph.settings import resolve_settings
    from galmorph.ops.stack import stop_service

    click.echo("stopped" if stop_service(resolve_settings(), "evidently") else "not running")


@monitor.command("dashboard")
@click.option("--workspace", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Evidently workspace folder [default: settings.evidently_workspace].")
@click.option("--project", default=None, help="Project name [default: params drift.project].")
def dashboard_cmd(workspace: Path | None, project: str | None) -> None:
    """(Re)create the drift project's dashboard panels from monitoring/dashboards.py."""
    from galmorph.drift.config import DriftConfig
    from galmorph.drift.workspace import ensure_dashboard, get_or_create_project, open_workspace
    from galmorph.settings import resolve_settings

    s = resolve_settings()
    cfg = DriftConfig.from_params(s.params_file)
    ws = open_workspace(workspace or s.evidently_workspace)
    proj = get_or_create_project(ws, project or cfg.project)
    titles = ensure_dashboard(ws, proj, high_confidence=cfg.high_confidence)
    echo_json({"project": proj.name, "project_id": str(proj.id), "panels": titles})
