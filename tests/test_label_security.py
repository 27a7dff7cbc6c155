"""The labelling app under attack (issue #17, classes 1 and 2): authentication, CSRF, allowed hosts,
request size limit, unreadable images, and concurrent label writes and undos against a real server."""

from __future__ import annotations

import http.client
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest

from galmorph.labelling.store import LabelStore, hash_token

CLI = [sys.executable, "-c", "from galmorph.cli import main; main()"]
CSRF = {"X-Requested-With": "galmorph"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def queue(tmp_path) -> pd.DataFrame:
    """Twelve objects with small FITS images; object n11's image is all NaN."""
    from astropy.io import fits

    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        path = tmp_path / f"g{i}.fits"
        data = np.full((24, 24), np.nan) if i == 11 else rng.normal(size=(24, 24))
        fits.writeto(path, data)
        rows.append({"object_id": f"n{i:02d}", "queue_bin": "0.01-0.10", "queue_position": i, "z": 0.05,
                     "image_uri": str(path), "a1": 0.1, "a1_error": None})
    return pd.DataFrame(rows)


def _client(app, host="127.0.0.1", headers=None):
    from fastapi.testclient import TestClient

    return TestClient(app, raise_server_exceptions=False, base_url=f"http://{host}", headers=headers or {})


def _app(queue, tmp_path, **kw):
    from galmorph.labelling.app import create_app

    store = LabelStore(f"sqlite:///{tmp_path / 'labels.db'}")
    kw.setdefault("labeller", None if "auth" in kw else "alice")
    app = create_app(queue, store, image_roots=[tmp_path], measure_missing_a1=False, **kw)
    return app, store


class _Server:
    """The app under uvicorn on 127.0.0.1 in a thread (real sockets, real concurrency)."""

    def __init__(self, app):
        import uvicorn

        self.port = _free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            assert time.time() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)

    def request(self, method, path, body=None, headers=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request(method, path, body=body, headers={"Host": f"127.0.0.1:{self.port}", **(headers or {})})
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()


# ---------------------------------------------------------------------------------------- CSRF, hosts
def test_cross_origin_undo_and_missing_csrf_header_are_refused(queue, tmp_path):
    app, store = _app(queue, tmp_path)
    c = _client(app)
    assert c.post("/api/label", json={"object_id": "n00", "label": "lopsided"}, headers=CSRF).status_code == 200
    # the attack of the report: a cross-origin page posting /api/undo with no body
    evil = c.post("/api/undo", headers={"Origin": "http://evil.example", **CSRF})
    assert evil.status_code == 403
    assert c.post("/api/undo", headers={"Sec-Fetch-Site": "cross-site", **CSRF}).status_code == 403
    # a plain form/fetch without the custom header (what a cross-origin page can send without preflight)
    assert c.post("/api/undo").status_code == 403
    assert c.post("/api/label", json={"object_id": "n01", "label": "symmetric"}).status_code == 403
    assert list(store.labels().object_id) == ["n00"] and len(store.events()) == 1
    # the app's own page, same origin, with the header: allowed
    ok = c.post("/api/undo", headers={"Origin": "http://127.0.0.1", **CSRF})
    assert ok.status_code == 200 and ok.json()["undone"]["object_id"] == "n00"


def test_foreign_host_header_is_400_and_healthz_is_exempt(queue, tmp_path):
    app, _ = _app(queue, tmp_path)
    assert _client(app, host="evil.example").get("/api/state").status_code == 400
    assert _client(app, host="evil.example").get("/").status_code == 400
    assert _client(app, host="evil.example").get("/healthz").status_code == 200
    assert _client(app, host="localhost").get("/api/state").status_code == 200
    app2, _ = _app(queue, tmp_path, allowed_hosts=["label.example.org"])
    assert _client(app2, host="label.example.org").get("/api/state").status_code == 200
    assert _client(app2, host="127.0.0.1").get("/api/state").status_code == 400


def test_host_header_is_parsed_strictly(queue, tmp_path):
    """The home-made check took ``127.0.0.1:8772@evil.example`` for 127.0.0.1 (Starlette's
    TrustedHostMiddleware now parses the header: anything but host[:port] is refused)."""
    app, _ = _app(queue, tmp_path)
    c = _client(app)
    for bad in ("127.0.0.1:8772@evil.example", "evil.example#127.0.0.1", "127.0.0.1:8772:1", "localhost.",
                "[::1", "127.0.0.1 evil.example"):
        r = c.get("/api/state", headers={"Host": bad})
        assert r.status_code == 400, bad
    for good in ("127.0.0.1:8772", "127.0.0.1", "localhost:8772", "[::1]:8772", "LOCALHOST"):
        assert c.get("/api/state", headers={"Host": good}).status_code == 200, good
    assert c.get("/healthz", headers={"Host": "127.0.0.1:8772@evil.example"}).status_code == 200
    # over a real socket too (uvicorn passes the header through as sent)
    with _Server(app) as srv:
        assert srv.request("GET", "/api/state", headers={"Host": f"127.0.0.1:{srv.port}@evil.example"})[0] == 400
        assert srv.request("GET", "/api/state")[0] == 200
    # subdomain wildcards; a malformed pattern is refused when the app is made
    app3, _ = _app(queue, tmp_path, allowed_hosts=["*.label.example.org"])
    assert _client(app3, host="alice.label.example.org").get("/api/state").status_code == 200
    assert _client(app3, host="label.example.org.evil.example").get("/api/state").status_code == 400
    with pytest.raises(ValueError, match="wildcard"):
        _app(queue, tmp_path, allowed_hosts=["label.*.org"])
    with pytest.raises(ValueError, match="without a port"):
        _app(queue, tmp_path, allowed_hosts=["label.example.org:8443"])


# ---------------------------------------------------------------------------------------- body size
def test_oversize_body_refused_before_it_is_read(queue, tmp_path):
    app, store = _app(queue, tmp_path, max_body_bytes=1000)
    with _Server(app) as srv:
        # announce 200 MB and send none of it: the answer comes at once (nothing is buffered)
        sock = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
        sock.sendall(f"POST /api/label HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\nContent-Type: application/json\r\n"
                     f"X-Requested-With: galmorph\r\nContent-Length: {200 * 1024 * 1024}\r\n\r\n".encode())
        sock.sendall(b"x" * 4096)
        reply = sock.recv(4096).decode("latin-1")
        sock.close()
        assert reply.startswith("HTTP/1.1 413"), reply[:200]

        # a chunked body (no Content-Length) is cut when it passes the limit
        def chunks():
            for _ in range(100):
                yield b"y" * 500

        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
        conn.request("POST", "/api/label", body=chunks(), encode_chunked=True,
                     headers={"Content-Type": "application/json", **CSRF, "Host": f"127.0.0.1:{srv.port}"})
        assert conn.getresponse().status == 413
        conn.close()
        # a malformed body under the limit: 422 without echoing it
        status, body = srv.request("POST", "/api/label", body=b'{"object_id": "SECRET-PAYLOAD", "label": 7}',
                                   headers={"Content-Type": "application/json", **CSRF})
        assert status == 422 and b"SECRET-PAYLOAD" not in body
    assert len(store.events()) == 0


def test_all_nan_fits_image_is_a_clear_4xx(queue, tmp_path):
    app, _ = _app(queue, tmp_path)
    r = _client(app).get("/image/n11")
    assert r.status_code == 422 and "no finite pixels" in r.json()["detail"]
    ok = _client(app).get("/image/n00")
    assert ok.status_code == 200 and ok.content[:4] == b"\x89PNG"


# ---------------------------------------------------------------------------------------- authentication
def test_token_auth_identity_comes_from_the_token(queue, tmp_path):
    from galmorph.labelling.app import LabelAuth

    app, store = _app(queue, tmp_path, auth=LabelAuth(tokens=True))
    alice, bob = store.add_token("alice"), store.add_token("bob")
    anon = _client(app, headers=CSRF)
    assert anon.get("/api/state").status_code == 401
    assert anon.post("/api/label", json={"object_id": "n00", "label": "lopsided"}).status_code == 401
    assert anon.post("/api/undo").status_code == 401
    assert anon.get("/image/n00").status_code == 401
    assert anon.get("/", follow_redirects=False).headers["location"] == "/login"
    assert _client(app, headers={"Authorization": "Bearer wrong-token", **CSRF}).get("/api/state").status_code == 401

    a = _client(app, headers={"Authorization": f"Bearer {alice}", **CSRF})
    b = _client(app, headers={"Authorization": f"Bearer {bob}", **CSRF})
    assert a.get("/api/state").json()["labeller"] == "alice"
    # the body cannot choose the labeller
    assert a.post("/api/label", json={"object_id": "n00", "label": "lopsided", "labeller": "bob"}).status_code == 200
    assert b.post("/api/label", json={"object_id": "n00", "label": "symmetric"}).status_code == 200
    assert dict(zip(store.labels().labeller, store.labels().label)) == {"alice": "lopsided", "bob": "symmetric"}
    # bob's undo undoes bob's label only
    assert b.post("/api/undo").json()["undone"]["labeller"] == "bob"
    assert list(store.labels().labeller) == ["alice"]
    # only the hash is stored
    db = (tmp_path / "labels.db").read_bytes()
    assert alice.encode() not in db and hash_token(alice).encode() in db
    # revoked tokens stop working
    store.revoke_tokens("alice")
    assert a.get("/api/state").status_code == 401


def test_sign_in_form_sets_a_cookie_used_by_the_page(queue, tmp_path):
    from galmorph.labelling.app import LabelAuth, read_tokens_file

    tokens = tmp_path / "tokens"
    tokens.write_text(f"# from a Secret\ncarol:sha256:{hash_token('carol-token-0123456789')}\n")
    app, store = _app(queue, tmp_path, auth=LabelAuth(tokens=True, token_hashes=read_tokens_file(tokens)))
    c = _client(app)
    assert c.post("/login", data={"token": "nope"}).status_code == 401
    evil = c.post("/login", data={"token": "carol-token-0123456789"}, headers={"Origin": "http://evil.example"},
                  follow_redirects=False)
    assert evil.status_code == 403
    r = c.post("/login", data={"token": "carol-token-0123456789"}, follow_redirects=False)
    assert r.status_code == 303 and "httponly" in r.headers["set-cookie"].lower()
    assert "samesite=strict" in r.headers["set-cookie"].lower()
    page = c.get("/")
    assert page.status_code == 200 and '<span id="labeller">carol</span>' in page.text
    assert c.post("/api/label", json={"object_id": "n03", "label": "unsure"}, headers=CSRF).status_code == 200
    assert list(store.labels().labeller) == ["carol"]


def test_proxy_header_identity_and_escaped_name(queue, tmp_path):
    from galmorph.labelling.app import LabelAuth

    app, store = _app(queue, tmp_path, auth=LabelAuth(tokens=False, proxy_header="X-Forwarded-User"))
    c = _client(app, headers=CSRF)
    assert c.get("/api/state").status_code == 401
    name = "<script>x</script>"
    assert c.get("/", headers={"X-Forwarded-User": name}).text.count("<script>x</script>") == 0
    r = c.post("/api/label", json={"object_id": "n02", "label": "lopsided"}, headers={"X-Forwarded-User": "dave"})
    assert r.status_code == 200 and list(store.labels().labeller) == ["dave"]


def test_cli_refuses_public_bind_without_auth_and_token_add_prints_once(queue, tmp_path):
    from galmorph.labelling.queue import write_queue

    qpath = write_queue(queue, tmp_path / "queue.parquet", {})
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    p = subprocess.run([*CLI, "label", "serve", "--queue", str(qpath), "--db", db, "--host", "0.0.0.0"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "without authentication" in p.stderr and "Traceback" not in p.stderr
    p = subprocess.run([*CLI, "label", "serve", "--queue", str(qpath), "--db", db, "--auth", "token",
                        "--labeller", "mallory"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "--labeller" in p.stderr
    p = subprocess.run([*CLI, "label", "token", "add", "erin", "--db", db], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0
    token = p.stdout.strip()
    assert LabelStore(db).labeller_for_token(token) == "erin"
    tf = tmp_path / "secret-tokens"
    p = subprocess.run([*CLI, "label", "token", "add", "frank", "--tokens-file", str(tf)], capture_output=True,
                       text=True, timeout=120)
    from galmorph.labelling.app import read_tokens_file

    assert read_tokens_file(tf) == {hash_token(p.stdout.strip()): "frank"} and p.stdout.strip() not in tf.read_text()


# ---------------------------------------------------------------------------------------- races
def test_concurrent_labels_and_undos_no_500_exact_history(queue, tmp_path):
    from galmorph.labelling.app import LabelAuth

    app, store = _app(queue, tmp_path, auth=LabelAuth(tokens=True))
    tokens = {f"l{i}": store.add_token(f"l{i}") for i in range(4)}
    ids = list(queue.object_id[:10])
    with _Server(app) as srv:
        def post(i):
            who = f"l{i % 4}"
            body = f'{{"object_id": "{ids[i % 10]}", "label": "{("lopsided", "symmetric")[i % 2]}"}}'
            return srv.request("POST", "/api/label", body=body.encode(),
                               headers={"Authorization": f"Bearer {tokens[who]}", "Content-Type": "application/json",
                                        **CSRF})[0]

        with ThreadPoolExecutor(8) as ex:
            codes = list(ex.map(post, range(200)))
        assert codes.count(200) == 200, sorted(set(codes))
        ev = store.events()
        assert len(ev) == 200 and (ev.action == "set").all()
        lab = store.labels()
        assert len(lab) == len(ev.groupby(["labeller", "object_id"]))
        # the current label is the last event of each (labeller, object), and each event's
        # previous_label is the label of the event before it
        for (who, oid), g in ev.groupby(["labeller", "object_id"]):
            assert lab[(lab.labeller == who) & (lab.object_id == oid)].label.item() == g.label.iloc[-1]
            assert g.previous_label.iloc[0] is None
            assert list(g.previous_label.iloc[1:]) == list(g.label.iloc[:-1])

        # 8 simultaneous first labels of one object by one labeller
        tok = store.add_token("solo")

        def first(_):
            return srv.request("POST", "/api/label", body=b'{"object_id": "n10", "label": "lopsided"}',
                               headers={"Authorization": f"Bearer {tok}", "Content-Type": "application/json",
                                        **CSRF})[0]

        with ThreadPoolExecutor(8) as ex:
            assert list(ex.map(first, range(8))) == [200] * 8
        solo = store.events("solo")
        assert solo.previous_label.isna().sum() == 1 and len(store.labels(labeller="solo")) == 1

        # 8 concurrent undos of 5 labels: exactly 5 undone, 5 undo events, 3 x 409
        for oid in ids[:4]:
            store.set_label(oid, "undoer", "lopsided")
        store.set_label(ids[0], "undoer", "symmetric")
        tok_u = store.add_token("undoer")

        def undo(_):
            return srv.request("POST", "/api/undo", headers={"Authorization": f"Bearer {tok_u}", **CSRF})[0]

        with ThreadPoolExecutor(8) as ex:
            codes = sorted(ex.map(undo, range(8)))
        assert codes == [200] * 5 + [409] * 3
        ev = store.events("undoer")
        assert (ev.action == "undo").sum() == 5 and ev[ev.action == "set"].undone.all()
        assert len(store.labels(labeller="undoer")) == 0


# ---------------------------------------------------------------------------------------- odd images, database
def test_truncated_raster_and_symlink_loop_are_clear_4xx(queue, tmp_path):
    """A truncated JPEG was served as 200 (the labeller saw a half-grey galaxy); an image path that is a
    symlink loop gave a 500 (RuntimeError from Path.resolve)."""
    import os

    from PIL import Image

    q = queue.copy()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "g.jpg")
    data = (tmp_path / "g.jpg").read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(data[: len(data) // 3])
    os.symlink(tmp_path / "loop.png", tmp_path / "loop.png")
    q.loc[0, "image_uri"], q.loc[1, "image_uri"] = str(tmp_path / "trunc.jpg"), str(tmp_path / "loop.png")
    q.loc[2, "image_uri"] = str(tmp_path / "g.jpg")
    app, _ = _app(q, tmp_path)
    c = _client(app)
    r = c.get("/image/n00")
    assert r.status_code == 422 and "truncated" in r.json()["detail"]
    r = c.get("/image/n01")
    assert r.status_code == 404 and "cannot be resolved" in r.json()["detail"]
    ok = c.get("/image/n02")
    assert ok.status_code == 200 and ok.content == data


def test_label_database_failure_is_503_not_500(queue, tmp_path, monkeypatch):
    """A read-only (or unreachable) label database: POST /api/label gave a bare 500."""
    from sqlalchemy.exc import OperationalError

    app, store = _app(queue, tmp_path)

    def readonly(*a, **k):
        raise OperationalError("INSERT INTO labels ...", {"token": "x"}, Exception("attempt to write a readonly database"))

    monkeypatch.setattr(store, "set_label", readonly)
    r = _client(app).post("/api/label", json={"object_id": "n00", "label": "lopsided"}, headers=CSRF)
    assert r.status_code == 503, r.text
    assert "attempt to write a readonly database" in r.json()["detail"] and "INSERT" not in r.text
