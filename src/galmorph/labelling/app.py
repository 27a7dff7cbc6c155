"""The labelling web app (FastAPI): one page, keyboard driven, served on 127.0.0.1.

Keys: ``L`` lopsided, ``S`` symmetric, ``U`` unsure (skip), ``Z`` undo, ``O`` toggles the overlay
of the measured centre and the R50/R90 circles (SVG over the image, in the coordinates of the
image A1 was measured on). Progress and per-redshift-bin tallies are shown for the labeller.

Endpoints: ``GET /`` (page), ``GET /api/state``, ``GET /api/object/{id}``, ``POST /api/label``
(``{"object_id", "label"}``), ``POST /api/undo``, ``GET /api/agreement``, ``GET /image/{id}``,
``GET /healthz``. Unknown objects give 404, malformed labels 422, images whose URI resolves outside
the allowed folders (the data root, the queue's folder, ``image_roots``) 403, unreadable images 422.
The client never sends a path: images are looked up by object id.
"""

from __future__ import annotations

import io
import logging
import math
from pathlib import Path
from typing import Literal

import pandas as pd
from pydantic import BaseModel, Field

from galmorph.jsonsafe import finite_json
from galmorph.labelling.store import LabelError, LabelStore, UnknownObject

log = logging.getLogger(__name__)

_A1_FIELDS = ("a1", "a1_err", "a1_x0", "a1_y0", "a1_r50_px", "a1_r90_px", "a1_width", "a1_height", "a1_flags",
              "a1_error", "a1_radii_source")


class LabelIn(BaseModel):
    """Body of ``POST /api/label``."""

    object_id: str = Field(min_length=1, max_length=200)
    label: Literal["symmetric", "lopsided", "unsure"]


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


def _is_within(path: Path, roots: list[Path]) -> bool:
    p = path.resolve()
    return any(p == r or r in p.parents for r in roots)


def create_app(queue: pd.DataFrame, store: LabelStore, labeller: str, data_root: Path | str | None = None,
               image_roots: list[Path | str] | None = None, task: str = "lopsided", queue_name: str | None = None,
               measure_missing_a1: bool = True):
    """The FastAPI app for one labeller on one queue (``queue`` as read by
    :func:`galmorph.labelling.queue.read_queue`). The queue's objects are registered in ``store``."""
    from fastapi import FastAPI, HTTPException
    from fastapi.responses import HTMLResponse, JSONResponse, Response

    from galmorph.manifest import ManifestError, resolve_image_uri

    labeller = labeller.strip()
    if not labeller:
        raise ValueError("labeller name is empty")
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

    app = FastAPI(title="galmorph labelling", docs_url=None, redoc_url=None)

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
        if not _is_within(path, roots):
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
            from galmorph.imaging.a1 import measure_a1_frame

            measured, quarantine = measure_a1_frame(pd.DataFrame([row]), data_root=data_root, progress=False)
            if len(measured):
                info = {k: _clean(measured.iloc[0].get(k)) for k in _A1_FIELDS}
            else:
                info["a1_error"] = quarantine[0]["reason"] if quarantine else "not measured"
        a1_cache[oid] = info
        return info

    def state() -> dict:
        lab = store.labels(task, labeller)
        lab = lab[lab.object_id.isin(rows)]
        mine = dict(zip(lab.object_id, lab.label))
        nxt = next((o for o in order if o not in mine), None)
        tallies = []
        for b in bins:
            ids = [o for o in order if str(rows[o].get("queue_bin")) == b]
            labs = [mine[o] for o in ids if o in mine]
            tallies.append({"bin": b, "total": len(ids), "done": len(labs),
                            **{c: labs.count(c) for c in ("lopsided", "symmetric", "unsure")}})
        return {"labeller": labeller, "task": task, "total": len(order), "done": len(mine), "next": nxt,
                "bins": tallies, "n_labellers": len(store.labellers(task))}

    @app.get("/healthz")
    def healthz():
        return {"ok": True, "objects": len(order)}

    @app.get("/", response_class=HTMLResponse)
    def page():
        return HTMLResponse(PAGE.replace("__LABELLER__", _html_escape(labeller)))

    @app.get("/api/state")
    def api_state():
        return state()

    @app.get("/api/object/{object_id}")
    def api_object(object_id: str):
        row = row_or_404(object_id)
        info = a1_info(row)
        mine = store.labels(task, labeller)
        mine = mine[mine.object_id == object_id]
        return {
            "object_id": object_id, "z": _clean(row.get("z")), "queue_bin": _clean(row.get("queue_bin")),
            "queue_position": _clean(row.get("queue_position")), "survey": _clean(row.get("survey")),
            "image_url": f"/image/{object_id}", "a1": info, "my_label": mine.label.iloc[0] if len(mine) else None,
            "entropy": _clean(row.get("entropy")),
        }

    @app.post("/api/label")
    def api_label(body: LabelIn):
        if body.object_id not in rows:
            raise HTTPException(404, f"object {body.object_id!r} is not in this labelling queue")
        try:
            res = store.set_label(body.object_id, labeller, body.label, task)
        except UnknownObject as exc:
            raise HTTPException(404, str(exc)) from exc
        except LabelError as exc:
            raise HTTPException(422, str(exc)) from exc
        return {"saved": res, "state": state()}

    @app.post("/api/undo")
    def api_undo():
        try:
            res = store.undo(labeller, task)
        except LabelError as exc:
            raise HTTPException(409, str(exc)) from exc
        return {"undone": res, "state": state()}

    @app.get("/api/agreement")
    def api_agreement():
        from galmorph.labelling.agreement import agreement_report

        rep = agreement_report(store.labels(task))
        return JSONResponse(content=finite_json(rep))

    @app.get("/image/{object_id}")
    def image(object_id: str):
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
        return Response(path.read_bytes(), media_type=media)

    return app



def _html_escape(s: str) -> str:
    return (s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
            .replace("'", "&#39;"))


PAGE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>galmorph labelling</title>
<style>
 body { font-family: system-ui, sans-serif; margin: 1.2em; background: #111; color: #eee; }
 #wrap { display: flex; gap: 2em; align-items: flex-start; }
 #stage { position: relative; width: 512px; height: 512px; background: #000; }
 #galaxy { width: 512px; height: 512px; image-rendering: pixelated; display: block; }
 #overlay { position: absolute; left: 0; top: 0; width: 512px; height: 512px; pointer-events: none; }
 .hidden { display: none; }
 table { border-collapse: collapse; } td, th { padding: 2px 8px; border-bottom: 1px solid #333; text-align: right; }
 kbd { background: #333; border-radius: 3px; padding: 1px 5px; }
 button { margin: 2px; }
 #status { min-height: 1.4em; color: #9f9; } .err { color: #f88 !important; }
</style></head>
<body>
<h2>galmorph &middot; lopsidedness labelling &middot; <span id="labeller">__LABELLER__</span></h2>
<div id="wrap">
 <div>
  <div id="stage">
   <img id="galaxy" alt="galaxy image">
   <svg id="overlay" viewBox="0 0 100 100" preserveAspectRatio="none">
    <circle id="ring-r90" cx="0" cy="0" r="0" fill="none" stroke="#4cf" stroke-width="0.6" vector-effect="non-scaling-stroke"/>
    <circle id="ring-r50" cx="0" cy="0" r="0" fill="none" stroke="#fc4" stroke-width="0.6" vector-effect="non-scaling-stroke"/>
    <g id="centre-marker" stroke="#f44" stroke-width="1" vector-effect="non-scaling-stroke">
     <line id="cm-h" x1="0" y1="0" x2="0" y2="0" vector-effect="non-scaling-stroke"/>
     <line id="cm-v" x1="0" y1="0" x2="0" y2="0" vector-effect="non-scaling-stroke"/>
    </g>
   </svg>
  </div>
  <label><input type="checkbox" id="overlay-toggle" checked> overlay (<kbd>O</kbd>): centre, R50 (yellow), R90 (blue)</label>
 </div>
 <div>
  <p>object <b id="object-id"></b> &middot; z = <span id="z"></span> &middot; bin <span id="bin"></span></p>
  <p>A1 = <b id="a1"></b> <span id="a1-flags"></span></p>
  <p>your label: <span id="my-label">-</span></p>
  <p><button id="btn-l">Lopsided <kbd>L</kbd></button><button id="btn-s">Symmetric <kbd>S</kbd></button>
     <button id="btn-u">Unsure/skip <kbd>U</kbd></button><button id="btn-z">Undo <kbd>Z</kbd></button></p>
  <p id="status"></p>
  <p>progress: <b id="progress"></b></p>
  <table id="tallies"><thead><tr><th>z bin</th><th>done</th><th>total</th><th>L</th><th>S</th><th>U</th></tr></thead><tbody></tbody></table>
 </div>
</div>
<script>
let current = null, busy = false;
const $ = (id) => document.getElementById(id);
function setStatus(msg, err) { $("status").textContent = msg; $("status").className = err ? "err" : ""; }
function fmt(v, d) { return (v === null || v === undefined) ? "n/a" : Number(v).toFixed(d); }
function drawOverlay(a) {
  const ok = a && a.a1_x0 !== null && a.a1_width;
  $("overlay").classList.toggle("hidden", !ok || !$("overlay-toggle").checked);
  if (!ok) return;
  $("overlay").setAttribute("viewBox", `0 0 ${a.a1_width} ${a.a1_height}`);
  const cx = a.a1_x0 + 0.5, cy = a.a1_y0 + 0.5, s = Math.max(a.a1_width, a.a1_height) / 60;
  for (const [id, r] of [["ring-r50", a.a1_r50_px], ["ring-r90", a.a1_r90_px]]) {
    const c = $(id); c.setAttribute("cx", cx); c.setAttribute("cy", cy); c.setAttribute("r", r || 0);
  }
  const h = $("cm-h"), v = $("cm-v");
  h.setAttribute("x1", cx - s); h.setAttribute("x2", cx + s); h.setAttribute("y1", cy); h.setAttribute("y2", cy);
  v.setAttribute("x1", cx); v.setAttribute("x2", cx); v.setAttribute("y1", cy - s); v.setAttribute("y2", cy + s);
}
let lastA1 = null;
async function showObject(id) {
  const r = await fetch(`/api/object/${encodeURIComponent(id)}`);
  if (!r.ok) { setStatus(`cannot load ${id}: ${(await r.json()).detail}`, true); return; }
  const o = await r.json();
  $("galaxy").src = o.image_url;
  $("z").textContent = fmt(o.z, 4); $("bin").textContent = o.queue_bin;
  const a = o.a1 || {}; lastA1 = a;
  $("a1").textContent = a.a1 !== null && a.a1 !== undefined ? `${fmt(a.a1, 3)} ± ${fmt(a.a1_err, 3)}` : "n/a";
  $("a1-flags").textContent = a.a1_error ? `(${a.a1_error})` : (a.a1_flags ? `flags: ${a.a1_flags}` : "");
  $("my-label").textContent = o.my_label || "-";
  drawOverlay(a);
  current = id; $("object-id").textContent = id; document.body.dataset.objectId = id;
}
function showState(s) {
  $("progress").textContent = `${s.done} / ${s.total}`;
  const tb = $("tallies").querySelector("tbody"); tb.innerHTML = "";
  for (const b of s.bins) {
    const tr = document.createElement("tr");
    tr.className = "bin-row";
    for (const v of [b.bin, b.done, b.total, b.lopsided, b.symmetric, b.unsure]) {
      const td = document.createElement("td"); td.textContent = v; tr.appendChild(td);
    }
    tb.appendChild(tr);
  }
}
async function refresh() {
  const s = await (await fetch("/api/state")).json();
  showState(s);
  if (s.next) { await showObject(s.next); }
  else { current = null; $("object-id").textContent = "(queue finished)"; document.body.dataset.objectId = "";
         $("galaxy").removeAttribute("src"); $("overlay").classList.add("hidden"); }
}
async function label(l) {
  if (!current || busy) return; busy = true;
  try {
    const r = await fetch("/api/label", {method: "POST", headers: {"Content-Type": "application/json"},
                                          body: JSON.stringify({object_id: current, label: l})});
    const j = await r.json();
    if (!r.ok) { setStatus(`error: ${j.detail}`, true); } else { setStatus(`${j.saved.object_id}: ${l}`); }
    await refresh();
  } finally { busy = false; }
}
async function undo() {
  if (busy) return; busy = true;
  try {
    const r = await fetch("/api/undo", {method: "POST"}); const j = await r.json();
    if (!r.ok) { setStatus(j.detail, true); } else { setStatus(`undone: ${j.undone.object_id}`); }
    await refresh();
  } finally { busy = false; }
}
document.addEventListener("keydown", (e) => {
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  const k = e.key.toLowerCase();
  if (k === "l") label("lopsided"); else if (k === "s") label("symmetric"); else if (k === "u") label("unsure");
  else if (k === "z") undo();
  else if (k === "o") { $("overlay-toggle").checked = !$("overlay-toggle").checked; drawOverlay(lastA1); }
});
$("overlay-toggle").addEventListener("change", () => drawOverlay(lastA1));
$("btn-l").onclick = () => label("lopsided"); $("btn-s").onclick = () => label("symmetric");
$("btn-u").onclick = () => label("unsure"); $("btn-z").onclick = () => undo();
refresh();
</script>
</body></html>
"""
