"""Command-line options shared by several commands, defined once.

``--tracking-uri``, ``--data-root``, ``--state-dir`` and ``--audit-log`` are the flags of
:func:`galmorph.settings.resolve_settings` (flag > ``GALMORPH_*`` > ``MLFLOW_TRACKING_URI`` > ``.env`` >
default); commands pass them to it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import click

from galmorph.cli.output import _json_stdout, fail, json_stdout  # noqa: F401 (json_stdout re-exported)
from galmorph.tasks import TASKS


def _order(var: str, default: str, mlflow: bool = False) -> str:
    """The fallback chain of a flag, as its help shows it."""
    chain = [f"GALMORPH_{var}", *(["MLFLOW_TRACKING_URI"] if mlflow else []), ".env", default]
    return "[default: " + ", else ".join(chain) + "]"


def tracking_uri_option() -> Callable:
    """``--tracking-uri`` (parameter ``tracking_uri``)."""
    return click.option("--tracking-uri", "tracking_uri", default=None, metavar="URI",
                        help="MLflow tracking URI "
                             + _order("MLFLOW_TRACKING_URI", "the local stack's server", mlflow=True))


def data_root_option() -> Callable:
    """``--data-root`` (parameter ``data_root``)."""
    return click.option("--data-root", "data_root", type=click.Path(path_type=Path, file_okay=False), default=None,
                        help="Root of the real data and of data:// image URIs "
                             + _order("DATA_ROOT", "../shared/data"))


def state_dir_option() -> Callable:
    """``--state-dir`` (parameter ``state_dir``)."""
    return click.option("--state-dir", "state_dir", type=click.Path(path_type=Path, file_okay=False), default=None,
                        help="Project-local state folder " + _order("STATE_DIR", ".galmorph/"))


def audit_log_option() -> Callable:
    """``--audit-log`` (parameter ``audit_log``)."""
    return click.option("--audit-log", "audit_log", type=click.Path(path_type=Path, dir_okay=False), default=None,
                        help="JSON-lines promotion audit log "
                             + _order("AUDIT_LOG", "<state_dir>/registry/audit.jsonl"))


def json_option(help: str = "Print the result as JSON.", lines: bool | None = None) -> Callable:  # noqa: A002
    """``--json`` (parameter ``as_json``).

    Unless the command prints JSON Lines (``lines``, default: its help says "JSON lines"), ``--json``
    makes stdout hold exactly one JSON document: while the command runs, everything else written to
    ``sys.stdout`` (MLflow's "View run" lines, prints of libraries) goes to stderr, and ``echo_json``
    writes to the real stdout."""
    lines = ("json lines" in help.lower()) if lines is None else lines

    def divert(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
        if value and not lines:
            _json_stdout.append(sys.stdout)
            sys.stdout = sys.stderr

            def restore() -> None:
                sys.stdout = _json_stdout.pop()

            ctx.call_on_close(restore)
        return value

    return click.option("--json", "as_json", is_flag=True, help=help, callback=divert)


def task_option(*, required: bool = False, default: str | None = None, multiple: bool = False,
                name: str = "task", help: str = "Science task.") -> Callable:  # noqa: A002
    """``--task`` with the choices of :data:`galmorph.tasks.TASKS` (parameter ``name``)."""
    return click.option("--task", name, type=click.Choice(list(TASKS)), required=required, default=default,
                        multiple=multiple, show_default=default is not None, help=help)


def use_tracking_uri(settings) -> str:
    """Point mlflow (this process) at the settings' tracking URI, after checking that its server
    answers within ``settings.mlflow_connect_timeout`` (a clear error naming the URI otherwise);
    returns the URI."""
    from galmorph.tracking import DEFAULT_CONNECT_TIMEOUT, TrackingUnreachable, ensure_reachable, use_platform_uri

    try:
        ensure_reachable(settings.mlflow_tracking_uri,
                         getattr(settings, "mlflow_connect_timeout", DEFAULT_CONNECT_TIMEOUT))
    except TrackingUnreachable as exc:
        fail(str(exc))
    return use_platform_uri(settings.mlflow_tracking_uri)  # tracking and registry


def check_measure_mode(files, manifest_path, out_path, x0=None, y0=None) -> None:
    """Usage errors (exit 2) shared by the per-file measurement commands (`a1`, `winding`): FILEs or
    ``--manifest`` (which needs ``--out``), and a centre given as both ``--x0``/``--y0`` or neither."""
    if (x0 is None) != (y0 is None):
        fail("give both --x0 and --y0, or neither", 2)
    if manifest_path is not None:
        if files:
            fail("give FILEs or --manifest, not both", 2)
        if out_path is None:
            fail("--manifest needs --out", 2)
