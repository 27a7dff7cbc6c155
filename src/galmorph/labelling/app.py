"""The labelling web app (FastAPI): one page, keyboard driven, for any task.

The labels, keys and overlays come from the task (:mod:`galmorph.labelling.choices`): lopsided
``S``/``L``, arms ``1``-``5``/``X``, chirality ``C``/``A``/``X``, and everywhere ``U`` unsure (skip),
``Z`` undo and ``O`` to toggle the overlay (SVG over the image, in the coordinates of the image the
overlay was measured on): the A1 centre and R50/R90 circles (lopsided) or the winding annulus and
sense (chirality, arms). Progress and per-redshift-bin tallies are shown for the labeller.

Endpoints: ``GET /`` (page), ``GET /api/state``, ``GET /api/object/{id}``, ``POST /api/label``
(``{"object_id", "label"}``), ``POST /api/undo``, ``GET /api/agreement``, ``GET /image/{id}``,
``GET /healthz``; with token auth also ``GET/POST /login`` and ``POST /logout``. Unknown objects
give 404, malformed bodies and labels that are not the task's 422 (the body is never echoed), images
whose URI resolves outside the image roots (the data root, the queue's folder, ``image_roots``: the
CLI's ``--image-root``) 403 saying so, unreadable images 422. The client never sends a path: images
are looked up by object id. Security (authentication, CSRF, allowed hosts, body limit):
:mod:`galmorph.labelling.security`.
"""

from __future__ import annotations

from collections import Counter

import io
import logging
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
from pydantic import BaseModel, Field
from starlette.requests import Request  # module level: FastAPI resolves the (string) annotations here

from galmorph.jsonsafe import finite_json
from galmorph.labelling.choices import TaskLabelling, labelling_for
from galmorph.labelling.overlays import OverlayCache, clean, winding_info  # noqa: F401 - winding_info: API
from galmorph.labelling.security import (  # noqa: F401 - re-exported: the app's public names
    COOKIE,
    CSRF_HEADER,
    CSRF_VALUE,
    LOOPBACK_HOSTS,
    MAX_BODY_BYTES,
    PAGE_HEADERS,
    Access,
    AuthError,
    BodyLimit,
    HostGuard,
    LabelAuth,
    read_tokens_file,
    same_origin,
    trusted_host_patterns,
)
from galmorph.labelling.store import LabelError, LabelStore, UnknownObject

log = logging.getLogger(__name__)

#: What the 403 of an image outside the image roots says (the CLI option that allows its folder).
OUTSIDE_ROOTS = ("the image lies outside the image roots (the data root, the queue's folder and any "
                 "--image-root folders): restart `galmorph label serve` with --image-root <folder holding the "
                 "images>")


class LabelIn(BaseModel):
    """Body of ``POST /api/label`` (the label is checked against the task's labels by the route)."""

    object_id: str = Field(min_length=1, max_length=200)
    label: str = Field(min_length=1, max_length=32)


def _is_within(path: Path, roots: list[Path]) -> bool:
    p = path.resolve()
    return any(p == r or r in p.parents for r in roots)


class LabelQueue:
    """The queue an app serves: its rows by object id, its z bins, the image roots, the task's labels
    and overlays, and the per-labeller state."""

    def __init__(self, queue: pd.DataFrame, store: LabelStore, spec: TaskLabelling, data_root: Path | str | None,
                 image_roots: Iterable[Path | str] | None, measure_missing_a1: bool = True):
        queue = queue.sort_values("queue_position", kind="stable").reset_index(drop=True)
        queue["object_id"] = queue["object_id"].astype(str)
        self.store, self.spec, self.task, self.data_root = store, spec, spec.task, data_root
        self.rows = {r["object_id"]: r for r in queue.to_dict(orient="records")}
        self.order = list(queue["object_id"])
        self.bin_of = {o: str(b) for o, b in zip(queue["object_id"], queue["queue_bin"])}
        self.bins = sorted(set(self.bin_of.values()))
        self.bin_totals = Counter(self.bin_of.values())
        self.roots = [Path(r).resolve() for r in (image_roots or [])]
        if data_root is not None:
            self.roots.append(Path(data_root).resolve())
        self.overlays = OverlayCache(spec.overlays, data_root, measure_missing_a1)

    def row_or_404(self, object_id: str) -> dict:
        from fastapi import HTTPException

        row = self.rows.get(object_id)
        if row is None:
            raise HTTPException(404, f"object {object_id!r} is not in this labelling queue")
        return row

    def resolve(self, row: dict) -> Path:
        """The row's image path (ManifestError for a bad URI, RuntimeError/OSError when unresolvable)."""
        from galmorph.catalogue.manifest import resolve_image_uri

        return resolve_image_uri(clean(row.get("image_uri")), self.data_root)

    def image_path(self, row: dict) -> Path:
        """The row's image file, or 400 (bad URI) / 404 (missing, unresolvable) / 403 (outside the roots)."""
        from fastapi import HTTPException

        from galmorph.catalogue.manifest import ManifestError

        oid = row["object_id"]
        try:
            path = self.resolve(row)
        except ManifestError as exc:
            raise HTTPException(400, f"object {oid}: {exc}") from exc
        try:
            inside = _is_within(path, self.roots)
        except (RuntimeError, OSError) as exc:  # a symlink loop (RuntimeError on Python 3.11)
            raise HTTPException(404, f"object {oid}: image path cannot be resolved ({exc})") from exc
        if not inside:
            raise HTTPException(403, f"object {oid}: {OUTSIDE_ROOTS}")
        if not path.is_file():
            raise HTTPException(404, f"object {oid}: image file not found")
        return path

    def images_outside_roots(self) -> list[tuple[str, Path]]:
        """``(object_id, image path)`` of every queued image that resolves outside the image roots (each
        answers 403); images whose URI cannot be resolved are not counted."""
        from galmorph.catalogue.manifest import ManifestError

        out = []
        for oid in self.order:
            try:
                path = self.resolve(self.rows[oid])
                if not _is_within(path, self.roots):
                    out.append((oid, path))
            except (ManifestError, RuntimeError, OSError, TypeError):
                continue
        return out

    def state(self, name: str) -> dict:
        # every POST answers with this state: one light query and counts over this labeller's labels (the
        # queue's bins are counted once, at start), not a pass over the queue per bin
        mine = {o: lab for o, lab in self.store.current_labels(self.task, name) if o in self.rows}
        nxt = next((o for o in self.order if o not in mine), None)
        per_bin = Counter((self.bin_of[o], lab) for o, lab in mine.items())
        done = Counter(self.bin_of[o] for o in mine)
        tallies = [{"bin": b, "total": self.bin_totals[b], "done": done[b],
                    **{c: per_bin[(b, c)] for c in self.spec.labels}} for b in self.bins]
        return {"labeller": name, "task": self.task, "labels": list(self.spec.labels), "total": len(self.order),
                "done": len(mine), "next": nxt, "bins": tallies, "n_labellers": len(self.store.labellers(self.task))}

    def object_info(self, object_id: str, name: str) -> dict:
        row = self.row_or_404(object_id)
        mine = self.store.labels(self.task, name)
        mine = mine[mine.object_id == object_id]
        return {
            "object_id": object_id, "z": clean(row.get("z")), "queue_bin": clean(row.get("queue_bin")),
            "queue_position": clean(row.get("queue_position")), "survey": clean(row.get("survey")),
            "image_url": f"/image/{object_id}", "my_label": mine.label.iloc[0] if len(mine) else None,
            "entropy": clean(row.get("entropy")), **self.overlays.get(row),
        }

    def check_label(self, label: str) -> None:
        """422 unless ``label`` is one of the task's labels (the label itself is not echoed)."""
        from fastapi import HTTPException

        if label not in self.spec.labels:
            raise HTTPException(422, f"not a label of the {self.task} task: send one of {list(self.spec.labels)}")


def create_app(queue: pd.DataFrame, store: LabelStore, labeller: str | None = None,
               data_root: Path | str | None = None, image_roots: list[Path | str] | None = None,
               task: str = "lopsided", queue_name: str | None = None, measure_missing_a1: bool = True,
               auth: LabelAuth | None = None, allowed_hosts: Iterable[str] | None = None,
               max_body_bytes: int = MAX_BODY_BYTES, secure_cookies: bool = False):
    """The FastAPI app on one queue (``queue`` as read by :func:`galmorph.labelling.queue.read_queue`)
    labelled for ``task``. The queue's objects are registered in ``store``.

    Either ``labeller`` (one labeller, no authentication: serve it on loopback only) or ``auth``
    (the labeller of each request is its authenticated identity). ``allowed_hosts``: values the
    ``Host`` header may take (default: loopback names; ``"*"`` allows any, ``"*.example.org"`` its
    subdomains). ``app.state.images_outside_roots`` lists the queued images that will answer 403."""
    from fastapi import FastAPI

    spec = labelling_for(task)
    access = Access(store, labeller, auth)
    if max_body_bytes < 1:
        raise ValueError(f"max_body_bytes must be positive (got {max_body_bytes})")
    hosts = trusted_host_patterns(allowed_hosts)
    store.register_queue(queue, queue_name)
    q = LabelQueue(queue, store, spec, data_root, image_roots, measure_missing_a1)

    app = FastAPI(title=f"galmorph labelling ({task})", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(BodyLimit, max_body_bytes=max_body_bytes)
    app.add_middleware(HostGuard, allowed_hosts=hosts)  # the last added is the outermost: the host check first
    _error_handlers(app, store)
    _page_routes(app, q, access, secure_cookies)
    _api_routes(app, q, access)
    _image_routes(app, q, access)
    app.state.images_outside_roots = q.images_outside_roots()
    if app.state.images_outside_roots:
        oid, path = app.state.images_outside_roots[0]
        log.warning("%d of %d queued images lie outside the image roots %s (e.g. %s: %s) and will answer 403: "
                    "serve with --image-root <folder holding the images>", len(app.state.images_outside_roots),
                    len(q.order), [str(r) for r in q.roots], oid, path)
    return app


def _error_handlers(app, store: LabelStore) -> None:
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
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


def _page_context(q: LabelQueue, name: str, logout: bool) -> dict:
    spec = q.spec
    return {"labeller": name, "logout": logout, "title": spec.title, "task": spec.task,
            "overlays": list(spec.overlays),
            "choices": [{"label": c.label, "key": c.key, "text": c.text} for c in spec.choices]}


def _page_routes(app, q: LabelQueue, access: Access, secure_cookies: bool) -> None:
    """``GET /healthz``, ``GET /`` and, with token sign-in, ``GET/POST /login`` and ``POST /logout``."""
    from fastapi import HTTPException
    from fastapi.responses import HTMLResponse, RedirectResponse

    templates = _templates()

    @app.get("/healthz")
    def healthz():
        return {"ok": True}

    @app.get("/", response_class=HTMLResponse)
    def page(request: Request):
        name = access.identity(request)
        if name is None:
            if access.sign_in:
                return RedirectResponse("/login", status_code=303)
            raise HTTPException(401, f"not signed in (the auth proxy did not send {access.auth.proxy_header})")
        html = templates.get_template("page.html").render(**_page_context(q, name, access.sign_in))
        return HTMLResponse(html, headers=PAGE_HEADERS)

    if access.sign_in:
        _login_routes(app, access, templates, secure_cookies)


def _login_routes(app, access: Access, templates, secure_cookies: bool) -> None:
    from fastapi.responses import HTMLResponse, RedirectResponse

    @app.get("/login", response_class=HTMLResponse)
    def login_form():
        return HTMLResponse(templates.get_template("login.html").render(error=None), headers=PAGE_HEADERS)

    @app.post("/login")
    async def login(request: Request):
        from urllib.parse import parse_qs

        same_origin(request)
        body = (await request.body()).decode("utf-8", "replace")
        token = (parse_qs(body).get("token") or [""])[0].strip()
        if access.auth.labeller_for(token, access.store) is None:
            html = templates.get_template("login.html").render(error="unknown or revoked token")
            return HTMLResponse(html, status_code=401, headers=PAGE_HEADERS)
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


def _api_routes(app, q: LabelQueue, access: Access) -> None:
    """``/api/state``, ``/api/object/{id}``, ``/api/label``, ``/api/undo``, ``/api/agreement``."""
    from fastapi import Depends, HTTPException
    from fastapi.responses import JSONResponse

    who, writer = access.who, access.writer

    @app.get("/api/state")
    def api_state(name: str = Depends(who)):
        return q.state(name)

    @app.get("/api/object/{object_id}")
    def api_object(object_id: str, name: str = Depends(who)):
        return q.object_info(object_id, name)

    @app.post("/api/label")
    def api_label(body: LabelIn, name: str = Depends(writer)):
        if body.object_id not in q.rows:
            raise HTTPException(404, f"object {body.object_id!r} is not in this labelling queue")
        q.check_label(body.label)
        try:
            res = q.store.set_label(body.object_id, name, body.label, q.task)
        except UnknownObject as exc:
            raise HTTPException(404, str(exc)) from exc
        except LabelError as exc:
            raise HTTPException(422, str(exc)) from exc
        return {"saved": res, "state": q.state(name)}

    @app.post("/api/undo")
    def api_undo(name: str = Depends(writer)):
        try:
            res = q.store.undo(name, q.task)
        except LabelError as exc:
            raise HTTPException(409, str(exc)) from exc
        return {"undone": res, "state": q.state(name)}

    @app.get("/api/agreement")
    def api_agreement(name: str = Depends(who)):
        from galmorph.labelling.agreement import agreement_report

        rep = agreement_report(q.store.labels(q.task), task=q.task)
        return JSONResponse(content=finite_json(rep))


def _image_routes(app, q: LabelQueue, access: Access) -> None:
    from fastapi import Depends

    @app.get("/image/{object_id}")
    def image(object_id: str, name: str = Depends(access.who)):
        return image_response(object_id, q.image_path(q.row_or_404(object_id)))


def image_response(object_id: str, path: Path):
    """The image at ``path`` for the browser: FITS rendered to PNG (asinh), JPEG/PNG passed on after a
    full decode (a bomb, a truncated or a corrupt file is a 422, an other type 415)."""
    from fastapi import HTTPException
    from fastapi.responses import Response

    from galmorph.imaging.io import ImageError, is_fits, load_image

    if is_fits(path):
        from PIL import Image

        from galmorph.imaging.io import to_uint8

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
    try:  # a full decode under the pixel limit
        load_image(path)
    except ImageError as exc:
        raise HTTPException(422, f"object {object_id}: {exc}") from exc
    return Response(path.read_bytes(), media_type=media, headers={"X-Content-Type-Options": "nosniff"})


def _templates():
    import jinja2

    return jinja2.Environment(loader=jinja2.PackageLoader("galmorph.labelling", "templates"),
                              autoescape=jinja2.select_autoescape(["html"]))
