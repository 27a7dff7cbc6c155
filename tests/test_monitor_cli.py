"""`galmorph monitor dashboard` / `serve` / `stop`: the Evidently UI over the drift workspace, with
the drift project's dashboard (from monitoring/dashboards.py) served by its HTTP API."""

from __future__ import annotations

import json
import socket
import tempfile
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from galmorph.drift.workspace import load_dashboards_module


@pytest.fixture()
def tmp_path():
    """A private temporary folder (pytest's basetemp is pruned by concurrent pytest runs)."""
    with tempfile.TemporaryDirectory(prefix="galmorph-drift-") as d:
        yield Path(d)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def state_env(tmp_path, monkeypatch):
    from galmorph.settings import get_settings

    monkeypatch.setenv("GALMORPH_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("GALMORPH_EVIDENTLY_PORT", str(_free_port()))
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


def _get_json(url: str):
    with urllib.request.urlopen(url, timeout=30) as r:  # noqa: S310 - local URL
        return json.loads(r.read())


def test_dashboard_command_is_idempotent(state_env):
    from galmorph.cli import main

    runner = CliRunner()
    r1 = runner.invoke(main, ["monitor", "dashboard", "--project", "p1"])
    assert r1.exit_code == 0, r1.output
    out1 = json.loads(r1.output)
    r2 = runner.invoke(main, ["monitor", "dashboard", "--project", "p1"])
    out2 = json.loads(r2.output)
    assert out1 == out2  # same project, same panels
    mod = load_dashboards_module()
    assert {mod.TITLE_Z_BIN, mod.TITLE_SURVEY, mod.TITLE_PRED, mod.TITLE_HIGH_CONF} <= set(out1["panels"])
    assert (state_env.evidently_workspace / out1["project_id"]).is_dir()


def test_serve_starts_the_ui_on_localhost_with_the_dashboard(state_env):
    from galmorph.cli import main
    from galmorph.ops.stack import service_status

    runner = CliRunner()
    try:
        r = runner.invoke(main, ["monitor", "serve"])
        assert r.exit_code == 0, r.output
        url = f"http://127.0.0.1:{state_env.evidently_port}"
        assert url in r.output
        st = service_status(state_env, "evidently")
        assert st["healthy"] and st["pid"]
        projects = _get_json(f"{url}/api/projects/")
        proj = next(p for p in projects if p["name"] == "galmorph-drift")
        dash = _get_json(f"{url}/api/v2/dashboards/{proj['id']}")
        titles = {p["title"] for p in dash["panels"]}
        mod = load_dashboards_module()
        assert {mod.TITLE_OVERALL, mod.TITLE_Z_BIN, mod.TITLE_SURVEY, mod.TITLE_PRED, mod.TITLE_HIGH_CONF} <= titles
        assert [t["title"] for t in dash["tabs"]] == [mod.TAB_DRIFT, mod.TAB_PREDICTIONS]
        again = runner.invoke(main, ["monitor", "serve"])  # idempotent: already running
        assert again.exit_code == 0 and "running" in again.output
    finally:
        r = runner.invoke(main, ["monitor", "stop"])
        assert "stopped" in r.output
    assert not service_status(state_env, "evidently")["healthy"]
