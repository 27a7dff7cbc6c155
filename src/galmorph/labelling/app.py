"""The labelling web app (FastAPI): one page, keyboard driven.

Keys: ``L`` lopsided, ``S`` symmetric, ``U`` unsure (skip), ``Z`` undo, ``O`` toggles the overlay
of the measured centre and the R50/R90 circles (SVG over the image, in the coordinates of the
image A1 was measured on). Progress and per-redshift-bin tallies are shown for the labeller.

Endpoints: ``GET /`` (page), ``GET /api/state``, ``GET /api/object/{id}``, ``POST /api/label``
(``{"object_id", "label"}``), ``POST /api/undo``, ``GET /api/agreement``, ``GET /image/{id}``,
``GET /healthz``; with token auth also ``GET/POST /login`` and ``POST /logout``. Unknown objects
give 404, malformed labels 422 (the body is never echoed), images whose URI resolves outside the
allowed folders (the data root, the queue's folder, ``image_roots``) 403, unreadable images 422.
The client never sends a path: images are looked up by object id.

Security (see :class:`LabelAuth`):

* identity: without ``auth`` the app serves one ``labeller`` (the CLI then binds to loopback
  only); with ``auth`` every request is authenticated by a per-labeller token (``Authorization:
  Bearer``, or the HttpOnly SameSite=Strict cookie set by ``POST /login``) or by the identity
  header of a trusted auth proxy, and the labeller *is* that identity;
* CSRF: a state-changing request must carry ``X-Requested-With: galmorph`` (a custom header a
  cross-origin page cannot send without a CORS preflight, which the app never grants) and, when the
  browser sends ``Origin``/``Sec-Fetch-Site``, come from the app's own origin;
* ``Host`` must be one of ``allowed_hosts`` (else 400; ``/healthz`` is exempt for probes);
* request bodies over ``max_body_bytes`` get 413 before they are read (``Content-Length``) or as
  soon as the streamed body passes the limit.
"""

from __future__ import annotations

import hmac
import io
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pandas as pd
from pydantic import BaseModel, Field
from starlette.requests import Request  # module level: FastAPI resolves the (string) annotations here

from galmorph.jsonsafe import finite_json
from galmorph.labelling.store import LabelError, LabelStore, UnknownObject, hash_token

log = logging.getLogger(__name__)

_A1_FIELDS = ("a1", "a1_err", "a1_x0", "a1_y0", "a1_r50_px", "a1_r90_px", "a1_width", "a1_height", "a1_flags",
              "a1_error", "a1_radii_source")

#: Default request body limit (bytes).
MAX_BODY_BYTES = 1_000_000
#: Host names always allowed (the app on this machine).
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
CSRF_HEADER = "x-requested-with"
CSRF_VALUE = "galmorph"
COOKIE = "galmorph_label_token"


class LabelIn(BaseModel):
    """Body of ``POST /api/label``."""

    object_id: str = Field(min_length=1, max_length=200)
    label: Literal["symmetric", "lopsided", "unsure"]


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


def _clean(v):
    if v is None or v is pd.NA:
        return None
    try:
        if isinstance(v, float) and math.isnan(v):
            return None
        if pd.isna(v):
            return None
    except (TypeError, ValueError):
        pass
    return v.item() if hasattr(v, "item") else v


def winding_info(row: dict, data_root: Path | str | None = None) -> dict:
    """The chirality queue overlay of one queue row: the measured winding sense (``CW``/``ACW``/None),
    score and confidence (the queue's ``winding*`` columns when the labelling pipeline measured them,
    else measured now), the centre and annulus radii and the image size (measured on the image)."""
    from galmorph.imaging.io import ImageError
    from galmorph.imaging.winding import WindingError, WindingOptions, load_for_winding, options_for_file, winding_sense
    from galmorph.catalogue.manifest import ManifestError, resolve_image_uri

    info: dict = {"winding": None, "winding_score": None, "winding_confidence": None, "x0": None, "y0": None,
                  "r_inner": None, "r_outer": None, "width": None, "height": None, "error": None, "source": None}
    try:
        img, linear = load_for_winding(resolve_image_uri(str(row.get("image_uri")), data_root))
        res = winding_sense(img, options_for_file(WindingOptions(), linear))
    except (ImageError, ManifestError, WindingError, OSError) as exc:
        info["error"] = str(exc)
        return info
    info.update(winding=res.winding, winding_score=_clean(res.score), winding_confidence=_clean(res.confidence),
                x0=_clean(res.x0), y0=_clean(res.y0), r_inner=_clean(res.r_inner), r_outer=_clean(res.r_outer),
                width=int(img.shape[1]), height=int(img.shape[0]), source="measured")
    if _clean(row.get("winding_score")) is not None:  # the queue's own measurement wins
        info.update(winding=_clean(row.get("winding")), winding_score=_clean(row.get("winding_score")),
                    winding_confidence=_clean(row.get("winding_confidence")), source="queue")
    return info


def _is_within(path: Path, roots: list[Path]) -> bool:
    p = path.resolve()
    return any(p == r or r in p.parents for r in roots)


def create_app(queue: pd.DataFrame, store: LabelStore, labeller: str | None = None,
               data_root: Path | str | None = None, image_roots: list[Path | str] | None = None,
               task: str = "lopsided", queue_name: str | None = None, measure_missing_a1: bool = True,
               auth: LabelAuth | None = None, allowed_hosts: Iterable[str] | None = None,
               max_body_bytes: int = MAX_BODY_BYTES, secure_cookies: bool = False):
    """The FastAPI app on one queue (``queue`` as read by :func:`galmorph.labelling.queue.read_queue`).
    The queue's objects are registered in ``store``.

    Either ``labeller`` (one labeller, no authentication: serve it on loopback only) or ``auth``
    (the labeller of each request is its authenticated identity). ``allowed_hosts``: values the
    ``Host`` header may take (default: loopback names; ``"*"`` allows any)."""
    from fastapi import Depends, FastAPI, HTTPException
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

    from galmorph.catalogue.manifest import ManifestError, resolve_image_uri

    if auth is None:
        labeller = (labeller or "").strip()
        if not labeller:
            raise ValueError("labeller name is empty (give a labeller, or auth)")
    elif labeller:
        raise ValueError("with auth the labeller is the authenticated identity; do not give one")
    if max_body_bytes < 1:
        raise ValueError(f"max_body_bytes must be positive (got {max_body_bytes})")
    hosts = {h.strip().lower().strip("[]") for h in (allowed_hosts or LOOPBACK_HOSTS) if h.strip()}
    queue = queue.sort_values("queue_position", kind="stable").reset_index(drop=True)
    queue["object_id"] = queue["object_id"].astype(str)
    store.register_queue(queue, queue_name)
    rows = {r["object_id"]: r for r in queue.to_dict(orient="records")}
    order = list(queue["object_id"])
    bins = sorted({str(b) for b in queue["queue_bin"]})
    roots = [Path(r).resolve() for r in (image_roots or [])]
    if data_root is not None:
        roots.append(Path(data_root).resolve())
    a1_cache: dict[str, dict] = {}
    winding_cache: dict[str, dict] = {}
    templates = _templates()

    app = FastAPI(title="galmorph labelling", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(_RequestGuard, allowed_hosts=hosts, max_body_bytes=max_body_bytes)

    from sqlalchemy.exc import SQLAlchemyError

    @app.exception_handler(SQLAlchemyError)
    async def _database(_request, exc: SQLAlchemyError):
        # read-only, full or unreachable label database: a clear 503 (the label was not saved), no 500
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0][:200]
        log.error("label database %s: %s: %s", store.url, type(exc).__name__, reason)
        return JSONResponse(status_code=503, content={"detail": f"label database unavailable, nothing saved "
                                                                f"({reason})"})

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request, exc: RequestValidationError):
        # never echo the request body back (FastAPI's default puts it under "input")
        detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
                  for e in exc.errors()]
        return JSONResponse(status_code=422, content={"detail": detail})

    def identity(request: Request) -> str | None:
        if auth is None:
            return labeller
        if auth.proxy_header:
            who = (request.headers.get(auth.proxy_header) or "").strip()
            if who:
                if len(who) > 100:
                    raise HTTPException(400, f"{auth.proxy_header} identity is longer than 100 characters")
                return who
        token = None
        authz = request.headers.get("authorization", "")
        if authz.lower().startswith("bearer "):
            token = authz[7:].strip()
        token = token or request.cookies.get(COOKIE)
        return auth.labeller_for(token, store)

    def who(request: Request) -> str:
        name = identity(request)
        if name is None:
            raise HTTPException(401, "not signed in: send Authorization: Bearer <token> or sign in at /login",
                                headers={"WWW-Authenticate": "Bearer"})
        return name

    def same_origin(request: Request) -> None:
        """Refuse a request a browser marks as coming from another site."""
        origin = request.headers.get("origin")
        if origin is not None:
            from urllib.parse import urlsplit

            try:
                o = urlsplit(origin)
                ohost = (o.hostname or "").lower()
                oport = o.port
            except ValueError:
                ohost, oport = "", None
            host_hdr = request.headers.get("host", "")
            h = urlsplit(f"//{host_hdr}")
            if origin == "null" or ohost != (h.hostname or "").lower() or (oport or None) != (h.port or None):
                raise HTTPException(403, "cross-origin request refused")
        if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            raise HTTPException(403, "cross-site request refused")

    def writer(request: Request, name: str = Depends(who)) -> str:
        """A state-changing API request: authenticated, same origin, with the CSRF header."""
        same_origin(request)
        if request.headers.get(CSRF_HEADER, "").lower() != CSRF_VALUE:
            raise HTTPException(403, f"missing CSRF header (send 'X-Requested-With: {CSRF_VALUE}')")
        return name

    def row_or_404(object_id: str) -> dict:
        row = rows.get(object_id)
        if row is None:
            raise HTTPException(404, f"object {object_id!r} is not in this labelling queue")
        return row

    def image_path(row: dict, uri_key: str = "image_uri") -> Path:
        uri = _clean(row.get(uri_key))
        try:
            path = resolve_image_uri(uri, data_root)
        except ManifestError as exc:
            raise HTTPException(400, f"object {row['object_id']}: {exc}") from exc
        try:
            inside = _is_within(path, roots)
        except (RuntimeError, OSError) as exc:  # a symlink loop (RuntimeError on Python 3.11)
            raise HTTPException(404, f"object {row['object_id']}: image path cannot be resolved ({exc})") from exc
        if not inside:
            raise HTTPException(403, f"object {row['object_id']}: image is outside the data root and the queue's "
                                "image folders")
        if not path.is_file():
            raise HTTPException(404, f"object {row['object_id']}: image file not found")
        return path

    def a1_info(row: dict) -> dict:
        oid = row["object_id"]
        if oid in a1_cache:
            return a1_cache[oid]
        info = {k: _clean(row.get(k)) for k in _A1_FIELDS}
        if info["a1"] is None and info["a1_error"] is None and measure_missing_a1:
            from galmorph.catalogue.a1 import measure_a1_frame

            measured, quarantine = measure_a1_frame(pd.DataFrame([row]), data_root=data_root, progress=False)
            if len(measured):
                info = {k: _clean(measured.iloc[0].get(k)) for k in _A1_FIELDS}
            else:
                info["a1_error"] = quarantine[0]["reason"] if quarantine else "not measured"
        a1_cache[oid] = info
        return info

    def winding_overlay(row: dict) -> dict:
        oid = row["object_id"]
        if oid not in winding_cache:
            winding_cache[oid] = winding_info(row, data_root)
        return winding_cache[oid]

    def state(name: str) -> dict:
        lab = store.labels(task, name)
        lab = lab[lab.object_id.isin(rows)]
        mine = dict(zip(lab.object_id, lab.label))
        nxt = next((o for o in order if o not in mine), None)
        tallies = []
        for b in bins:
            ids = [o for o in order if str(rows[o].get("queue_bin")) == b]
            labs = [mine[o] for o in ids if o in mine]
            tallies.append({"bin": b, "total": len(ids), "done": len(labs),
                            **{c: labs.count(c) for c in ("lopsided", "symmetric", "unsure")}})
        return {"labeller": name, "task": task, "total": len(order), "done": len(mine), "next": nxt,
                "bins": tallies, "n_labellers": len(store.labellers(task))}

    @app.get("/healthz")
    def healthz():
        return {"ok": True}

    @app.get("/", response_class=HTMLResponse)
    def page(request: Request):
        name = identity(request)
        if name is None:
            if auth is not None and auth.tokens:
                return RedirectResponse("/login", status_code=303)
            raise HTTPException(401, f"not signed in (the auth proxy did not send {auth.proxy_header})")
        html = templates.get_template("page.html").render(labeller=name, logout=auth is not None and auth.tokens)
        return HTMLResponse(html, headers=_PAGE_HEADERS)

    if auth is not None and auth.tokens:
        @app.get("/login", response_class=HTMLResponse)
        def login_form():
            return HTMLResponse(templates.get_template("login.html").render(error=None), headers=_PAGE_HEADERS)

        @app.post("/login")
        async def login(request: Request):
            from urllib.parse import parse_qs

            same_origin(request)
            body = (await request.body()).decode("utf-8", "replace")
            token = (parse_qs(body).get("token") or [""])[0].strip()
            if auth.labeller_for(token, store) is None:
                html = templates.get_template("login.html").render(error="unknown or revoked token")
                return HTMLResponse(html, status_code=401, headers=_PAGE_HEADERS)
            resp = RedirectResponse("/", status_code=303)
            resp.set_cookie(COOKIE, token, httponly=True, samesite="strict", secure=secure_cookies, path="/",
                            max_age=30 * 24 * 3600)
            return resp

        @app.post("/logout")
        def logout(request: Request):
            same_origin(request)
            resp = RedirectResponse("/login", status_code=303)
            resp.delete_cookie(COOKIE, path="/")
            return resp

    @app.get("/api/state")
    def api_state(name: str = Depends(who)):
        return state(name)

    @app.get("/api/object/{object_id}")
    def api_object(object_id: str, name: str = Depends(who)):
        row = row_or_404(object_id)
        info = a1_info(row)
        mine = store.labels(task, name)
        mine = mine[mine.object_id == object_id]
        return {
            "object_id": object_id, "z": _clean(row.get("z")), "queue_bin": _clean(row.get("queue_bin")),
            "queue_position": _clean(row.get("queue_position")), "survey": _clean(row.get("survey")),
            "image_url": f"/image/{object_id}", "a1": info, "my_label": mine.label.iloc[0] if len(mine) else None,
            "entropy": _clean(row.get("entropy")),
            **({"winding": winding_overlay(row)} if task == "chirality" else {}),
        }

    @app.post("/api/label")
    def api_label(body: LabelIn, name: str = Depends(writer)):
        if body.object_id not in rows:
            raise HTTPException(404, f"object {body.object_id!r} is not in this labelling queue")
        try:
            res = store.set_label(body.object_id, name, body.label, task)
        except UnknownObject as exc:
            raise HTTPException(404, str(exc)) from exc
        except LabelError as exc:
            raise HTTPException(422, str(exc)) from exc
        return {"saved": res, "state": state(name)}

    @app.post("/api/undo")
    def api_undo(name: str = Depends(writer)):
        try:
            res = store.undo(name, task)
        except LabelError as exc:
            raise HTTPException(409, str(exc)) from exc
        return {"undone": res, "state": state(name)}

    @app.get("/api/agreement")
    def api_agreement(name: str = Depends(who)):
        from galmorph.labelling.agreement import agreement_report

        rep = agreement_report(store.labels(task))
        return JSONResponse(content=finite_json(rep))

    @app.get("/image/{object_id}")
    def image(object_id: str, name: str = Depends(who)):
        row = row_or_404(object_id)
        path = image_path(row)
        from galmorph.imaging.io import ImageError, is_fits

        if is_fits(path):
            from PIL import Image

            from galmorph.imaging.io import load_image, to_uint8

            try:
                arr = load_image(path, greyscale=True, allow_nan=True)
            except ImageError as exc:
                raise HTTPException(422, f"object {object_id}: {exc}") from exc
            buf = io.BytesIO()
            Image.fromarray(to_uint8(arr, asinh=True)).save(buf, format="PNG")
            return Response(buf.getvalue(), media_type="image/png")
        suffix = path.suffix.lower()
        media = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"}.get(suffix)
        if media is None:
            raise HTTPException(415, f"object {object_id}: unsupported image type {suffix!r}")
        from galmorph.imaging.io import load_image

        try:  # a full decode under the pixel limit: a bomb, a truncated or a corrupt file is not passed on
            load_image(path)
        except ImageError as exc:
            raise HTTPException(422, f"object {object_id}: {exc}") from exc
        return Response(path.read_bytes(), media_type=media, headers={"X-Content-Type-Options": "nosniff"})

    return app


_PAGE_HEADERS = {"X-Frame-Options": "DENY", "Content-Security-Policy": "frame-ancestors 'none'",
                 "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin", "Cache-Control": "no-store"}


def _templates():
    import jinja2

    return jinja2.Environment(loader=jinja2.PackageLoader("galmorph.labelling", "templates"),
                              autoescape=jinja2.select_autoescape(["html"]))


def _too_large(limit: int):
    """413 raised from inside the app (a streamed body passing the limit): an HTTPException so that
    FastAPI's body parsing passes it on instead of turning it into a 400."""
    from starlette.exceptions import HTTPException

    return HTTPException(413, f"request body over the limit of {limit} bytes")


class _RequestGuard:
    """ASGI middleware: ``Host`` allow-list (400) and request body limit (413, before reading)."""

    def __init__(self, app, allowed_hosts: set[str], max_body_bytes: int):
        self.app, self.hosts, self.limit = app, allowed_hosts, max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if scope.get("path") != "/healthz" and "*" not in self.hosts:
            host = _host_name(headers.get("host", ""))
            if host not in self.hosts:
                return await _plain(send, 400, "invalid Host header")
        cl = headers.get("content-length")
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


def _host_name(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):  # [::1]:8765
        return host[1:host.index("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


async def _plain(send, status: int, text: str) -> None:
    body = text.encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
