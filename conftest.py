"""Shared fixtures of every test folder (``tests/`` and ``components/*/tests/``): a real local MLflow
server, the real data root, small simulated datasets; and the CI rule for real-data tests.

CI rule: a test that skips because the real data is missing (the reason contains
:data:`REAL_DATA_MISSING`, as the ``data_root`` fixture's does) is reported as a *failure* (an error
when the skip happens in a fixture) when
:func:`real_data_required` (``CI=true`` and ``../shared/data`` beside the checkout), so real-data tests
cannot silently stop running in CI.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from galmorph.settings import Settings, _default_data_root

REPO = Path(__file__).resolve().parent
ARTIFACTS = REPO / "test-artifacts"
#: The data root CI provides beside the checkout.
SHARED_DATA = REPO.parent / "shared" / "data"
#: Start of the skip reason of tests that need the real data (matched by the CI rule).
REAL_DATA_MISSING = "real data not found"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def real_data_required() -> bool:
    """True in CI (``CI`` is true/1/yes) when the data root ``../shared/data`` is beside the checkout."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes") and SHARED_DATA.is_dir()


def _skip_reason(report) -> str:
    lr = report.longrepr
    return str(lr[2]) if isinstance(lr, tuple) and len(lr) == 3 else str(lr or "")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under :func:`real_data_required`, a skip for missing real data becomes a failure."""
    outcome = yield
    report = outcome.get_result()
    if (report.skipped and not hasattr(report, "wasxfail") and REAL_DATA_MISSING in _skip_reason(report)
            and real_data_required()):
        report.outcome = "failed"
        report.longrepr = (f"{_skip_reason(report)}\nCI=true and the data root {SHARED_DATA} exists: a test that "
                           "skips for missing real data fails in CI (check GALMORPH_DATA_ROOT and the data layout)")


@pytest.fixture(autouse=True)
def _mlflow_uris_per_test():
    """Each test leaves MLflow's tracking/registry URIs as it found them (module state and the variables
    exported to subprocesses, e.g. after a CLI command run in-process). Session and module fixtures (the
    test server) are set up before this snapshot, so they stay."""
    from galmorph.tracking import mlflow_uri_state, restore_mlflow_uri_state

    saved = mlflow_uri_state()
    yield
    restore_mlflow_uri_state(saved)


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real survey data (../shared/data or GALMORPH_DATA_ROOT); skipped with a reason if absent
    (a failure in CI, see :func:`real_data_required`)."""
    env = os.environ.get("GALMORPH_DATA_ROOT")
    root = Path(env) if env else _default_data_root()
    if root is None or not Path(root).is_dir():
        pytest.skip(f"{REAL_DATA_MISSING}: set GALMORPH_DATA_ROOT or put shared/data beside the checkout"
                    f" (looked at {root})")
    return Path(root)


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def stack_settings(tmp_path_factory) -> Settings:
    """Settings pointing at a private state folder and free ports (no clash with a running demo); the
    tracking URI is the private server's whatever ``MLFLOW_TRACKING_URI`` an earlier test left behind."""
    state = tmp_path_factory.mktemp("galmorph-state")
    host, mlflow_port = "127.0.0.1", free_port()
    return Settings(state_dir=state, host=host, mlflow_port=mlflow_port, evidently_port=free_port(),
                    label_port=free_port(), mlflow_tracking_uri=f"http://{host}:{mlflow_port}")


@pytest.fixture(scope="session")
def mlflow_server(stack_settings):
    """A real MLflow tracking server (sqlite backend) on 127.0.0.1 for the whole test session."""
    import mlflow

    from galmorph.ops.stack import start_service, stop_service

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
