"""The registry-event receiver (#27) against the real local MLflow server and the real receiver service
(`galmorph hooks serve`, started by the stack): signatures, stale/replayed and duplicate deliveries, a hand move
of @champion through the MLflow API checked and reverted (simulator-coded models of known quality), the
receiver down then reconciling at start (once), and a `promote` racing a hand move."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import free_port
from galmorph.promotion.hooks import (DELIVERY_ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, DeliveryStore,
                                      HookRejected, Receiver, sign, verify_delivery)
from test_eval_support import OracleNet, log_test_model, write_coded_dataset

CLASSES = ["symmetric", "lopsided"]


def _headers(secret, body, did="d-1", ts=None):
    ts = str(int(time.time() if ts is None else ts))
    return {DELIVERY_ID_HEADER: did, TIMESTAMP_HEADER: ts, SIGNATURE_HEADER: sign(secret, did, ts, body)}


# --------------------------------------------------------------------------------------------
# verification and the delivery record (no server)
# --------------------------------------------------------------------------------------------
def test_signature_stale_replay_and_duplicate_deliveries(tmp_path):
    body = json.dumps({"entity": "model_version_alias", "action": "created", "timestamp": "t",
                       "data": {"name": "galmorph-x", "alias": "champion", "version": "2"}}).encode()
    handled = []
    rec = Receiver("s3cret", DeliveryStore(tmp_path / "d.db"), lambda n, e: handled.append((n, e)), max_age=300)
    # as MLflow signs it (its own implementation): accepted
    from mlflow.webhooks.delivery import _generate_hmac_signature

    h = _headers("s3cret", body, "d-1")
    assert h[SIGNATURE_HEADER] == _generate_hmac_signature("s3cret", "d-1", h[TIMESTAMP_HEADER], body.decode())
    assert verify_delivery("s3cret", h, body)["event"]["data"]["version"] == "2"
    bad = [({**h, SIGNATURE_HEADER: sign("other", "d-1", h[TIMESTAMP_HEADER], body)}, "bad signature"),
           ({k: v for k, v in h.items() if k != SIGNATURE_HEADER}, "missing"),
           (_headers("s3cret", body, "d-2", ts=time.time() - 3600), "stale"),
           (_headers("s3cret", body, "d-3", ts=time.time() + 3600), "future"),
           ({**h, DELIVERY_ID_HEADER: "d-other"}, "bad signature")]  # a replay under another id: id is signed
    for headers, why in bad:
        with pytest.raises(HookRejected, match=why):
            verify_delivery("s3cret", headers, body)
        assert rec.receive(headers, body)[0] == 401
    assert rec.store.deliveries() == [] and rec.queue.empty()  # nothing recorded
    with pytest.raises(HookRejected, match="bad signature"):  # a tampered body
        verify_delivery("s3cret", h, body.replace(b'"2"', b'"3"'))
    assert rec.receive(h, body) == (202, {"queued": True, "delivery_id": "d-1"})
    assert rec.receive(h, body)[1]["duplicate"] is True  # the same delivery twice: recorded once
    assert [d["delivery_id"] for d in rec.store.deliveries()] == ["d-1"] and rec.queue.qsize() == 1
    other = json.dumps({"entity": "model_version_alias", "action": "created", "data": {"name": "someone-else"}}).encode()
    rec.models = lambda name: name.startswith("galmorph-")
    assert rec.receive(_headers("s3cret", other, "d-9"), other)[1]["ignored"] is True
    # the store's rescoring claim is once per move
    assert rec.store.claim_rescoring("run-1", "galmorph-x", "2") and not rec.store.claim_rescoring("run-1", "m", "2")


# --------------------------------------------------------------------------------------------
# the real service with the real MLflow server
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def coded(tmp_path_factory):
    path, _ = write_coded_dataset(tmp_path_factory.mktemp("coded-hooks"), CLASSES, n=64, seed=4)
    return path


@pytest.fixture(scope="module")
def pool(mlflow_server):
    """Coded models of known quality (error rate -> logged model version), each logged once; a test registers
    versions of them under its own name (:func:`_register`), which copies nothing."""
    out = {}
    for rate in (0.02, 0.2, 0.45):
        info = log_test_model(OracleNet(2, error_rate=rate), "hooks-pool", CLASSES, 16,
                              registered_name="hooks-pool-models")
        out[rate] = str(info.registered_model_version)
    return out


def _register(pool, task, error_rate):
    import mlflow

    from galmorph.models.io import registered_name

    c = mlflow.MlflowClient()
    name = registered_name(task)
    try:
        c.create_registered_model(name)
    except Exception:  # noqa: BLE001 - exists already
        pass
    return str(c.create_model_version(name, source=f"models:/hooks-pool-models/{pool[error_rate]}").version)


def hooks_settings(stack_settings, tmp_path: Path, mode: str, manifest: Path | None):
    from galmorph.settings import Settings

    params = tmp_path / "params.yaml"
    params.write_text(f"promotion:\n  manual: {mode}\n  manual_eval_manifest: '{manifest or ''}'\n")
    return Settings(state_dir=tmp_path / "state", host="127.0.0.1", mlflow_port=stack_settings.mlflow_port,
                    mlflow_tracking_uri=stack_settings.mlflow_tracking_uri, hooks_port=free_port(),
                    params_file=params, hooks_max_age=300, hooks_models="galmorph-hooks-*")


@pytest.fixture()
def receiver_up():
    """Start the receiver service of a settings object (as `stack up` does: service + webhook); stopped after."""
    started = []

    def up(settings):
        from galmorph.ops.hooks import register_webhooks
        from galmorph.ops.stack import start_service

        start_service(settings, "hooks", timeout=120)
        started.append(settings)
        register_webhooks(settings)
        wait_for(lambda: _get(f"http://127.0.0.1:{settings.hooks_port}/health").get("reconciled"), 120, "reconciled")
        return settings

    yield up
    from galmorph.ops.stack import stop_service

    for s in started:
        stop_service(s, "hooks")
    _delete_webhooks()


def _delete_webhooks():
    import mlflow

    c = mlflow.MlflowClient()
    for w in c.list_webhooks(max_results=1000):
        if w.name == "galmorph-hooks":
            c.delete_webhook(w.webhook_id)


def _get(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:  # noqa: S310 - local
            return json.loads(r.read())
    except (urllib.error.URLError, OSError, ValueError):
        return {}


def wait_for(fn, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = fn()
        if v:
            return v
        time.sleep(0.5)
    raise AssertionError(f"not within {timeout}s: {what}")


def manual_records(name):
    from galmorph.promotion.audit import alias_history

    return [h for h in alias_history(name) if h["origin"] == "manual"]


@pytest.mark.slow
def test_hand_move_through_the_api_is_checked_and_reverted(mlflow_server, stack_settings, coded, pool, tmp_path,
                                                           receiver_up):
    """`revert` policy: a worse model given @champion by hand fails the check; the champion is restored, the
    version says so, the audit and the lineage hold the manual move; a signed post is 401 without the secret."""
    import mlflow

    from galmorph.cli import main
    from galmorph.promotion.registry import CHAMPION, PREVIOUS, aliases, promote
    from click.testing import CliRunner

    task, name = "hooks-revert", "galmorph-hooks-revert"
    good, bad = _register(pool, task, 0.02), _register(pool, task, 0.45)
    s = receiver_up(hooks_settings(stack_settings, tmp_path, "revert", coded))
    assert promote(task, good, eval_manifest=coded, audit_log=s.audit_log,
                   evaluate_kwargs={"html": False}, log_evaluations=False).decision == "first-champion"
    c = mlflow.MlflowClient()
    c.set_registered_model_alias(name, CHAMPION, bad)  # by hand (the API; the UI calls the same endpoint)
    rec = wait_for(lambda: manual_records(name), 90, "a manual record")[-1]
    assert rec["from"] == good and rec["version"] == bad and rec["decision"] == "manual-reverted"
    wait_for(lambda: aliases(name).get(CHAMPION) == good, 30, "champion restored")
    tags = c.get_model_version(name, bad).tags
    assert tags["galmorph.decision"] == "manual-reverted" and "restored to v" + good in tags["galmorph.reverted"]
    verdict = json.loads(tags["galmorph.manual_verdict"])
    assert verdict["origin"] == "manual" and not verdict["passed"] and any("f1_macro" in r for r in verdict["reasons"])
    mv = c.get_model_version(name, bad)  # the model card: its summary (the version description) shows the move
    assert f"Alias move (manual): @champion v{good} -> v{bad}, manual-reverted" in mv.description
    # the revert itself is a registry event: recorded once, not as another manual move
    time.sleep(3)
    assert len(manual_records(name)) == 1 and PREVIOUS not in aliases(name)
    out = CliRunner().invoke(main, ["lineage", f"models:/{name}@champion", "--json", "--tracking-uri", mlflow_server])
    assert out.exit_code == 0, out.output
    moves = json.loads(out.output)["alias_moves"]
    assert [(m["origin"], m["from"], m["to"]) for m in moves] == [("promote", None, good), ("manual", good, good)]
    assert moves[0]["rescoring"]["status"] == "no-release"  # the first champion: no release known to rescore
    body = b'{"entity": "model_version_alias", "action": "created", "data": {"name": "galmorph-hooks-revert"}}'
    req = urllib.request.Request(s.hooks_endpoint, data=body, method="POST",
                                 headers=_headers("not-the-secret", body, "forged"))
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)  # noqa: S310 - local
    assert err.value.code == 401


@pytest.mark.slow
def test_receiver_down_then_reconcile_once(mlflow_server, stack_settings, coded, pool, tmp_path, receiver_up):
    """Moves made while the receiver is down are found at its start (registry vs audit) and handled once; a
    better model moved by hand passes the `check` and becomes champion with the old one as previous-champion."""
    import mlflow

    from galmorph.ops.stack import stop_service
    from galmorph.promotion.registry import CHAMPION, PREVIOUS, aliases, promote, rollback

    task, name = "hooks-reconcile", "galmorph-hooks-reconcile"
    v1, v2 = _register(pool, task, 0.2), _register(pool, task, 0.02)
    s = hooks_settings(stack_settings, tmp_path, "check", coded)
    promote(task, v1, eval_manifest=coded, audit_log=s.audit_log, evaluate_kwargs={"html": False},
            log_evaluations=False)
    _delete_webhooks()
    mlflow.MlflowClient().set_registered_model_alias(name, CHAMPION, v2)  # nobody listening
    legacy = "galmorph-hooks-legacy"  # a champion no audit record speaks for (a registry from before #27)
    lv = _register(pool, "hooks-legacy", 0.2)
    mlflow.MlflowClient().set_registered_model_alias(legacy, CHAMPION, lv)
    time.sleep(1)
    assert manual_records(name) == []
    receiver_up(s)  # reconciles at start, before it answers "reconciled"
    from galmorph.promotion.audit import alias_history

    assert [(h["origin"], h["decision"], h["to"]) for h in alias_history(legacy)] == [("baseline", "adopted", lv)]
    assert "galmorph.decision" not in mlflow.MlflowClient().get_model_version(legacy, lv).tags
    rec = manual_records(name)
    assert len(rec) == 1 and rec[0]["from"] == v1 and rec[0]["to"] == v2 and rec[0]["decision"] == "manual-passed"
    assert aliases(name)[CHAMPION] == v2 and aliases(name)[PREVIOUS] == v1
    stop_service(s, "hooks")
    receiver_up(s)  # a second start: nothing new
    assert len(manual_records(name)) == 1
    # a rollback now restores the champion before the hand move
    assert rollback(task, audit_log=s.audit_log).champion_after == v1


@pytest.mark.slow
def test_promote_racing_a_hand_move(mlflow_server, stack_settings, coded, pool, tmp_path, monkeypatch,
                                    receiver_up):
    """A hand move while `promote` evaluates: the promotion loses the race (nothing written) and the receiver,
    which waits for the registry lock, records the hand move as manual and checks it."""
    import mlflow

    import galmorph.promotion.registry as reg
    from galmorph.promotion.registry import CHAMPION, PromotionRaceLost, aliases, promote

    task, name = "hooks-race", "galmorph-hooks-race"
    v1, v2, v3 = _register(pool, task, 0.2), _register(pool, task, 0.02), _register(pool, task, 0.45)
    s = receiver_up(hooks_settings(stack_settings, tmp_path, "check", coded))
    promote(task, v1, eval_manifest=coded, audit_log=s.audit_log, evaluate_kwargs={"html": False},
            log_evaluations=False)
    real = reg._evaluate

    def evaluate_while_someone_moves_the_champion(*a, **kw):
        mlflow.MlflowClient().set_registered_model_alias(name, CHAMPION, v2)
        time.sleep(4)  # the delivery arrives while this promotion holds the lock
        return real(*a, **kw)

    monkeypatch.setattr(reg, "_evaluate", evaluate_while_someone_moves_the_champion)
    with pytest.raises(PromotionRaceLost):
        promote(task, v3, eval_manifest=coded, audit_log=s.audit_log, evaluate_kwargs={"html": False},
                log_evaluations=False)
    rec = wait_for(lambda: manual_records(name), 90, "a manual record")
    assert len(rec) == 1 and (rec[0]["from"], rec[0]["to"]) == (v1, v2) and rec[0]["decision"] == "manual-passed"
    assert aliases(name)[CHAMPION] == v2


# --------------------------------------------------------------------------------------------
# in a real browser: the MLflow UI of the stack
# --------------------------------------------------------------------------------------------
def _release(tmp_path: Path, settings, manifest: Path) -> str:
    """A release the release watcher has recorded (its state file), as `galmorph release watch` leaves it."""
    import shutil
    from datetime import datetime, timezone

    d = tmp_path / "releases" / "r-ui-1"
    d.mkdir(parents=True)
    shutil.copy(manifest, d / "manifest.parquet")
    (d / "release.json").write_text(json.dumps({"release": "r-ui-1", "manifest": "manifest.parquet"}))
    state = settings.state_dir / "release-watch" / "state.json"
    state.parent.mkdir(parents=True, exist_ok=True)
    state.write_text(json.dumps({"releases": {"r-ui-1": {"status": "submitted", "path": str(d),
                                                         "at": datetime.now(timezone.utc).isoformat()}}}))
    return str(d)


def _ui_add_alias(driver, base: str, name: str, version: str, alias: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, 60)
    driver.get(f"{base}/#/models/{name}/versions/{version}")
    wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "button[title='Add aliases']"))).click()
    box = wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "[role=dialog] input[role=combobox]")))
    box.send_keys(alias)
    time.sleep(0.5)
    box.send_keys(Keys.ENTER)
    save = wait.until(lambda d: [b for b in d.find_elements(By.CSS_SELECTOR, "[role=dialog] button")
                                 if b.text.strip() == "Save aliases"])
    save[0].click()
    wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, "[role=dialog] input[role=combobox]"))


@pytest.mark.browser
@pytest.mark.slow
def test_hand_promotion_in_the_mlflow_ui(mlflow_server, stack_settings, coded, pool, tmp_path, receiver_up,
                                         artifacts_dir):
    """Headless Chromium gives a version the champion alias in the MLflow UI: within 60 s the audit holds a
    manual record, the policy verdict is on the version and a rescoring of the latest release has started
    with that version (linked in the lineage)."""
    import os
    import signal

    import mlflow

    from galmorph.promotion.registry import CHAMPION, PREVIOUS, aliases, promote
    from test_monitor_browser import _browser

    task, name = "hooks-ui", "galmorph-hooks-ui"
    v1, v2 = _register(pool, task, 0.2), _register(pool, task, 0.02)
    s = hooks_settings(stack_settings, tmp_path, "check", coded)
    promote(task, v1, eval_manifest=coded, audit_log=s.audit_log, evaluate_kwargs={"html": False},
            log_evaluations=False)
    receiver_up(s)  # the first champion is rescored now (no release yet), the release comes after
    release = _release(tmp_path, s, coded)
    driver = _browser()
    pids = []
    try:
        _ui_add_alias(driver, mlflow_server, name, v2, "champion")
        t0 = time.monotonic()
        rec = wait_for(lambda: [r for r in manual_records(name) if (r.get("rescoring") or {}).get("status")],
                       60, "manual record, verdict and rescoring")[-1]
        elapsed = time.monotonic() - t0
        driver.get(f"{mlflow_server}/#/models/{name}/versions/{v2}")
        time.sleep(2)
        driver.save_screenshot(str(artifacts_dir / "hooks-ui-hand-promotion.png"))
    finally:
        driver.quit()
    assert elapsed <= 60
    assert (rec["from"], rec["to"], rec["decision"]) == (v1, v2, "manual-passed")
    tags = mlflow.MlflowClient().get_model_version(name, v2).tags
    verdict = json.loads(tags["galmorph.manual_verdict"])
    assert verdict["passed"] and verdict["origin"] == "manual" and tags["galmorph.decision"] == "manual-passed"
    assert aliases(name)[CHAMPION] == v2 and aliases(name)[PREVIOUS] == v1
    rs = rec["rescoring"]
    pids.append(rs.get("pid"))
    assert rs["status"] == "started" and rs["release"] == "r-ui-1" and rs["release_uri"] == release
    assert rs["model_uri"] == f"models:/{name}/{v2}" and rs["runner"] == "local"
    assert Path(rs["log"]).exists()
    assert json.loads(tags["galmorph.rescoring.r-ui-1"])["move"] == rec["audit_run_id"]
    # the rescoring run itself is the pipeline's business (tests/test_pipelines.py); stop it here
    for pid in pids:
        try:
            os.killpg(pid, signal.SIGTERM)
        except (OSError, TypeError):
            pass


def test_the_latest_release_on_a_cluster_comes_from_the_releases_folder(tmp_path):
    """On a cluster the release watcher is another pod: with no watcher state on the receiver's machine, the
    rescoring a new champion starts takes the newest ready release of the task under GALMORPH_RELEASES_DIR
    (the watcher's own scan: unfinished and invalid folders skipped, another task's release left alone)."""
    import os

    import pandas as pd

    from galmorph.ops.hooks import latest_release
    from galmorph.settings import Settings

    root = tmp_path / "releases"
    for i, (name, task) in enumerate([("dr9", "chirality"), ("dr10", "chirality"), ("arms-r1", "arms")]):
        d = root / name
        d.mkdir(parents=True)
        pd.DataFrame({"object_id": ["a"], "image_uri": ["x.png"]}).to_parquet(d / "manifest.parquet")
        (d / "release.json").write_text(json.dumps({"release": name, "task": task}))
        os.utime(d / "manifest.parquet", (1_000_000 + i, 1_000_000 + i))
    (root / "dr11-partial").mkdir()  # no manifest yet: not ready
    (root / "broken").mkdir()
    (root / "broken" / "release.json").write_text("{not json")
    s = Settings(state_dir=tmp_path / "state")
    assert latest_release(s, "chirality") is None  # no watcher state, no releases folder: nothing to rescore
    s = Settings(state_dir=tmp_path / "state", releases_dir=root)
    assert latest_release(s, "chirality") == {"release": "dr10", "path": str((root / "dr10").resolve())}
    assert latest_release(s, "arms")["release"] == "arms-r1"
    assert latest_release(s, "lopsided") is None
    assert latest_release(Settings(state_dir=tmp_path / "state", releases_dir=tmp_path / "absent"), "arms") is None
