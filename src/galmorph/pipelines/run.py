"""Running pipelines: locally through kfp.local, or on a Kubeflow Pipelines endpoint with kfp.Client
(submit, upload packages, recurring runs)."""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
import time
from pathlib import Path
from typing import Any

from galmorph.pipelines import PIPELINES, compiled_dir

log = logging.getLogger(__name__)


class PipelineRunError(RuntimeError):
    """A pipeline could not be run or submitted (the message says which and why)."""


# --------------------------------------------------------------------------------------------
# parameters
# --------------------------------------------------------------------------------------------
def pipeline_parameters(name: str) -> dict[str, tuple[type, Any]]:
    """``{param: (type, default)}`` of a pipeline's inputs."""
    from galmorph.pipelines.loader import load_pipeline

    func = load_pipeline(name).pipeline_func
    out = {}
    for p in inspect.signature(func).parameters.values():
        out[p.name] = (p.annotation if p.annotation is not inspect.Parameter.empty else str, p.default)
    return out


def coerce_params(name: str, raw: dict[str, Any]) -> dict[str, Any]:
    """Convert ``--param k=v`` strings to the pipeline's parameter types; unknown names are an error."""
    known = pipeline_parameters(name)
    out: dict[str, Any] = {}
    for k, v in raw.items():
        if k not in known:
            raise PipelineRunError(f"pipeline {name!r} has no parameter {k!r}; parameters: {sorted(known)}")
        typ = known[k][0]
        if not isinstance(v, str):
            out[k] = v
        elif typ is bool or typ == "bool":
            if v.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise PipelineRunError(f"parameter {k!r} must be true/false, got {v!r}")
            out[k] = v.lower() in ("true", "1", "yes")
        elif typ is int or typ == "int":
            out[k] = int(v)
        elif typ is float or typ == "float":
            out[k] = float(v)
        else:
            out[k] = v
    return out


def parse_param_items(items: tuple[str, ...] | list[str]) -> dict[str, str]:
    out = {}
    for it in items:
        if "=" not in it:
            raise PipelineRunError(f"--param expects KEY=VALUE, got {it!r}")
        k, v = it.split("=", 1)
        out[k.strip()] = v
    return out


def package_path(name: str, package_dir: str | Path | None = None) -> Path:
    p = Path(package_dir or compiled_dir()) / f"{name}.yaml"
    if not p.exists():
        raise PipelineRunError(f"compiled package {p} not found; run `galmorph pipeline compile`")
    return p


# --------------------------------------------------------------------------------------------
# local runs
# --------------------------------------------------------------------------------------------
def run_local(name: str, params: dict[str, Any] | None = None, pipeline_root: str | Path | None = None,
              tracking_uri: str | None = None, data_root: str | Path | None = None,
              log_file: str | Path | None = None) -> dict[str, Any]:
    """Run pipeline ``name`` with kfp's local SubprocessRunner (components run as subprocesses of this
    Python, against ``tracking_uri``). Returns the run's folder under ``pipeline_root``, its outputs and
    the time it took; raises :class:`PipelineRunError` when a task fails. ``log_file`` receives the
    (verbose) task logs instead of stdout/stderr."""
    import contextlib
    import logging as _logging

    from kfp import local

    from galmorph.pipelines.loader import load_pipeline

    if name not in PIPELINES:
        raise PipelineRunError(f"unknown pipeline {name!r}; expected one of {list(PIPELINES)}")
    params = coerce_params(name, params or {})
    if tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = tracking_uri  # inherited by every component subprocess
        if "tracking_uri" in pipeline_parameters(name):
            params.setdefault("tracking_uri", tracking_uri)
    if data_root:
        os.environ["GALMORPH_DATA_ROOT"] = str(data_root)
    root = Path(pipeline_root or Path.cwd() / "outputs" / "kfp").resolve()
    root.mkdir(parents=True, exist_ok=True)
    before = set(root.iterdir())
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)
    t0 = time.perf_counter()
    log.info("running pipeline %s locally (pipeline root %s) with %s", name, root, params)
    with contextlib.ExitStack() as stack:
        if log_file is not None:
            Path(log_file).parent.mkdir(parents=True, exist_ok=True)
            fh = stack.enter_context(open(log_file, "a"))
            stack.enter_context(contextlib.redirect_stdout(fh))
            stack.enter_context(contextlib.redirect_stderr(fh))
            handler = _logging.StreamHandler(fh)
            rootlog = _logging.getLogger()
            saved = rootlog.handlers[:]
            rootlog.handlers = [handler]
            stack.callback(setattr, rootlog, "handlers", saved)
        try:
            task = load_pipeline(name)(**params)
        except RuntimeError as exc:
            raise PipelineRunError(f"pipeline {name} failed locally: {exc}"
                                   + (f" (task logs: {log_file})" if log_file else "")) from exc
    dt = time.perf_counter() - t0
    new = sorted(set(root.iterdir()) - before, key=lambda p: p.stat().st_mtime)
    outputs = {}
    try:
        outputs = dict(task.outputs) if task is not None and hasattr(task, "outputs") else {}
    except Exception:  # noqa: BLE001 - pipelines without outputs
        outputs = {}
    return {"pipeline": name, "run_dir": str(new[-1]) if new else str(root), "seconds": dt, "params": params,
            "outputs": {k: str(v) for k, v in outputs.items()}}


# --------------------------------------------------------------------------------------------
# Kubeflow endpoint
# --------------------------------------------------------------------------------------------
def make_client(host: str, namespace: str | None = None):
    import kfp

    kw = {"host": host}
    if namespace:
        kw["namespace"] = namespace
    return kfp.Client(**kw)


def submit(name: str, host: str, params: dict[str, Any] | None = None, run_name: str | None = None,
           experiment: str = "galmorph", package_dir: str | Path | None = None, client=None,
           namespace: str | None = None) -> dict[str, Any]:
    """Submit a compiled package to a Kubeflow Pipelines endpoint; returns the run id."""
    client = client or make_client(host, namespace)
    params = coerce_params(name, params or {})
    pkg = package_path(name, package_dir)
    res = client.create_run_from_pipeline_package(str(pkg), arguments=params,
                                                  run_name=run_name or f"{name}-{time.strftime('%Y%m%d-%H%M%S')}",
                                                  experiment_name=experiment)
    run_id = getattr(res, "run_id", None)
    log.info("submitted %s to %s: run %s", name, host, run_id)
    return {"pipeline": name, "host": host, "run_id": run_id, "params": params}


def package_version(path: str | Path) -> str:
    """A content version for a package: galmorph version + hash of the normalised IR."""
    from importlib.metadata import version as dist_version

    from galmorph.pipelines.compile import normalised

    gv = dist_version("galmorph")

    return f"v{gv}-{hashlib.sha256(normalised(path).encode()).hexdigest()[:12]}"


def _items(resp, attr: str) -> list:
    return list(getattr(resp, attr, None) or [])


def upload_all(host: str, package_dir: str | Path | None = None, names: tuple[str, ...] = PIPELINES,
               client=None, namespace: str | None = None) -> list[dict[str, Any]]:
    """Upload every compiled package (new pipeline) or add a version named by its content hash
    (existing pipeline); packages whose version exists already are left alone (idempotent)."""
    client = client or make_client(host, namespace)
    out = []
    for n in names:
        pkg = package_path(n, package_dir)
        pname = f"galmorph-{n}"
        version = package_version(pkg)
        pid = client.get_pipeline_id(pname)
        if pid is None:
            p = client.upload_pipeline(str(pkg), pipeline_name=pname,
                                       description=f"galmorph {n} pipeline ({version})")
            out.append({"pipeline": pname, "action": "created", "pipeline_id": getattr(p, "pipeline_id", None),
                        "version": version})
            continue
        existing = {getattr(v, "display_name", None) for v in _items(
            client.list_pipeline_versions(pipeline_id=pid, page_size=200), "pipeline_versions")}
        if version in existing:
            out.append({"pipeline": pname, "action": "unchanged", "pipeline_id": pid, "version": version})
            continue
        v = client.upload_pipeline_version(str(pkg), pipeline_version_name=version, pipeline_id=pid,
                                           description=f"galmorph {n} pipeline")
        out.append({"pipeline": pname, "action": "new-version", "pipeline_id": pid, "version": version,
                    "version_id": getattr(v, "pipeline_version_id", None)})
    for r in out:
        log.info("%s: %s (%s)", r["pipeline"], r["action"], r["version"])
    return out


def kfp_cron(expr: str) -> str:
    """KFP's scheduler takes 6-field cron (seconds first); a standard 5-field expression gets ``0``."""
    fields = expr.split()
    if len(fields) == 5:
        return "0 " + expr.strip()
    if len(fields) == 6:
        return expr.strip()
    raise PipelineRunError(f"cron expression {expr!r} must have 5 (or 6, with seconds) fields")


def schedule(name: str, cron: str, host: str, params: dict[str, Any] | None = None,
             experiment: str = "galmorph", job_name: str | None = None, max_concurrency: int = 1,
             package_dir: str | Path | None = None, client=None, namespace: str | None = None) -> dict[str, Any]:
    """Create (or replace, when its cron or package changed) the recurring run ``job_name`` of a pipeline."""
    client = client or make_client(host, namespace)
    params = coerce_params(name, params or {})
    pkg = package_path(name, package_dir)
    job_name = job_name or f"galmorph-{name}-recurring"
    cron6 = kfp_cron(cron)
    version = package_version(pkg)
    try:
        exp = client.get_experiment(experiment_name=experiment)
    except Exception:  # noqa: BLE001 - kfp raises ValueError/ApiException when it does not exist
        exp = client.create_experiment(experiment)
    exp_id = getattr(exp, "experiment_id", None)
    description = f"galmorph {name} pipeline {version}, cron {cron}"
    for rr in _items(client.list_recurring_runs(experiment_id=exp_id, page_size=200), "recurring_runs"):
        if getattr(rr, "display_name", None) != job_name:
            continue
        if getattr(rr, "description", None) == description:
            return {"pipeline": name, "action": "unchanged", "recurring_run_id": rr.recurring_run_id,
                    "cron": cron6, "job_name": job_name}
        client.delete_recurring_run(rr.recurring_run_id)
    rr = client.create_recurring_run(experiment_id=exp_id, job_name=job_name, description=description,
                                     cron_expression=cron6, max_concurrency=max_concurrency, no_catchup=True,
                                     params=params, pipeline_package_path=str(pkg))
    return {"pipeline": name, "action": "created", "recurring_run_id": getattr(rr, "recurring_run_id", None),
            "cron": cron6, "job_name": job_name, "experiment_id": exp_id}
