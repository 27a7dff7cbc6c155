"""Security of the labelling app (:mod:`galmorph.labelling.app`).

* identity: without ``auth`` the app serves one ``labeller`` (the CLI then binds to loopback
  only); with ``auth`` (:class:`LabelAuth`) every request is authenticated by a per-labeller token
  (``Authorization: Bearer``, or the HttpOnly SameSite=Strict cookie set by ``POST /login``) or by the
  identity header of a trusted auth proxy, and the labeller *is* that identity (:class:`Access`);
* CSRF: a state-changing request must carry ``X-Requested-With: galmorph`` (a custom header a
  cross-origin page cannot send without a CORS preflight, which the app never grants) and, when the
  browser sends ``Origin``/``Sec-Fetch-Site``, come from the app's own origin;
* ``Host`` must be one of the allowed hosts (else 400; ``/healthz`` is exempt for probes): Starlette's
  ``TrustedHostMiddleware`` (:class:`HostGuard`), which parses the header strictly
  (``127.0.0.1:8772@evil.example`` is refused);
* request bodies over ``max_body_bytes`` get 413 before they are read (``Content-Length``) or as
  soon as the streamed body passes the limit (:class:`BodyLimit`).
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from starlette.requests import Request  # module level: FastAPI resolves the (string) annotations here

from galmorph.labelling.store import LabelStore, hash_token

#: Default request body limit (bytes).
MAX_BODY_BYTES = 1_000_000
#: Host names always allowed (the app on this machine).
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
CSRF_HEADER = "x-requested-with"
CSRF_VALUE = "galmorph"
COOKIE = "galmorph_label_token"
#: Headers of the HTML pages.
PAGE_HEADERS = {"X-Frame-Options": "DENY", "Content-Security-Policy": "frame-ancestors 'none'",
                "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin", "Cache-Control": "no-store"}
#: Paths answered whatever the Host header (liveness/readiness probes use the pod's address).
HOST_EXEMPT_PATHS = ("/healthz",)


class AuthError(ValueError):
    """A tokens file or auth setting is unusable."""


def read_tokens_file(path: str | Path) -> dict[str, str]:
    """Tokens provisioned from a file (e.g. a mounted Kubernetes Secret): one ``NAME:sha256:HEX``
    (preferred: only the hash is stored) or ``NAME:TOKEN`` per line; blank lines and ``#`` comments
    are ignored. Returns ``{sha256 hex: labeller}``."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise AuthError(f"tokens file {path}: cannot read ({exc.strerror or exc})") from exc
    out: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, rest = line.partition(":")
        name = name.strip()
        if not sep or not name or not rest.strip():
            raise AuthError(f"tokens file {path}, line {n}: expected NAME:sha256:HEX or NAME:TOKEN")
        if rest.startswith("sha256:"):
            digest = rest[len("sha256:"):].strip().lower()
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise AuthError(f"tokens file {path}, line {n}: not a SHA-256 hex digest")
        else:
            if len(rest.strip()) < 16:
                raise AuthError(f"tokens file {path}, line {n}: token of {name!r} is shorter than 16 characters")
            digest = hash_token(rest.strip())
        out[digest] = name
    return out


@dataclass
class LabelAuth:
    """How the app authenticates labellers.

    ``tokens``: check bearer/cookie tokens against the label database's ``tokens`` table (and
    ``token_hashes``, e.g. from :func:`read_tokens_file`). ``proxy_header``: trust this request
    header (e.g. ``X-Forwarded-User``) as the labeller's identity, set by an auth proxy in front of
    the app (only safe when the app is reachable through that proxy alone)."""

    tokens: bool = True
    token_hashes: dict[str, str] = field(default_factory=dict)
    proxy_header: str | None = None

    def __post_init__(self):
        if not self.tokens and not self.proxy_header:
            raise AuthError("LabelAuth needs tokens=True or a proxy_header")

    def labeller_for(self, token: str | None, store: LabelStore) -> str | None:
        if not token or not self.tokens:
            return None
        digest = hash_token(token)
        for known, name in self.token_hashes.items():
            if hmac.compare_digest(known, digest):
                return name
        return store.labeller_for_token(token)


def _http_error(status: int, detail: str, headers: dict | None = None):
    from fastapi import HTTPException

    return HTTPException(status, detail, headers=headers)


class Access:
    """Who a request is, and whether it may change state (FastAPI dependencies :meth:`who` and
    :attr:`writer`): the one ``labeller`` without ``auth``, else the authenticated identity."""

    def __init__(self, store: LabelStore, labeller: str | None, auth: LabelAuth | None):
        if auth is None:
            labeller = (labeller or "").strip()
            if not labeller:
                raise ValueError("labeller name is empty (give a labeller, or auth)")
        elif labeller:
            raise ValueError("with auth the labeller is the authenticated identity; do not give one")
        self.store, self.labeller, self.auth = store, labeller, auth
        self.writer = self._make_writer()

    @property
    def sign_in(self) -> bool:
        """Labellers sign in with a token (the app has /login and /logout)."""
        return self.auth is not None and self.auth.tokens

    def identity(self, request: Request) -> str | None:
        auth = self.auth
        if auth is None:
            return self.labeller
        if auth.proxy_header:
            who = (request.headers.get(auth.proxy_header) or "").strip()
            if who:
                if len(who) > 100:
                    raise _http_error(400, f"{auth.proxy_header} identity is longer than 100 characters")
                return who
        token = None
        authz = request.headers.get("authorization", "")
        if authz.lower().startswith("bearer "):
            token = authz[7:].strip()
        token = token or request.cookies.get(COOKIE)
        return auth.labeller_for(token, self.store)

    def who(self, request: Request) -> str:
        name = self.identity(request)
        if name is None:
            raise _http_error(401, "not signed in: send Authorization: Bearer <token> or sign in at /login",
                              headers={"WWW-Authenticate": "Bearer"})
        return name

    def _make_writer(self):
        from fastapi import Depends

        who = self.who

        def writer(request: Request, name: str = Depends(who)) -> str:
            """A state-changing API request: authenticated, same origin, with the CSRF header."""
            same_origin(request)
            if request.headers.get(CSRF_HEADER, "").lower() != CSRF_VALUE:
                raise _http_error(403, f"missing CSRF header (send 'X-Requested-With: {CSRF_VALUE}')")
            return name

        return writer


def same_origin(request: Request) -> None:
    """Refuse a request a browser marks as coming from another site (403)."""
    origin = request.headers.get("origin")
    if origin is not None:
        from urllib.parse import urlsplit

        try:
            o = urlsplit(origin)
            ohost = (o.hostname or "").lower()
            oport = o.port
        except ValueError:
            ohost, oport = "", None
        h = urlsplit(f"//{request.headers.get('host', '')}")
        if origin == "null" or ohost != (h.hostname or "").lower() or (oport or None) != (h.port or None):
            raise _http_error(403, "cross-origin request refused")
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        raise _http_error(403, "cross-site request refused")


def trusted_host_patterns(allowed_hosts: Iterable[str] | None) -> list[str]:
    """``allowed_hosts`` (default: :data:`LOOPBACK_HOSTS`) as ``TrustedHostMiddleware`` patterns: lower
    case, IPv6 literals in brackets (how a ``Host`` header carries them), ``*`` = any host,
    ``*.example.org`` = its subdomains. ValueError for a pattern the middleware does not accept."""
    out: list[str] = []
    for h in (allowed_hosts or LOOPBACK_HOSTS):
        h = h.strip().lower()
        if not h:
            continue
        if ":" in h and not h.startswith("["):
            try:
                h = f"[{ipaddress.IPv6Address(h)}]"
            except ValueError:
                raise ValueError(f"allowed host {h!r}: give the host name without a port") from None
        if "*" in h[1:] or (h.startswith("*") and h != "*" and not h.startswith("*.")):
            raise ValueError(f"allowed host {h!r}: a wildcard must be '*' or like '*.example.org'")
        out.append(h)
    return out or trusted_host_patterns(LOOPBACK_HOSTS)


class HostGuard:
    """ASGI middleware: Starlette's ``TrustedHostMiddleware`` (400 for a ``Host`` header that does not
    parse or is not allowed) on every path but :data:`HOST_EXEMPT_PATHS`."""

    def __init__(self, app, allowed_hosts: Iterable[str] | None = None):
        from fastapi.middleware.trustedhost import TrustedHostMiddleware

        self.app = app
        self.checked = TrustedHostMiddleware(app, allowed_hosts=trusted_host_patterns(allowed_hosts),
                                             www_redirect=False)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope.get("path") in HOST_EXEMPT_PATHS:
            return await self.app(scope, receive, send)
        return await self.checked(scope, receive, send)


def _too_large(limit: int):
    """413 raised from inside the app (a streamed body passing the limit): an HTTPException so that
    FastAPI's body parsing passes it on instead of turning it into a 400."""
    from starlette.exceptions import HTTPException

    return HTTPException(413, f"request body over the limit of {limit} bytes")


class BodyLimit:
    """ASGI middleware: request body limit (413, before reading)."""

    def __init__(self, app, max_body_bytes: int):
        self.app, self.limit = app, max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        cl = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k.lower() == b"content-length"), None)
        if cl is not None:
            try:
                n = int(cl)
            except ValueError:
                return await _plain(send, 400, "invalid Content-Length")
            if n > self.limit:
                return await _plain(send, 413, f"request body over the limit of {self.limit} bytes")
        seen = 0

        async def limited_receive():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
                    raise _too_large(self.limit)
            return msg

        await self.app(scope, limited_receive, send)


async def _plain(send, status: int, text: str) -> None:
    body = text.encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
