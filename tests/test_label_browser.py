"""The labelling flow in a real headless Chromium: sample -> serve -> label by keyboard -> export -> DVC."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("GALMORPH_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("GALMORPH_CHROMEDRIVER", "/usr/bin/chromedriver")
CLI = [sys.executable, "-c", "from galmorph.cli import main; main()"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(args, cwd=None):
    proc = subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=cwd, timeout=300)
    assert proc.returncode == 0, f"galmorph {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def driver():
    for exe in (CHROMIUM, CHROMEDRIVER):
        if not (Path(exe).exists() or shutil.which(exe)):
            pytest.skip(f"{exe} not found: install Debian's chromium and chromium-driver (`make browser`)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--window-size=1200,900", "--disable-dev-shm-usage"):
        opts.add_argument(flag)
    drv = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    drv.set_page_load_timeout(60)
    yield drv
    drv.quit()


@pytest.fixture()
def served_queue(tmp_path):
    """A simulated unlabelled dataset, a queue sampled from it, and `galmorph label serve` running."""
    sim = tmp_path / "sim"
    _run(["simulate", "--out", str(sim), "-n", "16", "--size", "96", "--seed", "5"])
    queue = sim / "queue.parquet"
    out = json.loads(_run(["label", "sample", "--manifest", str(sim / "manifest.parquet"), "--out", str(queue),
                           "--per-bin", "2", "--seed", "1"]).strip().splitlines()[-1])
    assert out["rows_out"] >= 5
    db = f"sqlite:///{tmp_path / 'labels.db'}"
    token = _run(["label", "token", "add", "tester", "--db", db]).strip()
    assert len(token) >= 32
    port = _free_port()
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([*CLI, "label", "serve", "--queue", str(queue), "--db", db, "--auth", "token",
                             "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while True:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"label server did not start:\n{(tmp_path / 'serve.log').read_text()}")
        time.sleep(0.5)
    yield {"url": url, "db": db, "queue": queue, "tmp": tmp_path, "token": token}
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def test_label_in_browser_then_export_with_dvc(driver, served_queue, artifacts_dir):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, 30)
    # unauthenticated: the page sends the browser to the sign-in form; a wrong token is refused
    driver.get(served_queue["url"] + "/")
    wait.until(lambda d: d.find_elements(By.ID, "token"))
    driver.find_element(By.ID, "token").send_keys("not-a-token")
    driver.find_element(By.ID, "sign-in").click()
    wait.until(lambda d: d.find_elements(By.ID, "login-error"))
    driver.find_element(By.ID, "token").send_keys(served_queue["token"])
    driver.find_element(By.ID, "sign-in").click()
    wait.until(lambda d: d.find_elements(By.ID, "labeller"))
    assert driver.find_element(By.ID, "labeller").text == "tester"

    def shown() -> str:
        return driver.find_element(By.ID, "object-id").text.strip()

    wait.until(lambda d: shown() != "" and d.find_element(By.ID, "a1").text not in ("", "n/a"))
    # the overlay marks the measured centre and the R50/R90 circles, and O toggles it
    r50 = float(driver.find_element(By.ID, "ring-r50").get_attribute("r"))
    r90 = float(driver.find_element(By.ID, "ring-r90").get_attribute("r"))
    assert 0 < r50 < r90
    overlay = driver.find_element(By.ID, "overlay")
    assert "hidden" not in (overlay.get_attribute("class") or "")
    body = driver.find_element(By.TAG_NAME, "body")
    body.send_keys("o")
    wait.until(lambda d: "hidden" in (d.find_element(By.ID, "overlay").get_attribute("class") or ""))
    body.send_keys("o")
    wait.until(lambda d: "hidden" not in (d.find_element(By.ID, "overlay").get_attribute("class") or ""))

    expected: dict[str, str] = {}
    seen: list[str] = []
    for key, label in (("l", "lopsided"), ("s", "symmetric"), ("u", "unsure"), ("l", "lopsided"), ("z", None),
                       ("s", "symmetric")):
        before = shown()
        if key == "z":
            body.send_keys("z")
            undone = seen.pop()
            expected.pop(undone)
            wait.until(lambda d: shown() == undone)
            continue
        body.send_keys(key)
        wait.until(lambda d: shown() != before)
        expected[before] = label
        seen.append(before)
    wait.until(lambda d: d.find_element(By.ID, "progress").text.startswith(f"{len(expected)} /"))
    tallies = driver.find_elements(By.CSS_SELECTOR, "#tallies tbody tr")
    assert len(tallies) == 4
    assert sum(int(tr.find_elements(By.TAG_NAME, "td")[1].text) for tr in tallies) == len(expected)
    driver.save_screenshot(str(artifacts_dir / "label_app.png"))

    # export into a DVC-tracked project folder
    repo = served_queue["tmp"] / "project"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    from galmorph.catalogue.dvcops import run_dvc

    run_dvc(["init", "-q"], cwd=repo)
    out = repo / "data" / "labels" / "lopsided.parquet"
    res = json.loads(_run(["label", "export", "--db", served_queue["db"], "--out", str(out), "--dvc"])
                     .strip().splitlines()[-1])
    assert Path(res["dvc_file"]).exists()
    from galmorph.catalogue.manifest import read_manifest, read_quarantine

    m = read_manifest(out)
    exported = dict(zip(m.object_id, m.label))
    want = {k: v for k, v in expected.items() if v != "unsure"}
    assert exported == want
    assert (m.task == "lopsided").all() and (m.labellers == "tester").all()
    unsure = [k for k, v in expected.items() if v == "unsure"]
    assert list(read_quarantine(res["quarantine"]).object_id) == unsure


def test_chirality_keys_and_winding_overlay_in_browser(driver, tmp_path, sim_chirality, artifacts_dir):
    """A chirality queue: the page's keys are the task's (C = CW, A = ACW, X = other, U = unsure), the
    winding overlay is drawn, and the labels stored are the class names training reads."""
    import threading

    import uvicorn
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from galmorph.catalogue.manifest import read_manifest
    from galmorph.labelling.app import create_app
    from galmorph.labelling.queue import sample_queue
    from galmorph.labelling.store import LabelStore

    man = read_manifest(sim_chirality["manifest"]).assign(label=None, task=None)
    q, _ = sample_queue(man.head(8), per_bin=10, n_bins=1, z_min=0, z_max=1, task="chirality")
    store = LabelStore(f"sqlite:///{tmp_path / 'labels.db'}")
    app = create_app(q, store, "tester", task="chirality", image_roots=[sim_chirality["dir"]])
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.time() + 30
        while not server.started:
            assert time.time() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        wait = WebDriverWait(driver, 30)
        driver.get(f"http://127.0.0.1:{port}/")

        def shown() -> str:
            return driver.find_element(By.ID, "object-id").text.strip()

        wait.until(lambda d: shown() != "" and d.find_element(By.ID, "winding").text != "")
        buttons = {b.get_attribute("data-label"): b.text for b in driver.find_elements(By.CSS_SELECTOR, ".label-btn")}
        assert list(buttons) == ["CW", "ACW", "other", "unsure"] and buttons["CW"].endswith("C")
        assert "hidden" not in (driver.find_element(By.ID, "ring-w-out").get_attribute("class") or "")
        assert float(driver.find_element(By.ID, "ring-w-out").get_attribute("r")) > 0
        body = driver.find_element(By.TAG_NAME, "body")
        expected = {}
        for key, label in (("c", "CW"), ("a", "ACW"), ("x", "other"), ("u", "unsure"), ("l", None), ("s", None)):
            before = shown()
            body.send_keys(key)
            if label is None:  # a key of another task does nothing
                time.sleep(0.5)
                assert shown() == before
                continue
            wait.until(lambda d: shown() != before)
            expected[before] = label
        wait.until(lambda d: d.find_element(By.ID, "progress").text.startswith("4 /"))
        driver.save_screenshot(str(artifacts_dir / "label_app_chirality.png"))
        lab = store.labels("chirality")
        assert dict(zip(lab.object_id, lab.label)) == expected
    finally:
        server.should_exit = True
        thread.join(10)
