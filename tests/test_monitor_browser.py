"""Browser check: headless Chromium opens the Evidently UI and the drift project's dashboard renders
its panels, with series for two releases (a screenshot is kept in test-artifacts/)."""

from __future__ import annotations

import shutil
import socket
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest


@pytest.fixture()
def tmp_path():
    """A private temporary folder (pytest's basetemp is pruned by concurrent pytest runs)."""
    with tempfile.TemporaryDirectory(prefix="galmorph-drift-") as d:
        yield Path(d)


pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _browser():
    chromium = CHROMIUM if CHROMIUM.exists() else (Path(shutil.which("chromium")) if shutil.which("chromium") else None)
    driver = CHROMEDRIVER if CHROMEDRIVER.exists() else (
        Path(shutil.which("chromedriver")) if shutil.which("chromedriver") else None)
    if chromium is None or driver is None:
        pytest.skip("headless Chromium not installed (apt-get install -y chromium chromium-driver)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium not installed (uv sync --group dev)")
    opts = Options()
    opts.binary_location = str(chromium)
    for a in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
              "--disable-dev-shm-usage", "--window-size=1500,2200"):
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(str(driver)), options=opts)


def _tiny_model(classes):
    """A tiny deterministic colour classifier behind the galmorph model contract: the logit of
    class k is the excess of channel k's mean over the batch average (so the predicted class
    and the confidence vary from galaxy to galaxy)."""
    import torch
    from torch import nn

    from galmorph.models.io import LoadedModel, ModelSpec

    class ColourNet(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            m = x.mean(dim=(2, 3))
            return (m - m.mean(dim=0, keepdim=True)) * 300.0

    spec = ModelSpec(task="chirality", classes=list(classes), arch="colour-net", image_size=32, in_chans=3)
    return LoadedModel(module=ColourNet().eval(), spec=spec, uri="memory://colour-net", version="1")


@pytest.fixture(scope="module")
def populated_workspace():
    """A state folder whose Evidently workspace holds two scored releases against one reference."""
    from galmorph.drift import DriftConfig, compute_drift_features, run_drift
    from galmorph.scoring.inference import predict_manifest
    from galmorph.settings import Settings
    from galmorph.simulate import simulate_dataset

    tmp = tempfile.TemporaryDirectory(prefix="galmorph-monitor-browser-")
    root = Path(tmp.name)
    settings = Settings(state_dir=root / "state", evidently_port=_free_port())
    model = _tiny_model(["CW", "ACW", "other"])

    predicted: set[str] = set()

    def scored(name, seed, z_range, survey):
        sim = simulate_dataset(root / name, 40, seed=seed, task="chirality", size=64, z_range=z_range,
                               survey=survey, progress=False)
        man = pd.read_parquet(sim["manifest"])
        preds = predict_manifest(model, man)
        predicted.update(preds["pred"].dropna().astype(str))
        return compute_drift_features(man, predictions=preds, progress=False).features

    ref = scored("ref", 0, (0.01, 0.1), "sim")
    r1 = scored("r1", 1, (0.01, 0.1), "sim")
    r2 = scored("r2", 2, (0.1, 0.2), "sim-deep")
    cfg = DriftConfig(min_group_size=8, high_confidence=0.6)
    now = datetime.now().replace(microsecond=0)
    results = [run_drift(ref, cur, by=["z_bin", "survey"], config=cfg, release=rel, model_version="1",
                         workspace=settings.evidently_workspace, timestamp=ts)
               for rel, cur, ts in (("r1", r1, now - timedelta(days=1)), ("r2", r2, now))]
    yield settings, results, predicted
    tmp.cleanup()


def test_dashboard_renders_panels_in_headless_chromium(populated_workspace, artifacts_dir):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from galmorph.drift.workspace import load_dashboards_module
    from galmorph.ops.stack import start_service, stop_service

    settings, results, predicted = populated_workspace
    assert len(predicted) >= 2
    mod = load_dashboards_module()
    titles = [mod.TITLE_LATEST_SHARE, mod.TITLE_OVERALL, mod.TITLE_Z_BIN, mod.TITLE_SURVEY, mod.TITLE_PRED,
              mod.TITLE_HIGH_CONF]
    z_bins = sorted({g.group_value for r in results for g in r.per_group.values()
                     if g.group_by == "z_bin" and g.snapshot_id})
    assert len(z_bins) >= 2
    driver = _browser()
    st = start_service(settings, "evidently")
    try:
        url = f"{st['url']}/projects/{results[0].project_id}"
        driver.get(url)
        body = lambda d: d.find_element(By.TAG_NAME, "body").text  # noqa: E731
        try:
            WebDriverWait(driver, 90, poll_frequency=1).until(lambda d: all(t in body(d) for t in titles))
            # the series arrive after the titles: wait for the legends of the z-bin and survey lines
            WebDriverWait(driver, 90, poll_frequency=1).until(
                lambda d: all(b in body(d) for b in z_bins) and "sim-deep" in body(d)
                and all(c in body(d) for c in predicted))
        except Exception:
            driver.save_screenshot(str(artifacts_dir / "drift_dashboard_failure.png"))
            (artifacts_dir / "drift_dashboard_failure.txt").write_text(body(driver))
            raise
        time.sleep(2)  # let the plots finish drawing before the screenshot
        shot = artifacts_dir / "drift_dashboard.png"
        driver.set_window_size(1500, 2600)
        assert driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 20_000
        text = body(driver)
        for t in titles:
            assert t in text
        assert "Timestamps" in text  # plot axes were drawn
        assert len(driver.find_elements(By.CSS_SELECTOR, "svg")) >= 6
    finally:
        driver.quit()
        stop_service(settings, "evidently")


def test_releases_recorded_with_verdicts(populated_workspace):
    settings, (r1, r2), _ = populated_workspace
    assert r1.project_id == r2.project_id  # one project across releases
    # release 2 is at 0.1 < z < 0.2, absent from the reference: its bins are compared with the
    # whole reference and the redshift column itself moves
    deep = [g for g in r2.per_group.values() if g.group_by == "z_bin" and g.verdict != "insufficient_data"]
    assert deep and all(g.reference_scope == "all" for g in deep)
    assert all("z" in g.drifted_columns for g in deep)
    assert r2.per_group["overall"].high_confidence_fraction is not None
    assert 0 <= r2.per_group["overall"].high_confidence_fraction <= 1
    assert np.isfinite(r1.per_group["overall"].drift_share)
