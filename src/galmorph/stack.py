"""The local platform stack: an MLflow tracking server and the Evidently UI on 127.0.0.1.

``stack_up`` is idempotent: a service whose health check already answers is left alone. Each
service runs detached (its own process session) with a pid file and a log under the state folder,
so it survives the command that started it; ``stack_down`` stops what ``stack_up`` started.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from galmorph.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Service:
    name: str
    port: int
    health_path: str
    argv: list[str]
    env: dict[str, str]

    def url(self, host: str) -> str:
        return f"http://{host}:{self.port}"


def _bin(name: str) -> str:
    cand = Path(sys.executable).parent / name
    return str(cand) if cand.exists() else (shutil.which(name) or name)


def services(settings: Settings) -> dict[str, Service]:
    st = settings.state_dir
    mlflow = Service(
        name="mlflow",
        port=settings.mlflow_port,
        health_path="/health",
        argv=[
            _bin("mlflow"), "server",
            "--backend-store-uri", settings.mlflow_backend_uri,
            "--artifacts-destination", str(settings.mlflow_artifacts_dir),
            "--serve-artifacts",
            "--host", settings.host, "--port", str(settings.mlflow_port),
            "--workers", "1",
        ],
        env={"MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD": "false"},
    )
    evidently = Service(
        name="evidently",
        port=settings.evidently_port,
        health_path="/",
        argv=[_bin("evidently"), "ui", "--workspace", str(settings.evidently_workspace),
              "--host", settings.host, "--port", str(settings.evidently_port)],
        env={"DO_NOT_TRACK": "1", "EVIDENTLY_DISABLE_TELEMETRY": "1"},
    )
    return {"mlflow": mlflow, "evidently": evidently}


def _run_dir(settings: Settings) -> Path:
    d = settings.state_dir / "run"
    d.mkdir(parents=True, exist_ok=True)
    return d


def healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - local URL
            return 200 <= r.status < 400
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:  # a zombie is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return True


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def service_status(settings: Settings, name: str) -> dict:
    svc = services(settings)[name]
    pid = _read_pid(_run_dir(settings) / f"{name}.pid")
    url = svc.url(settings.host)
    return {
        "service": name,
        "url": url,
        "pid": pid if pid and _pid_alive(pid) else None,
        "healthy": healthy(url + svc.health_path),
        "log": str(settings.logs_dir / f"{name}.log"),
    }


def start_service(settings: Settings, name: str, timeout: float = 120.0) -> dict:
    svc = services(settings)[name]
    url = svc.url(settings.host)
    if healthy(url + svc.health_path):
        log.info("%s already running at %s", name, url)
        return {**service_status(settings, name), "started": False}
    if port_in_use(settings.host, svc.port):
        raise RuntimeError(f"{name}: port {svc.port} on {settings.host} is taken by another program "
                           f"that does not answer {svc.health_path}; choose another port "
                           f"(GALMORPH_{name.upper()}_PORT)")
    settings.logs_dir.mkdir(parents=True, exist_ok=True)
    settings.mlflow_artifacts_dir.mkdir(parents=True, exist_ok=True)
    (settings.state_dir / "mlflow").mkdir(parents=True, exist_ok=True)
    settings.evidently_workspace.mkdir(parents=True, exist_ok=True)
    logf = open(settings.logs_dir / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
    env = {**os.environ, **svc.env}
    proc = subprocess.Popen(svc.argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=env, start_new_session=True, cwd=settings.state_dir)
    (_run_dir(settings) / f"{name}.pid").write_text(str(proc.pid))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = (settings.logs_dir / f"{name}.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{name} exited with code {proc.returncode} while starting; log tail:\n{tail}")
        if healthy(url + svc.health_path):
            log.info("%s up at %s (pid %d)", name, url, proc.pid)
            return {**service_status(settings, name), "started": True}
        time.sleep(0.5)
    stop_service(settings, name)
    raise TimeoutError(f"{name} did not answer {url}{svc.health_path} within {timeout:.0f}s; "
                       f"see {settings.logs_dir / (name + '.log')}")


def stop_service(settings: Settings, name: str, timeout: float = 20.0) -> bool:
    pidfile = _run_dir(settings) / f"{name}.pid"
    pid = _read_pid(pidfile)
    if pid is None or not _pid_alive(pid):
        pidfile.unlink(missing_ok=True)
        return False
    try:
        os.killpg(pid, signal.SIGTERM)
    except OSError:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _pid_alive(pid):
        time.sleep(0.2)
    if _pid_alive(pid):
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
    pidfile.unlink(missing_ok=True)
    return True


def stack_up(settings: Settings, which: tuple[str, ...] = ("mlflow", "evidently")) -> list[dict]:
    return [start_service(settings, n) for n in which]


def stack_down(settings: Settings, which: tuple[str, ...] = ("mlflow", "evidently")) -> list[dict]:
    return [{"service": n, "stopped": stop_service(settings, n)} for n in which]


def stack_status(settings: Settings, which: tuple[str, ...] = ("mlflow", "evidently")) -> list[dict]:
    return [service_status(settings, n) for n in which]
