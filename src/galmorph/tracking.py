"""Talking to the MLflow tracking server: fail fast, with a clear message, when it is unreachable.

:func:`ensure_reachable` is called once by every command that needs the server before any MLflow
client call: it sets MLflow's HTTP timeout and retry count (``MLFLOW_HTTP_REQUEST_TIMEOUT``,
``MLFLOW_HTTP_REQUEST_MAX_RETRIES``; values already set in the environment win) and checks that the
server answers within ``timeout`` seconds, instead of MLflow retrying for minutes and then
reporting something misleading ("registered model not found").
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
import urllib.error
import urllib.request
from urllib.parse import urlsplit

#: Seconds to wait for the tracking server to answer.
DEFAULT_CONNECT_TIMEOUT = 10.0
#: MLflow's own per-request timeout (s) and retries after this module configured it.
MLFLOW_REQUEST_TIMEOUT = 60
MLFLOW_MAX_RETRIES = 2


class TrackingUnreachable(RuntimeError):
    """The tracking server did not answer; the message names the URI and the reason."""


def configure_http(request_timeout: int = MLFLOW_REQUEST_TIMEOUT, max_retries: int = MLFLOW_MAX_RETRIES) -> None:
    """Bound MLflow's HTTP requests (environment values already set are kept)."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(request_timeout)))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(int(max_retries)))


def ensure_reachable(uri: str | None, timeout: float = DEFAULT_CONNECT_TIMEOUT) -> None:
    """Raise :class:`TrackingUnreachable` unless the tracking server at ``uri`` answers within
    ``timeout`` seconds (``GET <uri>/health`` answers 2xx, or 401/403 behind authentication) and is an
    MLflow server (``GET <uri>/version`` answers a version number). Non-HTTP URIs (a local ``file:`` or
    database store) need no server and pass."""
    configure_http(request_timeout=max(MLFLOW_REQUEST_TIMEOUT, int(timeout)))
    if not uri:
        return
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https"):
        return
    url = uri.rstrip("/") + "/health"
    hint = "start it with `galmorph stack up`, or point --tracking-uri / MLFLOW_TRACKING_URI at a running server"
    # /health answers "OK" on any server that has one: /version (MLflow's own, a version number) tells
    # an MLflow server from another service on that port, whose answers MLflow would misread later
    for url in (url, uri.rstrip("/") + "/version"):
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - the configured server
                body = resp.read(200).decode("utf-8", "replace").strip()
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                return  # a server behind authentication answered
            raise TrackingUnreachable(f"MLflow tracking server {uri}: {url} answered HTTP {exc.code}; is this an "
                                      f"MLflow tracking server? {hint}") from exc
        except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, (socket.timeout, TimeoutError)):
                reason = f"no answer within {timeout:g} s"
            raise TrackingUnreachable(f"MLflow tracking server {uri} is not reachable ({reason}); {hint}") from exc
        if url.endswith("/version") and not re.fullmatch(r"\d+\.\d+\S*", body):
            raise TrackingUnreachable(f"MLflow tracking server {uri}: {url} answered {body[:40]!r}, not an MLflow "
                                      f"version; is this an MLflow tracking server? {hint}")


_URI_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


def mlflow_uri_state() -> tuple:
    """A snapshot of MLflow's tracking and registry settings: the module state that
    ``mlflow.set_tracking_uri``/``set_registry_uri`` change and the ``MLFLOW_TRACKING_URI``/
    ``MLFLOW_REGISTRY_URI`` variables they export to subprocesses (for :func:`restore_mlflow_uri_state`)."""
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    return tracking_utils._tracking_uri, registry_utils._registry_uri, {k: os.environ.get(k) for k in _URI_ENV}


def restore_mlflow_uri_state(state: tuple) -> None:
    """Put MLflow's tracking and registry settings back exactly as :func:`mlflow_uri_state` saw them
    (a variable that was unset is unset again)."""
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    tracking_utils._tracking_uri, registry_utils._registry_uri, env = state
    for k, v in env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def use_platform_uri(uri: str) -> str:
    """Point this process's MLflow, and the processes it starts, at ``uri`` for tracking *and* the model
    registry: the platform's registry is its tracking server. A ``MLFLOW_REGISTRY_URI`` inherited from
    elsewhere (a user's shell, an earlier ``set_registry_uri``) would otherwise resolve
    ``models:/NAME/VERSION`` in another registry and fetch artifacts this server does not have. Returns ``uri``."""
    import sys

    os.environ["MLFLOW_TRACKING_URI"] = str(uri)
    os.environ["MLFLOW_REGISTRY_URI"] = str(uri)
    if "mlflow" in sys.modules:  # else mlflow, imported later (or never: a step without MLflow), reads the variables
        import mlflow

        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
    return uri


@contextlib.contextmanager
def using_tracking_uri(uri: str | None) -> Iterator[None]:
    """Within the block MLflow's fluent API (``mlflow.start_run`` ...) tracks to and registers on
    ``uri``; afterwards the caller's tracking and registry settings are back exactly as they were
    (:func:`restore_mlflow_uri_state`: MLflow's module state and the variables it exports to subprocesses).

    Library functions that take an explicit ``tracking_uri`` use this instead of
    ``mlflow.set_tracking_uri`` so that a call does not redirect the process's (or its children's)
    later MLflow calls. ``None`` or ``""`` changes nothing."""
    import mlflow

    if not uri:
        yield
        return
    saved = mlflow_uri_state()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        restore_mlflow_uri_state(saved)


# the project's one name cleaner (MLflow metric names, drift report stems)
@dataclass(frozen=True)
class NameRule:
    """How :func:`clean_name` makes a name safe: ``+`` becomes ``plus`` first (unless ``plus`` is None),
    every match of ``bad`` becomes ``_``; with ``strip``, ``_`` is trimmed from both ends and ``empty``
    stands for a name left empty."""

    bad: re.Pattern
    plus: str | None = "plus"
    strip: bool = False
    empty: str = ""


#: MLflow metric names (every metric galmorph logs): ``+`` -> ``plus``, each character MLflow refuses -> ``_``.
METRIC_NAME = NameRule(re.compile(r"[^0-9A-Za-z_\-. /]"))
#: Names that are file names too (drift report stems and the group part of drift metric names): each run of
#: other characters (``+`` and spaces included) -> one ``_``, no ``_`` at the ends, ``x`` for nothing left.
SLUG = NameRule(re.compile(r"[^A-Za-z0-9._-]+"), plus=None, strip=True, empty="x")


def clean_name(text, rule: NameRule = METRIC_NAME) -> str:
    """``text`` made safe under ``rule`` (the project's one name cleaner)."""
    s = str(text)
    if rule.plus is not None:
        s = s.replace("+", rule.plus)
    s = rule.bad.sub("_", s)
    if rule.strip:
        s = s.strip("_")
    return s or rule.empty
