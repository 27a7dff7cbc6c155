"""`galmorph hooks`: the receiver of MLflow registry events (alias moves made in the MLflow UI, #27)."""

from __future__ import annotations

import click

from galmorph.cli.base import echo_json, fail, main
from galmorph.cli.options import tracking_uri_option


@main.group("hooks")
def hooks_group() -> None:
    """The registry-event receiver: hand promotions in the MLflow UI are recorded, checked and rescored."""


@hooks_group.command("serve")
@click.option("--register", is_flag=True, help="Create or update the MLflow webhook first (in a cluster; "
              "`stack up` does it locally).")
@click.option("--hooks-url", default=None, help="URL MLflow posts to [settings.hooks_url].")
@tracking_uri_option()
def serve_cmd(register: bool, hooks_url: str | None, tracking_uri: str | None) -> None:
    """Serve POST /hooks/mlflow on GALMORPH_HOST:GALMORPH_HOOKS_PORT (`galmorph stack up` starts it): verify each
    delivery (HMAC signature, timestamp), record it once, and handle alias moves (origin, policy check, rescoring);
    at start, alias moves made while it was down are reconciled (registry vs audit)."""
    import logging

    from galmorph.ops.hooks import serve
    from galmorph.settings import resolve_settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    s = resolve_settings(tracking_uri=tracking_uri, hooks_url=hooks_url)
    if register:
        from galmorph.ops.hooks import register_webhooks

        try:
            register_webhooks(s)
        except Exception as exc:  # noqa: BLE001 - named for the user
            fail(f"hooks serve: registering the MLflow webhook failed: {exc}")
    serve(s)


@hooks_group.command("register")
def register_cmd() -> None:
    """Create or update the MLflow webhook galmorph-hooks (URL, secret, events); `stack up` does it too."""
    from galmorph.ops.hooks import register_webhooks
    from galmorph.settings import resolve_settings

    try:
        echo_json(register_webhooks(resolve_settings()))
    except Exception as exc:  # noqa: BLE001 - named for the user
        fail(f"hooks register: {exc}")
