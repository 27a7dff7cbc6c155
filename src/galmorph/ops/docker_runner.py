"""Run a pipeline locally with every component in its container image: kfp's DockerRunner over podman's
Docker-compatible socket (``galmorph pipeline run NAME --local --runner docker``).

What this module adds to kfp's DockerRunner:

* the podman socket (``podman system service``) is started in the project's state folder and stopped
  afterwards (:class:`PodmanService`);
* a container that exits non-zero FAILS the run: kfp starts containers with ``auto_remove=True`` and
  podman removes them before kfp reads the exit code, which kfp then reports as success. Here the
  container is kept until its exit code is read, then removed (:func:`run_container`);
* the run settings reach the containers explicitly (:func:`container_settings`): the tracking URI and
  data root as pipeline parameters and container environment, the data root mounted read-only, the
  host paths named by parameters (``sim:DIR`` sources, publish folders, sqlite label databases) mounted
  at the same path, MLflow on 127.0.0.1 reached over the host network; nothing comes from this
  process's ``os.environ``;
* containers run as the caller's uid:gid (so they can write the pipeline root and the caller can read
  what they wrote), with every capability dropped and no privilege escalation;
* images are never pulled: a missing image is an error that says to run ``make images``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from galmorph.settings import REPO_ROOT

log = logging.getLogger(__name__)

#: podman settings that work on plain hosts (runc, explicit ulimits); see infra/podman/containers.conf
DEFAULT_CONTAINERS_CONF = REPO_ROOT / "infra" / "podman" / "containers.conf"


class ContainerRunError(RuntimeError):
    """A container could not be started, or podman is unusable (the message says why)."""


# --------------------------------------------------------------------------------------------
# podman's Docker-compatible socket
# --------------------------------------------------------------------------------------------
def podman_env(containers_conf: str | Path | None = None) -> dict[str, str]:
    """Environment for podman commands: this process's environment plus ``CONTAINERS_CONF``."""
    env = dict(os.environ)
    conf = containers_conf or env.get("CONTAINERS_CONF") or DEFAULT_CONTAINERS_CONF
    if Path(conf).is_file():
        env["CONTAINERS_CONF"] = str(conf)
    return env


class PodmanService:
    """``podman system service`` on a unix socket under ``state_dir`` (a context manager)."""

    def __init__(self, state_dir: str | Path, podman: str = "podman", containers_conf: str | Path | None = None,
                 start_timeout_s: float = 30.0):
        self.socket = Path(state_dir).resolve() / "podman" / "podman.sock"
        self.podman = podman
        self.env = podman_env(containers_conf)
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen | None = None

    @property
    def docker_host(self) -> str:
        return f"unix://{self.socket}"

    def client(self):
        import docker

        return docker.DockerClient(base_url=self.docker_host, timeout=600)

    def start(self) -> "PodmanService":
        if shutil.which(self.podman) is None:
            raise ContainerRunError(f"{self.podman} is not installed (make container-tools installs it)")
        self.socket.parent.mkdir(parents=True, exist_ok=True)
        self.socket.unlink(missing_ok=True)
        log_path = self.socket.parent / "service.log"
        with open(log_path, "ab") as fh:
            self.proc = subprocess.Popen([self.podman, "system", "service", "--time=0", self.docker_host],
                                         env=self.env, stdout=fh, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ContainerRunError(f"podman system service exited with {self.proc.returncode}; "
                                        f"see {log_path}")
            if self.socket.exists():
                try:
                    with contextlib.closing(self.client()) as c:
                        c.ping()
                    return self
                except Exception:  # noqa: BLE001 - not answering yet
                    pass
            time.sleep(0.2)
        self.stop()
        raise ContainerRunError(f"podman socket {self.socket} did not answer within {self.start_timeout_s:.0f} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        self.socket.unlink(missing_ok=True)

    def __enter__(self) -> "PodmanService":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------
# run settings -> container settings
# --------------------------------------------------------------------------------------------
@dataclass
class ContainerSettings:
    """What every component container of one run gets: environment, mounts, user, network."""

    environment: dict[str, str] = field(default_factory=dict)
    #: host path -> "ro" | "rw" (mounted at the same path inside the container)
    mounts: dict[str, str] = field(default_factory=dict)
    user: str = ""
    network_mode: str = "host"

    def run_args(self) -> dict[str, Any]:
        """Keyword arguments for kfp's DockerRunner (the docker SDK's ``containers.run``)."""
        args: dict[str, Any] = {"environment": dict(self.environment), "network_mode": self.network_mode,
                                "cap_drop": ["ALL"], "security_opt": ["no-new-privileges"]}
        if self.user:
            args["user"] = self.user
        return args


def _param_paths(value: Any) -> list[Path]:
    """Absolute host paths a parameter value names (``/x``, ``sim:/x``, ``sqlite:////x``, ``file:///x``)."""
    if not isinstance(value, str):
        return []
    v = value.strip()
    for prefix in ("sim:", "sqlite:///", "file://"):
        if v.startswith(prefix):
            v = v[len(prefix):]
    if not v.startswith("/") or "\n" in v:
        return []
    return [Path(v)]


def host_mounts_for_params(params: dict[str, Any], pipeline_root: Path) -> dict[str, str]:
    """Read-write mounts for the host paths the parameters name: an existing folder itself; a file or a
    path still to be written by its parent folder (when that exists and is not ``/`` itself)."""
    mounts: dict[str, str] = {}
    for value in params.values():
        for p in _param_paths(value):
            p = p.resolve()
            target = p if p.is_dir() else p.parent
            if not target.is_dir() or len(target.parts) < 3:
                raise ContainerRunError(f"parameter value {value!r}: cannot mount {target} into the containers "
                                        "(a folder at least two levels below / must exist)")
            if target == pipeline_root or pipeline_root in target.parents:
                continue  # the pipeline root is mounted by kfp
            mounts[str(target)] = "rw"
    return mounts


def container_settings(params: dict[str, Any], pipeline_root: Path, tracking_uri: str | None,
                       data_root: str | Path | None, user: str | None = None,
                       extra_env: dict[str, str] | None = None) -> ContainerSettings:
    """The containers' settings for a run, from explicit arguments only (never ``os.environ``)."""
    env = {"PYTHONUNBUFFERED": "1"}
    mounts = host_mounts_for_params(params, pipeline_root)
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    if data_root:
        root = str(Path(data_root).resolve())
        env["GALMORPH_DATA_ROOT"] = root
        mounts[root] = "ro"
    env.update(extra_env or {})
    if user is None:
        user = f"{os.getuid()}:{os.getgid()}"
    return ContainerSettings(environment=env, mounts=mounts, user=user)


# --------------------------------------------------------------------------------------------
# the container run (replaces kfp.local.docker_task_handler.run_docker_container while a run lasts)
# --------------------------------------------------------------------------------------------
def run_container(client, image: str, command: list[str], volumes: dict[str, Any], *,
                  extra_volumes: dict[str, str] | None = None, **container_run_args) -> int:
    """Run one component container and return its exit code. Unlike kfp's version: the container is not
    auto-removed (its exit code is read first, then it is removed), images are never pulled, and the
    ``extra_volumes`` (host path -> ``ro``/``rw``) are mounted at the same paths."""
    import docker

    if ":" not in image.rsplit("/", 1)[-1]:
        image = f"{image}:latest"
    try:
        client.images.get(image)
    except docker.errors.ImageNotFound as exc:
        raise ContainerRunError(f"image {image} is not on this machine; build it with `make images`") from exc
    vols = dict(volumes)
    for host, mode in (extra_volumes or {}).items():
        vols.setdefault(host, {"bind": host, "mode": mode})
    container_run_args.pop("auto_remove", None)
    container = client.containers.run(image=image, command=command, detach=True, stdout=True, stderr=True,
                                      volumes=vols, auto_remove=False, **container_run_args)
    try:
        for line in container.logs(stream=True, follow=True):
            print(line.decode(errors="replace"), end="")
        code = int(container.wait()["StatusCode"])
    finally:
        try:
            container.remove(force=True)
        except docker.errors.NotFound:
            pass
    if code != 0:
        print(f"container {container.short_id} ({image}) exited with {code}")
    return code


@contextlib.contextmanager
def docker_runner(service: PodmanService, settings: ContainerSettings) -> Iterator[Any]:
    """kfp's DockerRunner talking to ``service``, with :func:`run_container` in place of kfp's container run
    and ``DOCKER_HOST`` pointing at the podman socket (restored afterwards)."""
    from kfp import local
    from kfp.local import docker_task_handler

    saved_fn = docker_task_handler.run_docker_container
    saved_host = os.environ.get("DOCKER_HOST")
    os.environ["DOCKER_HOST"] = service.docker_host  # read by docker.from_env() in kfp's task handler
    docker_task_handler.run_docker_container = functools.partial(run_container, extra_volumes=settings.mounts)
    try:
        yield local.DockerRunner(**settings.run_args())
    finally:
        docker_task_handler.run_docker_container = saved_fn
        if saved_host is None:
            os.environ.pop("DOCKER_HOST", None)
        else:
            os.environ["DOCKER_HOST"] = saved_host


def podman_can_run(image: str, containers_conf: str | Path | None = None, podman: str = "podman",
                   timeout_s: float = 120.0) -> tuple[bool, str]:
    """Whether podman can start a container of ``image`` (which must exist) here: ``(True, "")`` or
    ``(False, reason)``."""
    if shutil.which(podman) is None:
        return False, f"{podman} is not installed"
    env = podman_env(containers_conf)
    try:
        res = subprocess.run([podman, "run", "--rm", "--network", "none", "--entrypoint", "true", image],
                             env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return False, f"podman run {image} did not finish within {timeout_s:.0f} s"
    if res.returncode != 0:
        return False, f"podman cannot run a container here: {res.stderr.strip()[-400:]}"
    return True, ""


# --------------------------------------------------------------------------------------------
# a pipeline run
# --------------------------------------------------------------------------------------------
def run_local_docker(name: str, params: dict[str, Any] | None = None, pipeline_root: str | Path | None = None,
                     tracking_uri: str | None = None, data_root: str | Path | None = None,
                     state_dir: str | Path | None = None, user: str | None = None,
                     extra_env: dict[str, str] | None = None, log_file: str | Path | None = None) -> dict[str, Any]:
    """Run pipeline ``name`` with every component in its image (kfp's DockerRunner over podman). The
    tracking URI and data root become pipeline parameters (where the pipeline has them) and container
    environment; returns what :func:`galmorph.ops.run.run_local` returns; raises
    :class:`~galmorph.ops.run.PipelineRunError` when a task fails (a non-zero exit included)."""
    from kfp import local

    from galmorph.ops import PIPELINES
    from galmorph.ops.loader import load_pipeline
    from galmorph.ops.run import PipelineRunError, coerce_params, pipeline_parameters

    if name not in PIPELINES:
        raise PipelineRunError(f"unknown pipeline {name!r}; expected one of {list(PIPELINES)}")
    params = coerce_params(name, params or {})
    known = pipeline_parameters(name)
    if tracking_uri and "tracking_uri" in known:
        params.setdefault("tracking_uri", tracking_uri)
    if data_root and "data_root" in known:
        params.setdefault("data_root", str(Path(data_root).resolve()))
    root = Path(pipeline_root or Path.cwd() / "outputs" / "kfp").resolve()
    root.mkdir(parents=True, exist_ok=True)
    if state_dir is None:
        from galmorph.settings import get_settings

        state_dir = get_settings().state_dir
    settings = container_settings(params, root, tracking_uri, data_root, user=user, extra_env=extra_env)
    before = set(root.iterdir())
    t0 = time.perf_counter()
    log.info("running pipeline %s in containers (pipeline root %s) with %s", name, root, params)
    with contextlib.ExitStack() as stack:
        service = stack.enter_context(PodmanService(state_dir))
        runner = stack.enter_context(docker_runner(service, settings))
        if log_file is not None:
            Path(log_file).parent.mkdir(parents=True, exist_ok=True)
            fh = stack.enter_context(open(log_file, "a"))
            stack.enter_context(contextlib.redirect_stdout(fh))
            stack.enter_context(contextlib.redirect_stderr(fh))
        local.init(runner=runner, pipeline_root=str(root), raise_on_error=True)
        try:
            task = load_pipeline(name)(**params)
        except (RuntimeError, ContainerRunError) as exc:
            raise PipelineRunError(f"pipeline {name} failed in containers: {exc}"
                                   + (f" (task logs: {log_file})" if log_file else "")) from exc
    dt = time.perf_counter() - t0
    new = sorted(set(root.iterdir()) - before, key=lambda p: p.stat().st_mtime)
    try:
        outputs = dict(task.outputs) if task is not None and hasattr(task, "outputs") else {}
    except Exception:  # noqa: BLE001 - pipelines without outputs
        outputs = {}
    return {"pipeline": name, "run_dir": str(new[-1]) if new else str(root), "seconds": dt, "params": params,
            "runner": "docker", "outputs": {k: str(v) for k, v in outputs.items()}}


__all__ = ["run_local_docker", "ContainerRunError", "ContainerSettings", "PodmanService", "container_settings", "docker_runner",
           "host_mounts_for_params", "podman_can_run", "podman_env", "run_container"]
