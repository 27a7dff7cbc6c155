"""What the commands print: one strict JSON document on the real stdout, and clear errors on stderr.

Used by :mod:`galmorph.cli.base` (which re-exports ``echo_json`` and ``fail``) and
:mod:`galmorph.cli.options` (``--json`` diverts stray stdout while a command runs); neither imports
the other.
"""

from __future__ import annotations

import json
import sys

import click

_json_stdout: list = []  # the real stdout while a --json command runs (see cli.options.json_option)


def json_stdout():
    """Where :func:`echo_json` writes: the command's real stdout."""
    return _json_stdout[-1] if _json_stdout else sys.stdout


def echo_json(obj) -> None:
    """Print ``obj`` as ONE strict JSON document on stdout (NaN/inf -> null, numpy/paths/NA handled by
    :mod:`galmorph.jsonsafe`); logs and progress go to stderr."""
    from galmorph.jsonsafe import finite_json, json_default

    click.echo(json.dumps(finite_json(obj), indent=2, default=json_default, allow_nan=False), file=json_stdout())


def fail(msg: str, code: int = 1) -> None:
    """Print ``error: msg`` on stderr and exit with ``code``."""
    click.echo(f"error: {msg}", err=True)
    sys.exit(code)
