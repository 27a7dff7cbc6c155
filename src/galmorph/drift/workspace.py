"""The Evidently workspace side of drift monitoring: project, snapshots, dashboard.

The dashboard panels are defined in code in the top-level ``monitoring/dashboards.py``, installed with
galmorph and registered under the entry point group ``galmorph.dashboards`` (``pyproject.toml``): the drift
layer loads whatever module is registered there and never imports the monitoring package by name (it sits
above the library). :func:`ensure_dashboard` re-applies the panels after every run with the union of the
group labels already on the dashboard and those of the new run.
"""

from __future__ import annotations

import logging
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

log = logging.getLogger(__name__)

#: The Evidently workspace volume shared by the drift step's pod and the Evidently UI: the PVC name and the
#: mount path (the chart's ``evidently.workspace.claimName`` / ``mountPath`` defaults; checked by a test).
WORKSPACE_PVC = "galmorph-evidently-workspace"
WORKSPACE_MOUNT = "/evidently"


def step_workspace(workspace: str | Path | None, default: str | Path) -> Path:
    """The workspace a drift step writes: ``workspace`` when given, ``default`` (the platform state
    folder's) when not. ``workspace`` = :data:`WORKSPACE_MOUNT` with nothing there is a run of the
    Kubernetes package outside Kubernetes (kfp's local runners do not mount volumes): ``default``, with a
    warning."""
    if not workspace:
        return Path(default)
    if str(workspace) == WORKSPACE_MOUNT and not Path(workspace).is_dir():
        log.warning("the Evidently workspace volume is not mounted at %s (a local run?): writing to %s instead",
                    WORKSPACE_MOUNT, default)
        return Path(default)
    return Path(workspace)


#: The entry point (group, name) of the dashboard panel definitions.
DASHBOARDS_ENTRY_POINT = ("galmorph.dashboards", "panels")


def load_dashboards_module() -> ModuleType:
    """The panel definitions: the module registered as the ``panels`` entry point of the group
    ``galmorph.dashboards`` (the project registers ``monitoring/dashboards.py``; a deployment can register
    its own). A module with ``apply_dashboard(workspace, project, z_bins, surveys, classes,
    high_confidence)``."""
    from importlib.metadata import entry_points

    group, name = DASHBOARDS_ENTRY_POINT
    found = entry_points(group=group, name=name)
    if not found:
        raise RuntimeError(f"no dashboard panels registered: the entry point {group}:{name} is missing "
                           "(reinstall galmorph: `uv sync`)")
    return next(iter(found)).load()


def open_workspace(path: str | Path):
    from evidently.ui.workspace import Workspace

    Path(path).mkdir(parents=True, exist_ok=True)
    return Workspace(str(Path(path).resolve()))


def get_or_create_project(ws, name: str, description: str | None = None):
    """The workspace project called ``name`` (created when missing; the oldest when several)."""
    found = list(ws.search_project(name))
    if found:
        return found[0]
    proj = ws.create_project(name, description=description or
                             "galmorph drift monitoring: scored releases vs the training reference")
    log.info("created Evidently project %r (%s)", name, proj.id)
    return proj


def _labels_on_dashboard(project) -> dict[str, set[str]]:
    seen: dict[str, set[str]] = {"z_bin": set(), "survey": set(), "pred": set()}
    try:
        model = project.dashboard.model()
    except Exception:  # noqa: BLE001 - no dashboard yet
        return seen
    for panel in model.panels:
        for v in panel.values:
            ml = v.metric_labels
            if v.metric.endswith("GroupByMetric") and ml.get("column_name") in seen and "label" in ml:
                seen[ml["column_name"]].add(ml["label"])
            elif v.metric.endswith("UniqueValueCount") and ml.get("column") == "pred" and "label" in ml:
                seen["pred"].add(ml["label"])
    return seen


def ensure_dashboard(workspace, project, z_bins: Sequence[str] = (), surveys: Sequence[str] = (),
                     classes: Sequence[str] = (), high_confidence: float = 0.85) -> list[str]:
    """(Re)create the project's dashboard from ``galmorph_monitoring.dashboards``, keeping the labels
    already shown and adding new ones. Idempotent. Returns the panel titles."""
    seen = _labels_on_dashboard(project)
    mod = load_dashboards_module()
    return mod.apply_dashboard(workspace, project, z_bins=sorted(seen["z_bin"] | set(z_bins)),
                               surveys=sorted(seen["survey"] | set(surveys)),
                               classes=sorted(seen["pred"] | set(classes)), high_confidence=high_confidence)


def reload_ui(ui_url: str, project_id: Any, timeout: float = 10.0) -> bool:
    """Ask a running Evidently UI to re-read the project's snapshots (it caches them)."""
    url = f"{ui_url.rstrip('/')}/api/projects/{project_id}/reload"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - local URL
            return 200 <= r.status < 300
    except OSError as exc:
        log.info("Evidently UI at %s not reloaded (%s)", ui_url, exc)
        return False


def add_drift_snapshots(workspace: str | Path, project_name: str, snapshots: Sequence[tuple[Any, Any]],
                        by: Sequence[str] = ("z_bin", "survey"), classes: Sequence[str] = (),
                        high_confidence: float = 0.85, ui_url: str | None = None):
    """Add the snapshots of one drift run (``(GroupVerdict, Snapshot)`` pairs) to the project and
    refresh its dashboard. Sets each verdict's ``snapshot_id``; returns the project id."""
    ws = open_workspace(workspace)
    project = get_or_create_project(ws, project_name)
    z_bins, surveys = set(), set()
    for gv, snap in snapshots:
        ref = ws.add_run(project.id, snap, include_data=False)
        gv.snapshot_id = str(ref.id)
        if gv.group_by == "z_bin":
            z_bins.add(gv.group_value)
        elif gv.group_by == "survey":
            surveys.add(gv.group_value)
    ensure_dashboard(ws, project, z_bins=sorted(z_bins), surveys=sorted(surveys), classes=classes,
                     high_confidence=high_confidence)
    log.info("added %d drift snapshot(s) to Evidently project %r in %s", len(snapshots), project_name, workspace)
    if ui_url:
        reload_ui(ui_url, project.id)
    return project.id
