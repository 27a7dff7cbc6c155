"""Running pipelines: locally through kfp.local, or on a Kubeflow Pipelines endpoint with kfp.Client
(submit, upload packages, recurring runs)."""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

from galmorph.ops import PIPELINES, compiled_dir

log = logging.getLogger(__name__)


class PipelineRunError(RuntimeError):
    """A pipeline could not be run or submitted (the message says which and why)."""


# --------------------------------------------------------------------------------------------
# parameters
# --------------------------------------------------------------------------------------------
def pipeline_parameters(name: str) -> dict[str, tuple[type, Any]]:
    """``{param: (type, default)}`` of a pipeline's inputs."""
    from galmorph.ops.loader import load_pipeline

    func = load_pipeline(name).pipeline_func
    out = {}
    for p in inspect.signature(func).parameters.values():
        out[p.name] = (p.annotation if p.annotation is not inspect.Parameter.empty else str, p.default)
    return out


class PipelineParamError(PipelineRunError):
    """Pipeline parameters are invalid (every bad one is named with what it allows); nothing was run."""


def _fraction(lo_open: bool = False, hi_open: bool = False):
    def check(v):
        ok = (v > 0 if lo_open else v >= 0) and (v < 1 if hi_open else v <= 1)
        return None if ok else f"a number in {'(' if lo_open else '['}0, 1{')' if hi_open else ']'}"
    return check


def _at_least(m):
    return lambda v: None if v >= m else f"an integer >= {m}"


def _json_object(v):
    import json

    try:
        return None if isinstance(json.loads(v), dict) else "a JSON object"
    except (TypeError, ValueError):
        return "a JSON object"


def _choice(values):
    return lambda v: None if v in values else f"one of {sorted(values)}"


def _value_rules() -> dict[str, Any]:
    from galmorph.scoring.accel import DECODES, REQUESTS
    from galmorph.tasks import TASKS

    return {
        "task": _choice(set(TASKS)), "z_min": lambda v: None if v >= 0 else "a redshift >= 0",
        "z_max": lambda v: None if v > 0 else "a redshift > 0",
        "max_failure_fraction": _fraction(), "test_fraction": _fraction(True, True),
        "crop_fraction": _fraction(lo_open=True), "threshold": _fraction(lo_open=True),
        "cutout_size_px": lambda v: None if v == 0 or v >= 8 else "0 (framing from the preset or model) or >= 8", "shard_size": _at_least(1), "n_workers": _at_least(1),
        "batch_size": _at_least(1), "per_bin": _at_least(1), "n_bins": _at_least(1),
        "drift_min_group_size": _at_least(0), "overrides_json": _json_object, "policy_json": _json_object,
        "model_alias": _choice({"champion", "challenger", "previous-champion"}),
        "precision": _choice(set(REQUESTS)), "decode": _choice(set(DECODES)),
    }


def coerce_params(name: str, raw: dict[str, Any]) -> dict[str, Any]:
    """Convert ``--param k=v`` strings to the pipeline's parameter types and check their values
    (task names, fractions, sizes, JSON, z_min < z_max) before anything runs; raises
    :class:`PipelineParamError` listing every bad parameter with its allowed values or type."""
    known = pipeline_parameters(name)
    out: dict[str, Any] = {}
    errors: list[str] = []
    for k, v in raw.items():
        if k not in known:
            errors.append(f"{k!r} is not a parameter of pipeline {name!r} (parameters: {', '.join(sorted(known))})")
            continue
        typ = known[k][0]
        tname = getattr(typ, "__name__", str(typ))
        try:
            if not isinstance(v, str):
                out[k] = v
            elif typ is bool or typ == "bool":
                if v.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                out[k] = v.lower() in ("true", "1", "yes")
            elif typ is int or typ == "int":
                out[k] = int(v)
            elif typ is float or typ == "float":
                out[k] = float(v)
                if out[k] != out[k] or out[k] in (float("inf"), float("-inf")):
                    raise ValueError
            else:
                out[k] = v
        except ValueError:
            allowed = "true or false" if tname == "bool" else f"an {tname}" if tname == "int" else f"a finite {tname}"
            errors.append(f"{k}={v!r}: expected {allowed}")
    rules = _value_rules()
    for k, v in out.items():
        rule = rules.get(k)
        if k == "model_alias" and "model_uri" in out and out["model_uri"]:
            continue
        if rule is not None and (msg := rule(v)) is not None:
            errors.append(f"{k}={v!r}: expected {msg}")
    lo = out.get("z_min", known.get("z_min", (None, None))[1])
    hi = out.get("z_max", known.get("z_max", (None, None))[1])
    if isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and ("z_min" in out or "z_max" in out) \
            and not lo < hi:
        errors.append(f"z_min={lo} must be below z_max={hi}")
    if errors:
        raise PipelineParamError(f"invalid parameter(s) for pipeline {name!r}, nothing was run: " + "; ".join(errors))
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
_ERROR_LINE = re.compile(r"^\s*(?:[A-Za-z_][\w.]*\.)?[A-Z]\w*(?:Error|Exception|Exit|Interrupt)\b.*")


def last_error_line(log_file: str | Path, limit: int = 400) -> str:
    """The exception line (``SomeError: message``) of the last traceback in a pipeline's task log, cut to
    ``limit`` characters; ``""`` when the log has none (or cannot be read)."""
    try:
        lines = Path(log_file).read_text(errors="replace").splitlines()
    except OSError:
        return ""
    starts = [i for i, line in enumerate(lines) if line.strip().startswith("Traceback (most recent call last)")]
    if not starts:
        return ""
    for line in lines[starts[-1] + 1:]:
        if _ERROR_LINE.match(line):
            return line.strip()[:limit]
    return ""


def run_local(name: str, params: dict[str, Any] | None = None, pipeline_root: str | Path | None = None,
              tracking_uri: str | None = None, data_root: str | Path | None = None,
              log_file: str | Path | None = None, connect_timeout: float | None = None) -> dict[str, Any]:
    """Run pipeline ``name`` with kfp's local SubprocessRunner (components run as subprocesses of this
    Python, against ``tracking_uri``). Returns the run's folder under ``pipeline_root``, its outputs and
    the time it took; raises :class:`PipelineRunError` when a task fails, or before any task starts when
    the MLflow server does not answer within ``connect_timeout`` s. ``log_file`` receives the
    (verbose) task logs instead of stdout/stderr."""
    import contextlib
    import logging as _logging

    from kfp import local

    from galmorph.ops.loader import load_pipeline

    if name not in PIPELINES:
        raise PipelineRunError(f"unknown pipeline {name!r}; expected one of {list(PIPELINES)}")
    params = coerce_params(name, params or {})
    if tracking_uri:
        # inherited by every component subprocess; the registry is the tracking server's
        os.environ["MLFLOW_TRACKING_URI"] = os.environ["MLFLOW_REGISTRY_URI"] = tracking_uri
        if "tracking_uri" in pipeline_parameters(name):
            params.setdefault("tracking_uri", tracking_uri)
    if data_root:
        os.environ["GALMORPH_DATA_ROOT"] = str(data_root)
    from galmorph.tracking import DEFAULT_CONNECT_TIMEOUT, TrackingUnreachable, ensure_reachable

    try:  # fail fast: the components would each wait on an unreachable server for minutes
        ensure_reachable(params.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI"),
                         DEFAULT_CONNECT_TIMEOUT if connect_timeout is None else connect_timeout)
    except TrackingUnreachable as exc:
        raise PipelineRunError(f"pipeline {name} not started: {exc}") from exc
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
            fh_cause = last_error_line(log_file) if log_file else ""
            raise PipelineRunError(f"pipeline {name} failed locally: {exc}"
                                   + (f"; the failed task said: {fh_cause}" if fh_cause else "")
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
    try:
        return kfp.Client(**kw)
    except Exception as exc:  # noqa: BLE001 - unreachable/refusing endpoint: a clear error, not a traceback
        reason = str(getattr(exc, "reason", None) or exc).splitlines()[0][:300]
        raise PipelineRunError(f"Kubeflow Pipelines endpoint {host} is not reachable ({type(exc).__name__}: "
                               f"{reason})") from exc


def submit(name: str, host: str, params: dict[str, Any] | None = None, run_name: str | None = None,
           experiment: str = "galmorph", package_dir: str | Path | None = None, client=None,
           namespace: str | None = None) -> dict[str, Any]:
    """Submit a compiled package to a Kubeflow Pipelines endpoint; returns the run id."""
    params = coerce_params(name, params or {})  # before any connection: bad parameters submit nothing
    client = client or make_client(host, namespace)
    pkg = package_path(name, package_dir)
    try:
        res = client.create_run_from_pipeline_package(
            str(pkg), arguments=params, run_name=run_name or f"{name}-{time.strftime('%Y%m%d-%H%M%S')}",
            experiment_name=experiment)
    except Exception as exc:  # noqa: BLE001 - the endpoint refused or failed: named, not traced
        raise PipelineRunError(f"submitting {name} to {host} failed ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0][:300] if str(exc) else ''})") from exc
    run_id = getattr(res, "run_id", None)
    log.info("submitted %s to %s: run %s", name, host, run_id)
    return {"pipeline": name, "host": host, "run_id": run_id, "params": params}


def package_version(path: str | Path) -> str:
    """A content version for a package: galmorph version + hash of the normalised IR."""
    from importlib.metadata import version as dist_version

    from galmorph.ops.compile import normalised

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
    params = coerce_params(name, params or {})  # before any connection: bad parameters submit nothing
    client = client or make_client(host, namespace)
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
