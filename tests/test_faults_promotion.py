"""Promotion faults (issue #30): a params file that does not exist, and a promotion lock database that is
down, end the command with one clear line (and a JSON error document under --json), never a traceback or
a silent default. Each test failed on the code before the fix."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pandas as pd

CLI = [sys.executable, "-c", "from galmorph.cli import main; main()"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_params_file_that_does_not_exist_is_a_clear_error(tmp_path):
    """`promote --params nope.yaml` used the default policy and exited 0; it is a usage error naming the
    file, reported before the tracking server is asked anything (none is running here)."""
    man = tmp_path / "m.parquet"
    pd.DataFrame({"object_id": ["a"], "image_uri": ["a.png"]}).to_parquet(man)
    nope = tmp_path / "nope.yaml"
    env = {**os.environ, "GALMORPH_STATE_DIR": str(tmp_path / "state"), "GALMORPH_MLFLOW_CONNECT_TIMEOUT": "2"}
    args = ["promote", "--task", "lopsided", "--manifest", str(man), "--params", str(nope),
            "--tracking-uri", f"http://127.0.0.1:{_free_port()}"]
    for extra in ([], ["--json"]):
        p = subprocess.run([*CLI, *args, *extra], capture_output=True, text=True, timeout=240, env=env)
        assert p.returncode == 1, (extra, p.stdout, p.stderr[-2000:])
        assert "Traceback" not in p.stderr, p.stderr[-2000:]
        assert _errors(p.stderr) == [f"error: promotion policy file {nope} does not exist"], p.stderr[-2000:]
        if extra:
            assert json.loads(p.stdout) == {"error": f"promotion policy file {nope} does not exist"}
        else:
            assert p.stdout == ""
    # GALMORPH_PARAMS_FILE names a file too: it must exist
    p = subprocess.run([*CLI, *args[:-4], *args[-2:]], capture_output=True, text=True, timeout=240,
                       env={**env, "GALMORPH_PARAMS_FILE": str(nope)})
    assert p.returncode == 1 and _errors(p.stderr) == [f"error: promotion policy file {nope} does not exist"]


def test_lock_database_down_is_one_clear_line_and_a_json_error(mlflow_server, tmp_path):
    """GALMORPH_LOCK_URL pointing at a Postgres that is down: two tracebacks and an empty stdout under
    --json; now one line naming the database (not its password) and what to do, a JSON error document,
    exit 1, and nothing promoted."""
    from galmorph.promotion.registry import CHAMPION, aliases
    from test_eval_support import OracleNet, write_coded_dataset
    from test_promotion import CLASSES, _register

    task = "ptest-pgdown"
    _register(task, OracleNet(2, error_rate=0.2))
    coded, _ = write_coded_dataset(tmp_path / "coded", CLASSES, n=8, seed=1)
    port = _free_port()
    env = {**os.environ, "GALMORPH_LOCK_URL": f"postgresql://promotion_lock:s3cret@127.0.0.1:{port}/promotion_lock",
           "GALMORPH_STATE_DIR": str(tmp_path / "state"), "MLFLOW_TRACKING_URI": mlflow_server}
    p = subprocess.run([*CLI, "promote", "--task", task, "--manifest", str(coded), "--json",
                        "--audit-log", str(tmp_path / "audit.jsonl"), "--out", str(tmp_path / "p")],
                       capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 1, (p.stdout, p.stderr[-3000:])
    assert "Traceback" not in p.stderr and "s3cret" not in p.stderr + p.stdout, p.stderr[-3000:]
    errors = _errors(p.stderr)
    assert len(errors) == 1, p.stderr[-3000:]
    want = f"cannot reach the promotion lock database postgresql://promotion_lock:***@127.0.0.1:{port}/promotion_lock"
    assert want in errors[0] and "GALMORPH_LOCK_URL" in errors[0]
    doc = json.loads(p.stdout)
    assert list(doc) == ["error"] and want in doc["error"]
    assert CHAMPION not in aliases(f"galmorph-{task}")
    assert not (tmp_path / "audit.jsonl").exists()
