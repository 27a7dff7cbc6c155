"""Shared fixtures: a real local MLflow server, the real data root, small simulated datasets."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from galmorph.settings import Settings, _default_data_root

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real survey data (../shared/data or GALMORPH_DATA_ROOT); skipped with a reason if absent."""
    env = os.environ.get("GALMORPH_DATA_ROOT")
    root = Path(env) if env else _default_data_root()
    if root is None or not Path(root).is_dir():
        pytest.skip("real data not found: set GALMORPH_DATA_ROOT or put shared/data beside the checkout")
    return Path(root)


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def stack_settings(tmp_path_factory) -> Settings:
    """Settings pointing at a private state folder and free ports (no clash with a running demo)."""
    state = tmp_path_factory.mktemp("galmorph-state")
    return Settings(state_dir=state, mlflow_port=free_port(), evidently_port=free_port(), label_port=free_port())


@pytest.fixture(scope="session")
def mlflow_server(stack_settings):
    """A real MLflow tracking server (sqlite backend) on 127.0.0.1 for the whole test session."""
    import mlflow

    from galmorph.stack import start_service, stop_service

    start_service(stack_settings, "mlflow", timeout=300)
    uri = stack_settings.mlflow_tracking_uri
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    yield uri
    stop_service(stack_settings, "mlflow")
    if old is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = old


def _sim(tmp_path_factory, task, n, size=64, seed=0):
    from galmorph.simulate import simulate_dataset

    out = tmp_path_factory.mktemp(f"sim-{task}")
    return simulate_dataset(out, n, seed=seed, task=task, size=size, progress=False)


@pytest.fixture(scope="session")
def sim_chirality(tmp_path_factory):
    return _sim(tmp_path_factory, "chirality", 48)


@pytest.fixture(scope="session")
def sim_arms(tmp_path_factory):
    return _sim(tmp_path_factory, "arms", 40)


@pytest.fixture(scope="session")
def sim_lopsided(tmp_path_factory):
    return _sim(tmp_path_factory, "lopsided", 40, size=96)
