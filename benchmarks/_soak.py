"""Shared by the soak benchmarks (soak_labels.py, soak_scoring.py, soak_promotions.py, issue #30.3): the
`galmorph` command as a user runs it, a private MLflow stack (``galmorph stack up`` with its own state folder
and port), an RSS sampler of a process tree, and latency percentiles."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import numpy as np

from _common import galmorph_exe


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def percentiles(values_ms: list[float]) -> dict:
    a = np.asarray(values_ms, dtype=float)
    if not len(a):
        return {"n": 0}
    return {"n": int(len(a)), "p50_ms": round(float(np.percentile(a, 50)), 1),
            "p99_ms": round(float(np.percentile(a, 99)), 1), "max_ms": round(float(a.max()), 1),
            "mean_ms": round(float(a.mean()), 1)}


class RssSampler:
    """Samples the RSS (MiB) of a process and its children every ``every`` s in a thread; the pid to watch
    may change (:meth:`watch`, e.g. a resumed command)."""

    def __init__(self, pid: int | None = None, every: float = 0.5):
        self.pid, self.every = pid, every
        self.samples: list[tuple[float, float, int | None]] = []  # (t, MiB, pid)
        self._stop = threading.Event()
        self._th = threading.Thread(target=self._run, daemon=True)
        self.t0 = time.time()

    def watch(self, pid: int | None) -> None:
        self.pid = pid

    def _rss(self) -> float | None:
        import psutil

        pid = self.pid
        if pid is None:
            return None
        try:
            p = psutil.Process(pid)
            total = p.memory_info().rss
            for c in p.children(recursive=True):
                try:
                    total += c.memory_info().rss
                except psutil.Error:
                    pass
            return total / 2**20
        except psutil.Error:
            return None

    def _run(self) -> None:
        while not self._stop.is_set():
            r = self._rss()
            if r is not None:
                self.samples.append((time.time() - self.t0, r, self.pid))
            self._stop.wait(self.every)

    def __enter__(self):
        self._th.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._th.join(5)

    def flatness(self, pid: int | None = None) -> dict:
        """Peak RSS overall and of the quarters of the samples (of ``pid`` only when given): the first against
        the last, and the second against the last (steady state: a command's first quarter is its start-up)."""
        r = np.array([s[1] for s in self.samples if pid is None or s[2] == pid])
        if not len(r):
            return {"samples": 0}
        q = max(1, len(r) // 4)
        first, second, last = float(r[:q].max()), float(r[q:2 * q].max() if len(r) >= 2 * q else r.max()), \
            float(r[-q:].max())
        return {"samples": int(len(r)), "rss_peak_mib": round(float(r.max()), 1),
                "rss_first_quarter_peak_mib": round(first, 1), "rss_second_quarter_peak_mib": round(second, 1),
                "rss_last_quarter_peak_mib": round(last, 1),
                "rss_growth_last_vs_first_pct": round(100 * (last - first) / first, 1),
                "rss_growth_last_vs_second_pct": round(100 * (last - second) / second, 1)}


class PrivateStack:
    """An MLflow server of its own (``galmorph stack up --service mlflow`` with a private
    ``GALMORPH_STATE_DIR`` and port): :attr:`env` points every `galmorph` command at it."""

    def __init__(self, state_dir: Path):
        self.state_dir = Path(state_dir)
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("GALMORPH_") and k != "MLFLOW_TRACKING_URI"}
        keep = {k: os.environ[k] for k in ("GALMORPH_DATA_ROOT",) if k in os.environ}
        self.env = {**env, **keep, "GALMORPH_STATE_DIR": str(self.state_dir), "GALMORPH_HOST": "127.0.0.1",
                    "GALMORPH_MLFLOW_PORT": str(self.port), "GALMORPH_EVIDENTLY_PORT": str(free_port()),
                    "GALMORPH_MLFLOW_TRACKING_URI": self.uri, "MLFLOW_TRACKING_URI": self.uri}

    def _cli(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        r = subprocess.run([*galmorph_exe(), *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if r.returncode:
            raise RuntimeError(f"galmorph {' '.join(args)} exited {r.returncode}: {r.stderr[-2000:]}")
        return r

    def up(self) -> float:
        t0 = time.perf_counter()
        self._cli("stack", "up", "--service", "mlflow")
        return time.perf_counter() - t0

    def down(self) -> float:
        t0 = time.perf_counter()
        self._cli("stack", "down", "--service", "mlflow")
        return time.perf_counter() - t0

    def server_pid(self) -> int | None:
        """The pid `stack up` recorded for the MLflow server."""
        from galmorph.ops.stack import owned_pid
        from galmorph.settings import Settings

        return owned_pid(Settings(state_dir=self.state_dir, host="127.0.0.1", mlflow_port=self.port,
                                  mlflow_tracking_uri=self.uri), "mlflow")

    def use_here(self) -> None:
        """This process's MLflow client talks to the private server."""
        import mlflow

        os.environ["MLFLOW_TRACKING_URI"] = self.uri
        mlflow.set_tracking_uri(self.uri)
        mlflow.set_registry_uri(self.uri)


def load_line(start: list[float], end: list[float], quiet_below: float = 0.5) -> str:
    """The load under which a soak ran (its figures of speed are a result only on a quiet machine; its
    correctness figures hold whatever the load)."""
    quiet = start[0] < quiet_below
    return (f"Load average {start[0]:.2f} at the start, {end[0]:.2f} at the end (1-min). " +
            ("Quiet at the start." if quiet else
             f"**Under load** (results need < {quiet_below}): the speed figures (requests/s, latency) are not a "
             "result; the correctness figures (nothing lost, nothing duplicated) hold whatever the load."))


def rss_row(what: str, flat: dict) -> str:
    """The results table's memory row: ``what``'s RSS peak and its first- vs last-quarter peaks (:class:`RssSampler`)."""
    return (f"| {what} RSS peak; first vs last quarter peak | {flat.get('rss_peak_mib')} MiB; "
            f"{flat.get('rss_first_quarter_peak_mib')} vs {flat.get('rss_last_quarter_peak_mib')} MiB "
            f"({flat.get('rss_growth_last_vs_first_pct')} %) |")
