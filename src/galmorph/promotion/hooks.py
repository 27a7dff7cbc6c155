"""The receiver of MLflow registry events (webhooks, #27): verification, the delivery record, the HTTP app.

MLflow (3.x, SQL stores) posts each registry event as JSON ``{"entity", "action", "timestamp", "data"}`` with
the headers ``X-MLflow-Delivery-Id``, ``X-MLflow-Timestamp`` (Unix seconds) and ``X-MLflow-Signature``
(``v1,`` + base64 of the HMAC-SHA256 of ``"{delivery id}.{timestamp}.{payload}"``, the Standard Webhooks scheme).
:func:`verify_delivery` refuses (:class:`HookRejected`, HTTP 401; nothing recorded) a missing or bad signature, a
timestamp older than ``max_age`` seconds or more than a minute ahead (a replay of an old delivery). A valid
delivery is recorded by its id in :class:`DeliveryStore` (SQLite in the state folder) before anything else: the
same delivery twice (a retry) is answered 200 ``duplicate`` and handled once.

:class:`Receiver` serves ``POST /hooks/mlflow`` and ``GET /health`` (stdlib threading HTTP server) and hands each
new registry event of a model to one worker thread, so a delivery is answered at once and the handling (a policy
check, a rescoring start) runs after it, one model event at a time. What handling means is the caller's
``handle(model_name, event)`` (the platform's: :func:`galmorph.promotion.manual.handle_champion` and the rescoring,
wired by :mod:`galmorph.ops.hooks`); ``reconcile()`` runs first, at start.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-MLflow-Signature"
TIMESTAMP_HEADER = "X-MLflow-Timestamp"
DELIVERY_ID_HEADER = "X-MLflow-Delivery-Id"
HOOK_PATH = "/hooks/mlflow"
#: the registry events the platform subscribes to (``entity.action``)
EVENTS = ("model_version_alias.created", "model_version_alias.deleted", "model_version.created")
FUTURE_SKEW = 60.0
MAX_BODY = 1 << 20


class HookRejected(ValueError):
    """A delivery that is not accepted (HTTP 401): the message says why."""


def sign(secret: str, delivery_id: str, timestamp: str, body: bytes | str) -> str:
    """The ``X-MLflow-Signature`` of a delivery (as MLflow computes it)."""
    text = body.decode("utf-8") if isinstance(body, bytes) else body
    mac = hmac.new(secret.encode("utf-8"), f"{delivery_id}.{timestamp}.{text}".encode("utf-8"), hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode("ascii")


def verify_delivery(secret: str, headers: dict[str, str], body: bytes, max_age: float = 300.0,
                    now: float | None = None) -> dict:
    """The delivery ``{"delivery_id", "timestamp", "event"}`` (``event``: the parsed JSON body) when signed with
    ``secret`` and fresh; :class:`HookRejected` otherwise."""
    h = {k.lower(): v for k, v in headers.items()}
    did, ts, sig = (h.get(DELIVERY_ID_HEADER.lower()), h.get(TIMESTAMP_HEADER.lower()),
                    h.get(SIGNATURE_HEADER.lower()))
    if not did or not ts or not sig:
        raise HookRejected("missing delivery id, timestamp or signature header")
    try:
        t = float(ts)
    except ValueError:
        raise HookRejected(f"timestamp {ts!r} is not a number") from None
    expected = sign(secret, did, ts, body)
    if not any(hmac.compare_digest(expected, s.strip()) for s in sig.split(" ")):
        raise HookRejected("bad signature")
    now = time.time() if now is None else now
    if t < now - max_age:
        raise HookRejected(f"stale delivery: sent {now - t:.0f}s ago (> {max_age:.0f}s): a replay is refused")
    if t > now + FUTURE_SKEW:
        raise HookRejected(f"delivery timestamp {t - now:.0f}s in the future")
    try:
        event = json.loads(body)
    except ValueError:
        raise HookRejected("body is not JSON") from None
    if not isinstance(event, dict):
        raise HookRejected("body is not a JSON object")
    return {"delivery_id": did, "timestamp": t, "event": event}


class DeliveryStore:
    """Deliveries seen (by id) and rescorings started (by the audit run of the move), in one SQLite file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._db() as db:
            db.execute("CREATE TABLE IF NOT EXISTS deliveries (delivery_id TEXT PRIMARY KEY, received_at REAL, "
                       "sent_at REAL, entity TEXT, action TEXT, model TEXT, data TEXT, outcome TEXT)")
            db.execute("CREATE TABLE IF NOT EXISTS rescorings (move TEXT PRIMARY KEY, model TEXT, version TEXT, "
                       "claimed_at REAL, info TEXT)")

    def _db(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        return db

    def add_delivery(self, delivery: dict) -> bool:
        """Record a verified delivery; False when its id was recorded before (a duplicate)."""
        ev = delivery["event"]
        data = ev.get("data") if isinstance(ev.get("data"), dict) else {}
        with self._db() as db:
            cur = db.execute("INSERT OR IGNORE INTO deliveries VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                             (delivery["delivery_id"], time.time(), delivery["timestamp"], str(ev.get("entity")),
                              str(ev.get("action")), str(data.get("name")), json.dumps(data), "received"))
            return cur.rowcount == 1

    def set_outcome(self, delivery_id: str, outcome: str) -> None:
        with self._db() as db:
            db.execute("UPDATE deliveries SET outcome = ? WHERE delivery_id = ?", (outcome[:2000], delivery_id))

    def deliveries(self) -> list[dict]:
        with self._db() as db:
            db.row_factory = sqlite3.Row
            return [dict(r) for r in db.execute("SELECT * FROM deliveries ORDER BY received_at")]

    def claim_rescoring(self, move: str, model: str, version: str) -> bool:
        """Claim the rescoring of one move (its audit run id); False when it was claimed before."""
        with self._db() as db:
            cur = db.execute("INSERT OR IGNORE INTO rescorings VALUES (?, ?, ?, ?, ?)",
                             (move, model, version, time.time(), None))
            return cur.rowcount == 1

    def set_rescoring(self, move: str, info: dict) -> None:
        with self._db() as db:
            db.execute("UPDATE rescorings SET info = ? WHERE move = ?", (json.dumps(info, default=str), move))

    def rescorings(self) -> list[dict]:
        with self._db() as db:
            db.row_factory = sqlite3.Row
            rows = [dict(r) for r in db.execute("SELECT * FROM rescorings ORDER BY claimed_at")]
        return [{**r, "info": json.loads(r["info"]) if r["info"] else None} for r in rows]


def model_of(event: dict) -> str | None:
    data = event.get("data")
    return str(data["name"]) if isinstance(data, dict) and data.get("name") else None


class Receiver:
    """The HTTP receiver: verify, record, queue; one worker thread handles the queued events in order."""

    def __init__(self, secret: str, store: DeliveryStore, handle: Callable[[str, dict], Any],
                 reconcile: Callable[[], Any] | None = None, max_age: float = 300.0,
                 models: Callable[[str], bool] | None = None):
        if not secret:
            raise ValueError("the webhook receiver needs a secret")
        self.secret, self.store, self.handle, self.reconcile = secret, store, handle, reconcile
        self.max_age = max_age
        self.models = models or (lambda name: True)
        self.queue: queue.Queue = queue.Queue()
        self.ready = threading.Event()
        self.server: ThreadingHTTPServer | None = None

    # -- HTTP ------------------------------------------------------------------------------
    def receive(self, headers: dict[str, str], body: bytes) -> tuple[int, dict]:
        """One delivery -> ``(HTTP status, JSON answer)``."""
        try:
            d = verify_delivery(self.secret, headers, body, self.max_age)
        except HookRejected as exc:
            log.warning("webhook delivery refused: %s", exc)
            return 401, {"error": str(exc)}
        if not self.store.add_delivery(d):
            return 200, {"duplicate": True, "delivery_id": d["delivery_id"]}
        name = model_of(d["event"])
        if name is None or not self.models(name):
            self.store.set_outcome(d["delivery_id"], "ignored: not a galmorph model")
            return 200, {"ignored": True, "delivery_id": d["delivery_id"]}
        self.queue.put((name, {**d["event"], "delivery_id": d["delivery_id"],
                               "timestamp": d["event"].get("timestamp") or d["timestamp"]}))
        return 202, {"queued": True, "delivery_id": d["delivery_id"]}

    def _worker(self) -> None:
        if self.reconcile is not None:
            try:
                self.reconcile()
            except Exception:  # noqa: BLE001 - the receiver still serves; logged with the trace
                log.exception("reconciliation at start failed")
        self.ready.set()
        while True:
            item = self.queue.get()
            if item is None:
                return
            name, event = item
            try:
                out = self.handle(name, event)
                self.store.set_outcome(event["delivery_id"], f"handled: {out}")
            except Exception as exc:  # noqa: BLE001 - recorded on the delivery; the next event goes on
                log.exception("handling %s of %s failed", event.get("entity"), name)
                self.store.set_outcome(event["delivery_id"], f"failed: {type(exc).__name__}: {exc}")

    def serve(self, host: str, port: int) -> None:
        """Serve until interrupted (the worker reconciles first, then handles deliveries)."""
        receiver = self

        class _Handler(BaseHTTPRequestHandler):
            def log_message(self, fmt, *args):  # noqa: A002 - the stdlib's signature
                log.info("%s " + fmt, self.address_string(), *args)

            def _answer(self, status: int, doc: dict) -> None:
                body = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):  # noqa: N802 - the stdlib's name
                if self.path == "/health":
                    self._answer(200, {"ok": True, "reconciled": receiver.ready.is_set()})
                else:
                    self._answer(404, {"error": "not found"})

            def do_POST(self):  # noqa: N802
                n = int(self.headers.get("Content-Length") or 0)
                if self.path != HOOK_PATH or n > MAX_BODY:
                    self._answer(404 if self.path != HOOK_PATH else 413, {"error": "not accepted"})
                    return
                self._answer(*receiver.receive(dict(self.headers.items()), self.rfile.read(n)))

        self.server = ThreadingHTTPServer((host, port), _Handler)
        threading.Thread(target=self._worker, name="hooks-worker", daemon=True).start()
        log.info("registry-event receiver on http://%s:%d%s", host, port, HOOK_PATH)
        try:
            self.server.serve_forever()
        finally:
            self.queue.put(None)
            self.server.server_close()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
