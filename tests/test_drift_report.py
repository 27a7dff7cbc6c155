"""run_drift on simulated galaxies: a known injected survey change is flagged, an identical set is
not; per-group verdicts, outputs, thresholds, the CLI exit code, the Evidently workspace project
and dashboard, and drift metrics in a real MLflow run."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from galmorph.drift import (
    DRIFT,
    INSUFFICIENT,
    NO_DRIFT,
    DriftConfig,
    DriftInputError,
    compute_drift_features,
    run_drift,
)
from galmorph.drift.report import decide_verdict
from galmorph.imaging.io import load_image, save_raster


@pytest.fixture()
def tmp_path():
    """A private temporary folder (pytest's basetemp is pruned by concurrent pytest runs)."""
    with tempfile.TemporaryDirectory(prefix="galmorph-drift-") as d:
        yield Path(d)


REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sim_sets():
    """Reference: 60 simulated galaxies. Current: the same galaxies as seen by a 'noisier survey'
    (sky pedestal + extra noise, injected here, so the truth is known)."""
    from galmorph.simulate import simulate_dataset

    tmp = tempfile.TemporaryDirectory(prefix="galmorph-drift-sim-")
    root = Path(tmp.name)
    sim = simulate_dataset(root / "sim", 60, seed=3, task="chirality", size=64, progress=False)
    man = pd.read_parquet(sim["manifest"])
    rng = np.random.default_rng(0)
    noisy_dir = root / "noisy"
    rows = []
    for _, r in man.iterrows():
        img = load_image(r["image_uri"])
        img = np.clip(img + 0.15 + rng.normal(0, 0.05, img.shape), 0, 1)
        p = save_raster(img.astype(np.float32), noisy_dir / Path(r["image_uri"]).name)
        rows.append({**r.to_dict(), "image_uri": str(p), "survey": "noisy"})
    cur = pd.DataFrame(rows)
    ref_f = compute_drift_features(man, progress=False).features
    cur_f = compute_drift_features(cur, progress=False).features
    yield {"manifest": man, "noisy_manifest": cur, "ref": ref_f, "cur": cur_f, "root": root}
    tmp.cleanup()


def test_injected_survey_change_is_flagged(sim_sets, tmp_path):
    cfg = DriftConfig(min_group_size=20, max_drifted_columns=2)
    res = run_drift(sim_sets["ref"], sim_sets["cur"], by=["survey"], out_dir=tmp_path / "out", config=cfg)
    assert res.verdict == DRIFT and res.drift and res.exit_code == 3
    overall = res.per_group["overall"]
    assert overall.verdict == DRIFT
    assert {"sky_level", "sky_noise"} <= set(overall.drifted_columns)
    # same galaxies: their catalogue columns cannot drift
    assert not {"z", "mag_r", "cat_r90"} & set(overall.drifted_columns)
    assert overall.column_scores["z"]["value"] == pytest.approx(1.0)
    # only the image columns moved, so the default share rule (>= 50 % of columns) stays quiet
    assert overall.drift_share < 0.5
    assert decide_verdict(overall.drift_share, overall.n_drifted, None, DriftConfig()) == NO_DRIFT
    # the whole reference stands in for a survey the reference does not have
    noisy = res.per_group["survey=noisy"]
    assert noisy.reference_scope == "all" and noisy.verdict == DRIFT
    assert noisy.n_reference == len(sim_sets["ref"]) and noisy.n_current == len(sim_sets["cur"])
    # outputs: per-group HTML + JSON, summary, verdict file
    out = tmp_path / "out"
    assert (out / "verdict.txt").read_text().strip() == "drift"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["verdict"] == "drift"
    assert {g["key"] for g in summary["groups"]} == {"overall", "survey=noisy"}
    for g in res.per_group.values():
        assert Path(g.report_html).stat().st_size > 10_000
        rep = json.loads(Path(g.report_json).read_text())
        types = {m["config"]["type"].rsplit(":", 1)[-1] for m in rep["metrics"]}
        assert {"DriftedColumnsCount", "ValueDrift"} <= types
    assert "| overall | drift |" in (out / "summary.md").read_text()


def test_same_set_is_not_drift(sim_sets):
    res = run_drift(sim_sets["ref"], sim_sets["ref"].copy(), by=["z_bin"], config=DriftConfig(min_group_size=5))
    assert res.verdict == NO_DRIFT and res.exit_code == 0
    assert all(g.n_drifted == 0 for g in res.per_group.values() if g.verdict != INSUFFICIENT)
    # one verdict per redshift bin of the current set
    bins = set(sim_sets["ref"]["z_bin"].astype(str))
    assert {k for k in res.per_group if k.startswith("z_bin=")} == {f"z_bin={b}" for b in bins}


def test_verdict_thresholds():
    cfg = DriftConfig(drift_share=0.5)
    assert decide_verdict(0.5, 6, None, cfg) == DRIFT
    assert decide_verdict(0.49, 6, None, cfg) == NO_DRIFT
    assert decide_verdict(0.2, 3, None, DriftConfig(max_drifted_columns=3)) == DRIFT
    assert decide_verdict(0.2, 2, None, DriftConfig(max_drifted_columns=3)) == NO_DRIFT
    assert decide_verdict(0.0, 0, True, cfg) == NO_DRIFT
    assert decide_verdict(0.0, 0, True, DriftConfig(alert_on_prediction_drift=True)) == DRIFT


def test_small_groups_are_insufficient(sim_sets):
    tiny = run_drift(sim_sets["ref"], sim_sets["cur"].head(10), by=["survey"], config=DriftConfig(min_group_size=30))
    assert all(g.verdict == INSUFFICIENT for g in tiny.per_group.values())
    assert "min_group_size" in tiny.per_group["overall"].reason
    assert tiny.verdict == NO_DRIFT


def test_bad_inputs_name_the_problem(sim_sets, tmp_path):
    with pytest.raises(DriftInputError, match="group-by column 'nope'"):
        run_drift(sim_sets["ref"], sim_sets["cur"], by=["nope"])
    with pytest.raises(DriftInputError, match="current set .* does not exist"):
        run_drift(sim_sets["ref"], tmp_path / "absent.parquet")
    with pytest.raises(ValueError, match="drift_share"):
        DriftConfig(drift_share=0)
    with pytest.raises(ValueError, match="unknown drift option"):
        DriftConfig.from_dict({"drift_shares": 0.4})


def test_params_yaml_section(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("data:\n  source: sim\ndrift:\n  drift_share: 0.3\n  by: [survey]\n  min_group_size: 12\n")
    cfg = DriftConfig.from_params(p, min_group_size=None)
    assert cfg.drift_share == 0.3 and cfg.by == ("survey",) and cfg.min_group_size == 12
    assert DriftConfig.from_params(tmp_path / "none.yaml").drift_share == 0.5
    repo_cfg = DriftConfig.from_params(REPO / "params.yaml")
    assert 0 < repo_cfg.drift_share <= 1


def test_manifest_sets_and_workspace_dashboard(sim_sets, tmp_path):
    """Manifests in, features computed; snapshots tagged in the Evidently workspace; the dashboard
    re-created idempotently from monitoring/dashboards.py."""
    from galmorph.drift.workspace import ensure_dashboard, get_or_create_project, load_dashboards_module, open_workspace

    ref_path = tmp_path / "ref.parquet"
    cur_path = tmp_path / "cur.parquet"
    sim_sets["manifest"].to_parquet(ref_path)
    sim_sets["noisy_manifest"].to_parquet(cur_path)
    ws_dir = tmp_path / "ws"
    res = run_drift(ref_path, cur_path, by=["survey", "z_bin"], out_dir=tmp_path / "out", release="dr1",
                    model_version="7", workspace=ws_dir, project="test-drift", config=DriftConfig(min_group_size=5))
    assert res.project_id
    ws = open_workspace(ws_dir)
    proj = get_or_create_project(ws, "test-drift")
    assert str(proj.id) == res.project_id
    runs = ws.list_runs(proj.id)
    assert len(runs) == sum(g.snapshot_id is not None for g in res.per_group.values())
    snap = ws.get_run(proj.id, res.per_group["survey=noisy"].snapshot_id)
    assert {"release:dr1", "model:7", "group:survey", "survey:noisy", "scope:group"} <= set(snap.tags)
    assert snap.metadata["verdict"] == res.per_group["survey=noisy"].verdict
    mod = load_dashboards_module()
    model = proj.dashboard.model()
    titles = {p.title for p in model.panels}
    assert {mod.TITLE_Z_BIN, mod.TITLE_SURVEY, mod.TITLE_PRED, mod.TITLE_HIGH_CONF} <= titles
    zpanel = next(p for p in model.panels if p.title == mod.TITLE_Z_BIN)
    shown = {v.metric_labels["label"] for v in zpanel.values}
    assert shown == {g.group_value for g in res.per_group.values() if g.group_by == "z_bin" and g.snapshot_id}
    before = [(p.id, p.title, len(p.values)) for p in model.panels]
    ensure_dashboard(ws, proj)  # idempotent: labels kept, same ids
    after = [(p.id, p.title, len(p.values)) for p in proj.dashboard.model().panels]
    assert before == after
    assert sum(len(t.panels) for t in proj.dashboard.model().tabs) == len(after)


def test_cli_exit_code_and_summary(sim_sets, tmp_path, monkeypatch):
    from galmorph.cli import main
    from galmorph.settings import get_settings

    monkeypatch.setenv("GALMORPH_STATE_DIR", str(tmp_path / "state"))
    get_settings.cache_clear()
    ref, cur = tmp_path / "ref.parquet", tmp_path / "cur.parquet"
    sim_sets["ref"].to_parquet(ref)
    sim_sets["cur"].to_parquet(cur)
    runner = CliRunner()
    try:
        r = runner.invoke(main, ["drift", "--reference", str(ref), "--current", str(cur), "--by", "survey",
                                 "--out", str(tmp_path / "o1"), "--no-workspace", "--min-group-size", "20",
                                 "--max-drifted-columns", "2"])
        assert r.exit_code == 3, r.output
        assert "verdict: drift" in r.output
        r = runner.invoke(main, ["drift", "--reference", str(ref), "--current", str(ref), "--by", "survey",
                                 "--out", str(tmp_path / "o2"), "--no-workspace", "--json"])
        assert r.exit_code == 0, r.output
        assert json.loads(r.output[r.output.index("{"):])["verdict"] == "no_drift"
        r = runner.invoke(main, ["drift", "--reference", str(ref), "--current", str(cur), "--no-fail",
                                 "--by", "survey", "--out", str(tmp_path / "o3"), "--min-group-size", "20",
                                 "--max-drifted-columns", "2"])
        assert r.exit_code == 0, r.output
        assert (tmp_path / "state" / "evidently").is_dir()  # default workspace under the state folder
        r = runner.invoke(main, ["drift", "--reference", str(tmp_path / "nope.parquet"), "--current", str(cur)])
        assert r.exit_code != 0
    finally:
        get_settings.cache_clear()


def test_drift_metrics_logged_to_mlflow_run(sim_sets, mlflow_server):
    import mlflow

    mlflow.set_experiment("drift-test")
    with mlflow.start_run() as run:
        run_id = run.info.run_id
    res = run_drift(sim_sets["ref"], sim_sets["cur"], by=["survey"], mlflow_run_id=run_id,
                    config=DriftConfig(min_group_size=20, max_drifted_columns=2))
    data = mlflow.MlflowClient().get_run(run_id).data
    assert data.metrics["drift.verdict"] == 1.0
    assert data.metrics["drift.overall.share"] == pytest.approx(res.per_group["overall"].drift_share)
    assert data.metrics["drift.survey.noisy.flag"] == 1.0
    assert data.tags["drift.verdict"] == "drift"
    arts = [a.path for a in mlflow.MlflowClient().list_artifacts(run_id, "drift")]
    assert "drift/drift_summary.json" in arts


def test_prediction_summary_of_current_set_without_reference_predictions(sim_sets):
    """A training reference has no predictions; the current release's class distribution and
    high-confidence fraction are still reported (prediction drift needs both sides)."""
    rng = np.random.default_rng(4)
    cur = sim_sets["cur"].copy()
    p = rng.dirichlet([1.0, 1.0, 1.0], len(cur))
    classes = np.array(["CW", "ACW", "other"])
    cur = cur.assign(p_CW=p[:, 0], p_ACW=p[:, 1], p_other=p[:, 2], pred=classes[p.argmax(1)], confidence=p.max(1))
    res = run_drift(sim_sets["ref"], cur, by=[], config=DriftConfig(min_group_size=20, high_confidence=0.7))
    overall = res.per_group["overall"]
    assert res.prediction_columns == []  # nothing to compare against
    assert overall.prediction_drift is None
    assert overall.high_confidence_fraction == pytest.approx(float((cur["confidence"] >= 0.7).mean()))
