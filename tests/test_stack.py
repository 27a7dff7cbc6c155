"""The local stack: `stack up` is idempotent, health-checked, and `stack down` stops it."""

import pytest

from galmorph.settings import Settings
from galmorph.ops.stack import stack_down, stack_status, stack_up


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def own_stack_settings(stack_settings, tmp_path):
    """Like the stack_settings fixture but with its own state folder and free ports, so stopping it
    cannot touch the session's shared MLflow server."""
    return Settings(state_dir=tmp_path / "state", host=stack_settings.host, mlflow_port=free_port(),
                    evidently_port=free_port(), label_port=free_port(), data_root=stack_settings.data_root)


def test_stack_up_is_idempotent_healthy_and_down_stops(own_stack_settings):
    s = own_stack_settings
    try:
        first = stack_up(s, ("mlflow",))
        assert first[0]["started"] is True and first[0]["healthy"] and first[0]["pid"]
        assert first[0]["url"] == f"http://127.0.0.1:{s.mlflow_port}"
        again = stack_up(s, ("mlflow",))
        assert again[0]["started"] is False and again[0]["pid"] == first[0]["pid"]
        assert stack_status(s, ("mlflow",))[0]["healthy"]
        assert (s.state_dir / "mlflow" / "mlflow.db").exists()
    finally:
        down = stack_down(s, ("mlflow",))
    assert down == [{"service": "mlflow", "stopped": True}]
    st = stack_status(s, ("mlflow",))[0]
    assert not st["healthy"] and st["pid"] is None
    assert stack_down(s, ("mlflow",)) == [{"service": "mlflow", "stopped": False}]


def test_stack_up_refuses_a_port_taken_by_something_else(own_stack_settings):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", own_stack_settings.mlflow_port))
        sock.listen(1)
        with pytest.raises(RuntimeError, match="port .* taken by another program"):
            stack_up(own_stack_settings, ("mlflow",))


def test_two_stack_ups_at_once_start_one_server_that_stays_managed(own_stack_settings):
    """#30: two `stack up` at once on a fresh state folder: both succeed, one starts the server, the other
    finds it running; the pid file is the running server's (status ours, `stack down` stops it)."""
    from concurrent.futures import ThreadPoolExecutor

    s = own_stack_settings
    try:
        with ThreadPoolExecutor(2) as pool:
            results = [f.result()[0] for f in [pool.submit(stack_up, s, ("mlflow",)) for _ in range(2)]]
        assert sorted(r["started"] for r in results) == [False, True]
        assert results[0]["pid"] == results[1]["pid"] is not None
        st = stack_status(s, ("mlflow",))[0]
        assert st["healthy"] and st["ours"] and st["pid"] == results[0]["pid"]
    finally:
        down = stack_down(s, ("mlflow",))
    assert down == [{"service": "mlflow", "stopped": True}]
    assert not stack_status(s, ("mlflow",))[0]["healthy"]
