"""`galmorph lineage`: data version -> training run -> registered version -> releases scored with it."""

from __future__ import annotations

import click

from galmorph.cli.base import echo_json, fail, main
from galmorph.cli.options import json_option, tracking_uri_option, use_tracking_uri


@main.command("lineage")
@click.argument("ref")
@tracking_uri_option()
@json_option()
def lineage_cmd(ref: str, tracking_uri: str | None, as_json: bool) -> None:
    """Print the lineage of REF: a model URI (models:/galmorph-<task>/N or @alias), a task name (its
    champion) or a scored catalogue (catalogue.parquet with its summary.json): the data version and
    manifest, the training run, the registered version and its aliases, and the releases scored with
    it (scoring run, catalogue, drift verdict), from the MLflow and DVC records.
    """
    from galmorph.promotion.lineage import LineageError, format_lineage, lineage
    from galmorph.settings import resolve_settings

    s = resolve_settings(tracking_uri=tracking_uri)
    use_tracking_uri(s)
    try:
        chain = lineage(ref)
    except (LineageError, FileNotFoundError) as exc:
        fail(str(exc))
        return
    if as_json:
        echo_json(chain)
    else:
        click.echo(format_lineage(chain))
