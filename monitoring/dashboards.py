"""Evidently dashboard of the galmorph drift project, defined in code (never edited by hand).

:func:`build_panels` returns the panels for the group labels seen so far; :func:`apply_dashboard`
replaces the project's dashboard with them (one tab per area), so calling it again after every drift run is
idempotent (same labels -> same panels, same ids). The library calls it through
:func:`galmorph.drift.workspace.ensure_dashboard` (which finds this module through the ``galmorph.dashboards``
entry point) after adding the snapshots of a run.

Where the numbers come from (see :mod:`galmorph.drift.report`):

* drift share per redshift bin / per survey: the ``GroupByMetric`` (a labelled
  ``DriftedColumnsCount``) of each per-group snapshot, ``value_type = share``; one line per label,
  one point per release (snapshot time);
* overall drift share: the ``DriftedColumnsCount`` of the overall snapshots (tag ``scope:overall``);
* prediction distribution per release: ``UniqueValueCount(column=pred)`` shares, stacked bars;
* high-confidence fraction: ``InRangeValueCount(column=confidence, left=<threshold>, right=1)``.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

#: Titles of the panels (tests and the browser check look for these).
TITLE_OVERVIEW = "galmorph drift monitoring"
TITLE_LATEST_SHARE = "Latest overall drift share"
TITLE_OVERALL = "Overall drift share across releases"
TITLE_Z_BIN = "Drift share per redshift bin across releases"
TITLE_SURVEY = "Drift share per survey across releases"
TITLE_PRED = "Prediction distribution per release"
TITLE_HIGH_CONF = "High-confidence fraction per release"

TAB_DRIFT = "Drift"
TAB_PREDICTIONS = "Predictions"

_NS = uuid.UUID("6a0b7f4e-8f5a-4d47-9a57-3c1f2a9b0d11")


def _pid(title: str) -> uuid.UUID:
    """Stable panel id (same title -> same id), so re-applying the dashboard is idempotent."""
    return uuid.uuid5(_NS, title)


def build_panels(z_bins: Sequence[str] = (), surveys: Sequence[str] = (), classes: Sequence[str] = (),
                 high_confidence: float = 0.85) -> list[tuple[str, object]]:
    """``(tab, DashboardPanelPlot)`` pairs of the drift dashboard for the given group labels."""
    from evidently.sdk.models import PanelMetric
    from evidently.sdk.panels import bar_plot_panel, counter_panel, line_plot_panel, text_panel

    overall = ["scope:overall"]

    def group_series(by: str, labels: Sequence[str]) -> list:
        return [PanelMetric(legend=str(lab), metric="GroupByMetric", tags=["scope:group", f"group:{by}"],
                            metric_labels={"column_name": by, "label": str(lab), "value_type": "share"})
                for lab in labels]

    panels = [
        (TAB_DRIFT, text_panel(TITLE_OVERVIEW, description=(
            "Share of drifted feature columns (Evidently data-drift preset) of each scored release "
            "against the training reference, overall, per redshift bin and per survey. "
            "A point per `galmorph drift` run; snapshots are tagged release:<name>, model:<version>, "
            "z_bin:<bin>, survey:<name>."))),
        (TAB_DRIFT, counter_panel(TITLE_LATEST_SHARE, size="half", aggregation="last", values=[
            PanelMetric(legend="drift share", metric="DriftedColumnsCount", tags=overall,
                        metric_labels={"value_type": "share"})])),
        (TAB_DRIFT, line_plot_panel(TITLE_OVERALL, size="half", values=[
            PanelMetric(legend="overall", metric="DriftedColumnsCount", tags=overall,
                        metric_labels={"value_type": "share"})])),
        (TAB_DRIFT, line_plot_panel(TITLE_Z_BIN, size="half", values=group_series("z_bin", z_bins))),
        (TAB_DRIFT, line_plot_panel(TITLE_SURVEY, size="half", values=group_series("survey", surveys))),
        (TAB_PREDICTIONS, bar_plot_panel(TITLE_PRED, size="half", stacked=True, values=[
            PanelMetric(legend=str(c), metric="UniqueValueCount", tags=overall,
                        metric_labels={"column": "pred", "label": str(c), "value_type": "share"})
            for c in classes])),
        (TAB_PREDICTIONS, line_plot_panel(TITLE_HIGH_CONF, size="half", values=[
            PanelMetric(legend=f"confidence >= {high_confidence:g}", metric="InRangeValueCount", tags=overall,
                        metric_labels={"column": "confidence", "value_type": "share"})])),
    ]
    for _, p in panels:
        p.id = _pid(p.title)
    return panels


def dashboard_model(z_bins: Sequence[str] = (), surveys: Sequence[str] = (), classes: Sequence[str] = (),
                    high_confidence: float = 0.85):
    """The complete ``DashboardModel`` (tabs in order, stable tab and panel ids)."""
    from evidently.sdk.models import DashboardModel, DashboardTabModel

    panels = build_panels(z_bins, surveys, classes, high_confidence)
    tabs: dict[str, list] = {}
    for tab, p in panels:
        tabs.setdefault(tab, []).append(p.id)
    return DashboardModel(tabs=[DashboardTabModel(id=_pid("tab:" + t), title=t, panels=ids) for t, ids in tabs.items()],
                          panels=[p for _, p in panels])


def apply_dashboard(workspace, project, z_bins: Sequence[str] = (), surveys: Sequence[str] = (),
                    classes: Sequence[str] = (), high_confidence: float = 0.85) -> list[str]:
    """Replace ``project``'s dashboard in ``workspace`` by :func:`dashboard_model`; returns the panel
    titles. (The whole model is saved at once: Evidently 0.7's ``add_panel`` lists a panel twice
    when its tab already exists.)"""
    model = dashboard_model(z_bins, surveys, classes, high_confidence)
    workspace.save_dashboard(project.id, model)
    return [p.title for p in model.panels]
