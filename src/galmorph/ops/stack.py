"""The local platform stack: an MLflow tracking server, the Evidently UI and the registry-event receiver
(``galmorph hooks serve``, :mod:`galmorph.ops.hooks`) on 127.0.0.1.

``stack_up`` is idempotent: a service whose health check already answers is left alone. Each
service runs detached (its own process session) with a pid file and a log under the state folder,
so it survives the command that started it; ``stack_down`` stops what ``stack_up`` started.

Ownership: at start the child's pid, its start time (``/proc/<pid>/stat``), command line and port
are recorded in ``<state>/run/<service>.json``. A server answering on the port counts as ours only
when that recorded process is still alive (same pid *and* start time); ``stack_down`` signals a
process only under the same proof, so a stale pid file never makes it kill an unrelated process.
Filesystem problems of the state folder (read-only, missing permissions) raise :class:`StackError`
naming the path.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from galmorph.settings import Settings

log = logging.getLogger(__name__)


class StackError(RuntimeError):
    """A stack operation cannot proceed; the message names the service or path and the reason."""


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
        # no GenAI job runner: the platform submits no MLflow server jobs, and each runner is 7 idle
        # huey consumer processes per server
        env={"MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD": "false", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    evidently = Service(
        name="evidently",
        port=settings.evidently_port,
        health_path="/",
        argv=[_bin("evidently"), "ui", "--workspace", str(settings.evidently_workspace),
              "--host", settings.host, "--port", str(settings.evidently_port)],
        env={"DO_NOT_TRACK": "1", "EVIDENTLY_DISABLE_TELEMETRY": "1"},
    )
    hooks = Service(
        name="hooks",
        port=settings.hooks_port,
        health_path="/health",
        argv=[_bin("galmorph"), "hooks", "serve"],
        env=_hooks_env(settings),
    )
    return {"mlflow": mlflow, "evidently": evidently, "hooks": hooks}


#: the settings the receiver (``galmorph hooks serve``) is started with, as ``GALMORPH_*`` variables
_HOOKS_SETTINGS = ("state_dir", "host", "hooks_port", "hooks_secret", "hooks_url", "hooks_max_age", "hooks_models",
                   "mlflow_tracking_uri", "data_root", "audit_log", "lock_url", "kfp_host")


def _hooks_env(settings: Settings) -> dict[str, str]:
    env = {f"GALMORPH_{k.upper()}": str(getattr(settings, k)) for k in _HOOKS_SETTINGS
           if getattr(settings, k) is not None}
    if "params_file" in settings.model_fields_set or Path(settings.params_file).is_file():
        env["GALMORPH_PARAMS_FILE"] = str(settings.params_file)
    return env


def _start_env(settings: Settings, name: str) -> dict[str, str]:
    """What a service gets at start besides its own variables: the local MLflow server can deliver webhooks to
    the receiver on this machine (:func:`galmorph.ops.hooks.mlflow_webhook_env`)."""
    if name != "mlflow":
        return {}
    from galmorph.ops.hooks import mlflow_webhook_env

    return mlflow_webhook_env(settings)


def _run_dir(settings: Settings, create: bool = True) -> Path:
    d = settings.state_dir / "run"
    if create:
        _mkdir(d)
    return d


def _mkdir(d: Path) -> None:
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StackError(f"state folder: cannot create {d} ({exc.strerror or exc}); set GALMORPH_STATE_DIR "
                         "to a writable folder") from exc


def _proc_start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (``/proc/<pid>/stat`` field 22), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        pass
    try:
        import psutil

        return repr(psutil.Process(pid).create_time())
    except Exception:  # noqa: BLE001 - no psutil, or no such process
        return None


def _record_path(settings: Settings, name: str) -> Path:
    return _run_dir(settings, create=False) / f"{name}.json"


def _read_record(settings: Settings, name: str) -> dict | None:
    try:
        rec = json.loads(_record_path(settings, name).read_text())
        return rec if isinstance(rec, dict) else None
    except (OSError, ValueError):
        return None


def owned_pid(settings: Settings, name: str) -> int | None:
    """The pid of the ``name`` server started by this state folder, when that very process is
    still alive (pid, start time and command line as recorded); None otherwise."""
    rec = _read_record(settings, name)
    if not rec or not isinstance(rec.get("pid"), int):
        return None
    pid = rec["pid"]
    if not _pid_alive(pid) or _proc_start_time(pid) != rec.get("start_time"):
        return None
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        argv = None
    if argv is not None and rec.get("argv") and not any(Path(a).name == Path(rec["argv"][0]).name
                                                        or a == rec["argv"][0] for a in argv[:2]):
        return None
    return pid


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
    url = svc.url(settings.host)
    pid = owned_pid(settings, name)
    up = healthy(url + svc.health_path)
    return {
        "service": name,
        "url": url,
        "pid": pid,
        "healthy": up,
        "ours": pid is not None,
        "log": str(settings.logs_dir / f"{name}.log"),
    }


def start_service(settings: Settings, name: str, timeout: float = 120.0) -> dict:
    """Start the ``name`` server of this state folder (or report the one already running). Starts of the
    same service in the same state folder are serialised by a file lock, so two ``stack up`` at once
    start one server: the second waits and finds it running."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(_run_dir(settings) / f".{name}.start.lock"))
    try:
        with lock.acquire(timeout=timeout + 60):
            return _start_service_locked(settings, name, timeout)
    except Timeout:
        raise StackError(f"{name}: another `stack up` of {settings.state_dir} has held its start lock for over "
                         f"{timeout + 60:.0f}s; try again when it has finished") from None


def _start_service_locked(settings: Settings, name: str, timeout: float) -> dict:
    svc = services(settings)[name]
    url = svc.url(settings.host)
    if healthy(url + svc.health_path):
        if owned_pid(settings, name) is None:
            raise StackError(f"{name}: a server answers {url}{svc.health_path} but it was not started by this "
                             f"state folder ({settings.state_dir}); stop it or choose another port "
                             f"(GALMORPH_{name.upper()}_PORT)")
        log.info("%s already running at %s", name, url)
        return {**service_status(settings, name), "started": False}
    if port_in_use(settings.host, svc.port):
        raise StackError(f"{name}: port {svc.port} on {settings.host} is taken by another program "
                         f"that does not answer {svc.health_path}; choose another port "
                         f"(GALMORPH_{name.upper()}_PORT)")
    for d in (settings.logs_dir, settings.mlflow_artifacts_dir, settings.state_dir / "mlflow",
              settings.evidently_workspace, settings.hooks_dir):
        _mkdir(d)
    run = _run_dir(settings)
    try:
        logf = open(settings.logs_dir / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
        probe = run / f".{name}.write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise StackError(f"{name}: state folder {settings.state_dir} is not writable ({exc.strerror or exc}); "
                         "set GALMORPH_STATE_DIR to a writable folder") from exc
    try:
        env = {**os.environ, **svc.env, **_start_env(settings, name)}
    except OSError as exc:
        raise StackError(f"{name}: cannot write {settings.hooks_dir} ({exc.strerror or exc})") from exc
    try:
        proc = subprocess.Popen(svc.argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True, cwd=settings.state_dir)
    except OSError as exc:
        logf.close()
        raise StackError(f"{name}: cannot start {svc.argv[0]} ({exc.strerror or exc})") from exc
    logf.close()
    rec = {"pid": proc.pid, "start_time": _proc_start_time(proc.pid), "argv": svc.argv, "port": svc.port,
           "host": settings.host, "started_at": time.time()}
    try:
        (run / f"{name}.pid").write_text(str(proc.pid))
        tmp = run / f".{name}.json.tmp"
        tmp.write_text(json.dumps(rec))
        os.replace(tmp, _record_path(settings, name))
    except OSError as exc:
        _terminate(proc.pid)
        raise StackError(f"{name}: cannot record the server in {run} ({exc.strerror or exc})") from exc
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            _forget_if(settings, name, proc.pid)
            tail = (settings.logs_dir / f"{name}.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{name} exited with code {proc.returncode} while starting; log tail:\n{tail}")
        if healthy(url + svc.health_path):
            log.info("%s up at %s (pid %d)", name, url, proc.pid)
            return {**service_status(settings, name), "started": True}
        time.sleep(0.5)
    stop_service(settings, name)
    raise TimeoutError(f"{name} did not answer {url}{svc.health_path} within {timeout:.0f}s; "
                       f"see {settings.logs_dir / (name + '.log')}")


def _forget_if(settings: Settings, name: str, pid: int) -> None:
    """Remove the pid file and record of ``name`` when they name ``pid`` (a server that failed to start),
    never another start's."""
    rec = _read_record(settings, name) or {}
    if rec.get("pid") == pid:
        _unlink(_run_dir(settings, create=False) / f"{name}.pid", _record_path(settings, name))


def _terminate(pid: int, timeout: float = 20.0) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except OSError:
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _pid_alive(pid):
        time.sleep(0.2)
    if _pid_alive(pid):
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass


def stop_service(settings: Settings, name: str, timeout: float = 20.0) -> bool:
    """Stop the ``name`` server this state folder started; True when one was stopped. A pid file
    whose process cannot be proven ours (see :func:`owned_pid`) is removed, never signalled."""
    run = _run_dir(settings, create=False)
    pidfile, record = run / f"{name}.pid", _record_path(settings, name)
    pid = owned_pid(settings, name)
    stale = _read_pid(pidfile)
    if pid is None:
        if stale is not None and _pid_alive(stale):
            log.warning("%s: pid file names process %d, which this state folder did not start (or no longer "
                        "runs); not signalled", name, stale)
        _unlink(pidfile, record)
        return False
    _terminate(pid, timeout)
    _unlink(pidfile, record)
    return True


def _unlink(*paths: Path) -> None:
    for p in paths:
        try:
            p.unlink(missing_ok=True)
        except OSError as exc:
            raise StackError(f"cannot remove {p} ({exc.strerror or exc})") from exc


ALL_SERVICES = ("mlflow", "evidently", "hooks")


def stack_up(settings: Settings, which: tuple[str, ...] = ALL_SERVICES) -> list[dict]:
    """Start ``which`` (in the order of :data:`ALL_SERVICES`); with the receiver (``hooks``), MLflow's webhook
    ``galmorph-hooks`` is registered (or updated) once the tracking server answers."""
    out = [start_service(settings, n) for n in ALL_SERVICES if n in which]
    if "hooks" in which:
        from galmorph.ops.hooks import register_webhooks

        if not healthy(services(settings)["mlflow"].url(settings.host) + "/health"):
            raise StackError("hooks: the MLflow server does not answer; the webhooks cannot be registered "
                             "(start it too: galmorph stack up)")
        try:
            hook = register_webhooks(settings)
        except Exception as exc:  # noqa: BLE001 - named for the user
            raise StackError(f"hooks: registering the MLflow webhooks failed: {exc}") from exc
        for r in out:
            if r["service"] == "hooks":
                r["webhook"] = hook
    return out


def stack_down(settings: Settings, which: tuple[str, ...] = ALL_SERVICES) -> list[dict]:
    return [{"service": n, "stopped": stop_service(settings, n)} for n in which]


def stack_status(settings: Settings, which: tuple[str, ...] = ALL_SERVICES) -> list[dict]:
    return [service_status(settings, n) for n in which]
